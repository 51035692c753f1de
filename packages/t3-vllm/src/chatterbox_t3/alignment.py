"""The multilingual model's alignment-guided stop, inside vLLM's model step.

Chatterbox Multilingual's reference (chatterbox-tts 0.1.7, ``AlignmentStreamAnalyzer``) watches three
attention heads of the conditional CFG branch, ``(layer, head)`` = (12, 15), (13, 11), (9, 2): their
mean attention of the newest speech token over the text tokens tracks which text token is being
spoken. From that it suppresses the stop token until the end of the text is reached and forces it
on a long tail (the last text tokens held for 5+ frames of attention after completion), an
alignment repetition (attention back on earlier text after completion) or a token repetition (the
two previous speech tokens equal). The English model has no analyzer.

vLLM gives no attention maps, so the probabilities are recomputed here, per step, for the rows vLLM
samples:

* :class:`AlignmentRecorder` (inside the compiled forward, so also inside CUDA graphs) copies the
  rotated query and key rows of the three heads, conditional branch only, of every token of the
  step into fixed buffers: 2 x 3 x 64 values per token.
* :class:`AlignmentGuard` (in ``compute_logits``, eager, between the forward and vLLM's sampler)
  files each token's keys under its KV-cache slot (a 3-head side cache paged exactly like vLLM's KV
  cache, so prefix-cache hits and recomputation after preemption find them), recomputes the
  softmax of each sampled row's three queries over all keys of its sequence, and runs the
  reference's rules on per-request state held in device tensors. Everything is batched tensor
  work: no per-request Python, no host synchronisation.

The per-step facts (which rows sample, their frame, text length, state slot, block table) come
from the model-runner extension (:mod:`chatterbox_t3.worker`) as an :class:`AlignmentStep`.

Two of the reference's quantities never change its output and are not computed: ``false_start``
(tracked, never acted on) and ``discontinuity`` beyond its use in the position update. One edge
differs on purpose: for a text of at most 5 tokens (start, language, one character, stop) the
reference's repetition check takes the maximum of an empty slice and raises once the text is
complete; here such a row simply has no earlier text to repeat.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from chatterbox_t3.config import T3Config
from chatterbox_t3.errors import ConfigurationError

logger = logging.getLogger(__name__)

ALIGNMENT_HEADS: tuple[tuple[int, int], ...] = ((12, 15), (13, 11), (9, 2))
"""``(layer, head)`` of the reference's ``LLAMA_ALIGNED_HEADS``, in its order."""

NUM_PROMPT_BOS = 2
"""The multilingual reference always runs two rows and two start-of-speech positions."""

# The reference's thresholds (alignment_stream_analyzer.py), in frames of attention mass.
POSITION_STEP_MIN = -4
POSITION_STEP_MAX = 7
"""A new aligned position is accepted only within (-4, 7) text tokens of the previous one."""
END_MARGIN = 3
"""Text is complete when the aligned position reaches the last 3 tokens (stop, punctuation)."""
MIN_TEXT_FOR_EOS_SUPPRESSION = 5
"""The stop token is suppressed before the end only for texts longer than 5 tokens."""
LONG_TAIL_MASS = 5.0
"""Attention on the last 3 text tokens summed after completion (~200 ms) that means a long tail."""
REPETITION_MASS = 5.0
"""Summed per-frame maxima on earlier text (all but the last 5 tokens) after completion."""
REPETITION_TAIL = 5
FORCED_LOGIT = float(2**15)
"""The reference's +-2**15 (safe in every 16-bit float type)."""

DRY_RUN_ENV = "CHATTERBOX_T3_ALIGNMENT_DRY_RUN"
"""Benchmarks only: ``1`` runs the whole analysis but leaves the logits alone, so a multilingual
run generates as many tokens as an English one and the two speeds compare like for like."""


def alignment_layers(config: T3Config) -> dict[int, list[tuple[int, int]]]:
    """``layer -> [(buffer slot, head)]`` for :data:`ALIGNMENT_HEADS` (multilingual only)."""
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for slot, (layer, head) in enumerate(ALIGNMENT_HEADS):
        if layer >= config.num_hidden_layers or head >= config.num_attention_heads:
            raise ConfigurationError(
                f"the multilingual stop rule reads attention head {head} of layer {layer}, but "
                f"this T3 has {config.num_hidden_layers} layers of {config.num_attention_heads} "
                "heads"
            )
        by_layer.setdefault(layer, []).append((slot, head))
    return by_layer


class AlignmentRecorder(nn.Module):
    """Fixed buffers the alignment heads' query/key rows are copied into during the forward.

    Buffers (not inputs) so the copies are part of the captured CUDA graphs: every replay writes
    the same addresses, which :class:`AlignmentGuard` reads after the forward.
    """

    def __init__(self, config: T3Config, max_num_tokens: int) -> None:
        super().__init__()
        self.layers = alignment_layers(config)
        self.head_dim = config.head_dim
        self.kv_group = config.num_attention_heads // config.num_key_value_heads
        shape = (max_num_tokens, len(ALIGNMENT_HEADS), config.head_dim)
        self.register_buffer("queries", torch.zeros(shape), persistent=False)
        self.register_buffer("keys", torch.zeros(shape), persistent=False)

    def record(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        """``q`` ``[n, 2 * heads * d]`` / ``k`` ``[n, 2 * kv_heads * d]`` after RoPE; the
        conditional branch's heads come first (see :mod:`chatterbox_t3.cfg`)."""
        n = q.shape[0]
        q_heads = q.view(n, -1, self.head_dim)
        k_heads = k.view(n, -1, self.head_dim)
        for slot, head in self.layers[layer]:
            self.queries[:n, slot].copy_(q_heads[:, head])
            self.keys[:n, slot].copy_(k_heads[:, head // self.kv_group])


@dataclass
class AlignmentStep:
    """What the runner publishes before a forward (device tensors unless said otherwise)."""

    num_tokens: int
    """Real (unpadded) tokens of the step."""
    kv_slots: torch.Tensor
    """``[num_tokens]`` KV-cache slot of each token."""
    rows: torch.Tensor
    """``[R]`` logits rows (one per request, in batch order) that sample with the analyzer on."""
    token_index: torch.Tensor
    """``[R]`` index of each row's newest token in the step."""
    batch_row: torch.Tensor
    """``[R]`` the request's row of the block table."""
    seq_len: torch.Tensor
    """``[R]`` tokens of the sequence including the newest (its position + 1)."""
    prompt_len: torch.Tensor
    """``[R]`` prompt tokens (conditioning, text, two BOS)."""
    state_slot: torch.Tensor
    """``[R]`` the request's row of :class:`AlignmentGuard`'s state."""
    num_state_slots: int
    """Host: one more than the largest state slot in use (the state grows to hold it)."""
    input_token: torch.Tensor
    """``[R]`` the newest token (BOS, then the previous sampled speech token)."""
    max_seq_len: int
    """Host copy of ``seq_len.max()``."""
    max_text_len: int
    """Host copy of the longest text (start and stop included) among the rows."""
    block_table: torch.Tensor
    """``[max_reqs, max_blocks]`` vLLM's block table (rows = ``batch_row``)."""
    block_size: int


class AlignmentGuard:
    """The reference's analyzer rules, batched over the sampled rows of a step."""

    def __init__(self, config: T3Config, recorder: AlignmentRecorder) -> None:
        self.config = config
        self.recorder = recorder
        self.scale = config.head_dim**-0.5
        self.stop_token = config.stop_speech_token
        self.text_start = config.conditioning_len
        self._key_cache: torch.Tensor | None = None
        self._capacity = 0
        self._state: dict[str, torch.Tensor] = {}
        self.dry_run = os.environ.get(DRY_RUN_ENV) == "1"
        if self.dry_run:
            logger.warning(
                "%s=1: the alignment stop rules are computed but not applied", DRY_RUN_ENV
            )

    # --------------------------------------------------------------------------------- storage
    def _key_cache_for(self, num_kv_slots: int) -> torch.Tensor:
        keys = self.recorder.keys
        if self._key_cache is None or self._key_cache.shape[0] < num_kv_slots:
            self._key_cache = keys.new_zeros((num_kv_slots, *keys.shape[1:]))
        return self._key_cache

    def _ensure_state(self, slots: int, device: torch.device) -> None:
        if slots <= self._capacity:
            return
        capacity = max(slots, 2 * self._capacity, 64)
        fresh = {
            "text_position": torch.zeros(capacity, dtype=torch.long, device=device),
            "complete": torch.zeros(capacity, dtype=torch.bool, device=device),
            "tail_mass": torch.zeros(capacity, END_MARGIN, dtype=torch.float32, device=device),
            "repetition_mass": torch.zeros(capacity, dtype=torch.float32, device=device),
            "previous_token": torch.full((capacity,), -1, dtype=torch.long, device=device),
        }
        for name, old in self._state.items():
            fresh[name][: old.shape[0]] = old
        self._state, self._capacity = fresh, capacity

    # ------------------------------------------------------------------------------- the step
    def store_keys(self, step: AlignmentStep, num_kv_slots: int) -> None:
        """File this step's alignment keys under their KV-cache slots."""
        cache = self._key_cache_for(num_kv_slots)
        n = step.num_tokens
        cache[step.kv_slots[:n]] = self.recorder.keys[:n]

    def text_attention(self, step: AlignmentStep) -> tuple[torch.Tensor, torch.Tensor]:
        """``([R, S_max] mean attention over the text tokens, [R] text lengths)``."""
        assert self._key_cache is not None
        device = step.rows.device
        positions = torch.arange(step.max_seq_len, device=device)
        blocks = step.block_table[step.batch_row][:, positions // step.block_size]
        kv_slots = blocks * step.block_size + positions % step.block_size
        keys = self._key_cache[kv_slots].float()  # [R, P, H, d]
        queries = self.recorder.queries[step.token_index].float()  # [R, H, d]
        scores = torch.einsum("rphd,rhd->rhp", keys, queries) * self.scale
        valid = positions[None, :] < step.seq_len[:, None]
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        attention = torch.softmax(scores, dim=-1).mean(dim=1)  # [R, P]

        text_len = step.prompt_len - self.text_start - NUM_PROMPT_BOS
        columns = torch.arange(step.max_text_len, device=device)
        text = attention[:, self.text_start + columns]
        frame = step.seq_len - step.prompt_len
        # The reference zeroes the columns beyond the frame index (alignment can advance at most
        # one text token per frame) and has no columns beyond the text.
        keep = (columns[None, :] < text_len[:, None]) & (columns[None, :] <= frame[:, None])
        return torch.where(keep, text, torch.zeros_like(text)), text_len

    def apply(self, logits: torch.Tensor, step: AlignmentStep, num_kv_slots: int) -> torch.Tensor:
        """Store the step's keys, then apply the stop rules to ``logits`` ``[rows, vocab]``."""
        self.store_keys(step, num_kv_slots)
        if step.rows.numel() == 0:
            return logits
        device = logits.device
        self._ensure_state(step.num_state_slots, device)
        attention, text_len = self.text_attention(step)
        frame = step.seq_len - step.prompt_len
        slot = step.state_slot
        first = frame == 0
        state = {
            name: torch.where(
                first.view(-1, *([1] * (value.dim() - 1))),
                torch.full_like(value[slot], -1 if name == "previous_token" else 0),
                value[slot],
            )
            for name, value in self._state.items()
        }

        current = attention.argmax(dim=-1)
        step_size = current - state["text_position"]
        accepted = (step_size > POSITION_STEP_MIN) & (step_size < POSITION_STEP_MAX)
        position = torch.where(accepted, current, state["text_position"])

        # Rows after the frame that completed the text count towards tail and repetition.
        was_complete = state["complete"]
        tail_columns = text_len[:, None] - END_MARGIN + torch.arange(END_MARGIN, device=device)
        tail = attention.gather(1, tail_columns.clamp(min=0))
        tail_mass = state["tail_mass"] + torch.where(was_complete[:, None], tail, 0.0)
        columns = torch.arange(attention.shape[1], device=device)
        earlier = columns[None, :] < (text_len - REPETITION_TAIL)[:, None]
        earlier_max = torch.where(earlier, attention, 0.0).amax(dim=1)
        repetition_mass = state["repetition_mass"] + torch.where(was_complete, earlier_max, 0.0)
        complete = was_complete | (position >= text_len - END_MARGIN)

        long_tail = complete & (tail_mass.amax(dim=1) >= LONG_TAIL_MASS)
        alignment_repetition = complete & (repetition_mass > REPETITION_MASS)
        token_repetition = (frame >= 2) & (step.input_token == state["previous_token"])
        suppress_stop = (current < text_len - END_MARGIN) & (
            text_len > MIN_TEXT_FOR_EOS_SUPPRESSION
        )
        force_stop = long_tail | alignment_repetition | token_repetition

        updated = {
            "text_position": position,
            "complete": complete,
            "tail_mass": tail_mass,
            "repetition_mass": repetition_mass,
            "previous_token": step.input_token,
        }
        for name, value in updated.items():
            self._state[name][slot] = value

        if self.dry_run:
            return logits
        rows = logits[step.rows]
        speech = self.config.speech_tokens_dict_size
        stop = self.stop_token
        rows[:, stop] = torch.where(suppress_stop, -FORCED_LOGIT, rows[:, stop])
        forced = torch.full_like(rows[:, :speech], -FORCED_LOGIT)
        forced[:, stop] = FORCED_LOGIT
        rows[:, :speech] = torch.where(force_stop[:, None], forced, rows[:, :speech])
        logits[step.rows] = rows
        return logits
