"""T3's learned position embeddings inside vLLM, and the per-step context that makes them possible.

T3 adds learned absolute positions to its inputs on top of the backbone's RoPE. vLLM only gives a
model the absolute sequence position ``p`` of each token, so the rules are written in terms of
``p``, the token id and the request's prompt length (reference ``t3.py``, facts §7.5-7.10):

===========================  ================================================================
token at absolute ``p``      learned position row added
===========================  ================================================================
conditioning placeholder     none (the 34 conditioning rows enter as they are)
text token                   ``text_pos_emb[p - conditioning_len]`` (SOT is row 0)
speech token, ``p`` < L      ``speech_pos_emb[0]``: the one or two start-of-speech tokens
speech token, ``p`` >= L     ``speech_pos_emb[p - L + 1]``: the i-th generated token gets ``i``
===========================  ================================================================

``L`` is the prompt length (conditioning + text + start-of-speech tokens). The generated rule
reproduces the reference, whose speech positions advance from 1 even though two BOS tokens (with
CFG) share position 0. The rules depend only on ``p``, ``L`` and the id, so they hold for chunked
prefill, prefix-cache hits and for requests recomputed after preemption (their earlier output
tokens sit at ``p >= L``).

The prompt length and the step's token ids are not part of vLLM's model interface (a multimodal
model receives ``input_ids=None``); :class:`T3StepContext` holds them in persistent buffers that the
model runner extension (:mod:`chatterbox_t3.worker`) fills after ``_prepare_inputs`` each step.
Fixed addresses keep the buffers usable under CUDA graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from chatterbox_t3.config import T3Config


class T3StepContext(nn.Module):
    """Per-step inputs the runner writes before each forward (non-persistent buffers).

    ``token_ids[:n]`` / ``prompt_lens[:n]``: per scheduled token; ``cfg_weights[:r]``: per request
    row, in the order of the rows ``compute_logits`` receives.
    """

    def __init__(self, max_num_tokens: int, max_num_rows: int) -> None:
        super().__init__()
        self.register_buffer(
            "token_ids", torch.zeros(max_num_tokens, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "prompt_lens", torch.zeros(max_num_tokens, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "cfg_weights", torch.zeros(max_num_rows, dtype=torch.float32), persistent=False
        )

    token_ids: torch.Tensor
    prompt_lens: torch.Tensor
    cfg_weights: torch.Tensor


class LearnedPositions(nn.Module):
    """``text_pos_emb`` and ``speech_pos_emb`` of the checkpoint, applied by the rules above."""

    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.conditioning_len = config.conditioning_len
        self.text_id_offset = config.text_id_offset
        self.placeholder_id = config.conditioning_placeholder_id
        self.text_pos_emb = nn.Embedding(config.text_position_rows, config.hidden_size)
        self.speech_pos_emb = nn.Embedding(config.speech_position_rows, config.hidden_size)

    def forward(
        self, positions: torch.Tensor, token_ids: torch.Tensor, prompt_lens: torch.Tensor
    ) -> torch.Tensor:
        """Position rows ``[n, hidden]`` for tokens at ``positions`` (zeros for conditioning)."""
        is_speech = token_ids < self.text_id_offset
        is_text = (token_ids >= self.text_id_offset) & (token_ids < self.placeholder_id)
        text_index = (positions - self.conditioning_len).clamp(
            0, self.text_pos_emb.num_embeddings - 1
        )
        # max(p - L + 1, 0): 0 for the start-of-speech token(s) in the prompt, i for generated i.
        speech_index = (positions - prompt_lens + 1).clamp(
            0, self.speech_pos_emb.num_embeddings - 1
        )
        text_rows = self.text_pos_emb(text_index)
        speech_rows = self.speech_pos_emb(speech_index)
        zeros = torch.zeros_like(text_rows)
        return torch.where(
            is_text[:, None], text_rows, torch.where(is_speech[:, None], speech_rows, zeros)
        )


def speech_position_index(position: int, prompt_len: int) -> int:
    """Row of ``speech_pos_emb`` for a speech token at absolute ``position`` (pure-Python rule)."""
    return max(position - prompt_len + 1, 0)
