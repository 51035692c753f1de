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
from typing import TypeVar

import torch
from torch import nn

from chatterbox_t3.config import PROMPT_BOS_POSITIONS, T3Config
from chatterbox_t3.errors import ConfigurationError

logger = logging.getLogger(__name__)

_Length = TypeVar("_Length", int, torch.Tensor)

ALIGNMENT_HEADS: tuple[tuple[int, int], ...] = ((12, 15), (13, 11), (9, 2))
"""``(layer, head)`` of the reference's ``LLAMA_ALIGNED_HEADS``, in its order."""

NUM_PROMPT_BOS = PROMPT_BOS_POSITIONS
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


def text_length(prompt_len: _Length, config: T3Config) -> _Length:
    """Text tokens (start and stop included) of a multilingual prompt of ``prompt_len`` tokens:
    the conditioning rows come before them, the two BOS after."""
    return prompt_len - (config.conditioning_len + NUM_PROMPT_BOS)


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

    queries: torch.Tensor
    keys: torch.Tensor

    def record(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        """``q`` ``[n, 2 * heads * d]`` / ``k`` ``[n, 2 * kv_heads * d]`` after RoPE; the
        conditional branch's heads come first (see :mod:`chatterbox_t3.cfg`)."""
        n = q.shape[0]
        q_heads = q.view(n, -1, self.head_dim)
        k_heads = k.view(n, -1, self.head_dim)
        for slot, head in self.layers[layer]:
            self.queries[:n, slot].copy_(q_heads[:, head])
            self.keys[:n, slot].copy_(k_heads[:, head // self.kv_group])


class StepFacts:
    """Columns of :attr:`AlignmentStep.facts` (one row per sampling request)."""

    ROW = 0
    """The request's logits row (requests in batch order) and block-table row."""
    TOKEN_INDEX = 1
    """Index of its newest token in the step."""
    SEQ_LEN = 2
    """Tokens of the sequence including the newest (its position + 1)."""
    PROMPT_LEN = 3
    """Prompt tokens (conditioning, text, two BOS)."""
    STATE_SLOT = 4
    """Its row of :class:`AlignmentGuard`'s state."""
    INPUT_TOKEN = 5
    """The newest token (BOS, then the previous sampled speech token)."""
    COUNT = 6


@dataclass
class AlignmentStep:
    """What the runner publishes before a forward: two device tensors (one upload each) and the
    host-side sizes the batched computation needs."""

    num_tokens: int
    """Real (unpadded) tokens of the step."""
    kv_slots: torch.Tensor
    """``[num_tokens]`` KV-cache slot of each token."""
    facts: torch.Tensor
    """``[R, StepFacts.COUNT]`` int64, one row per request that samples this step."""
    num_rows: int
    """``R`` (0: no request samples; the keys are still filed)."""
    num_state_slots: int
    """One more than the largest state slot in use (the state grows to hold it)."""
    max_seq_len: int
    """The longest sequence among the rows."""
    max_text_len: int
    """The longest text (start and stop included) among the rows."""
    block_table: torch.Tensor
    """``[max_reqs, max_blocks]`` vLLM's block table (rows = ``StepFacts.ROW``)."""
    block_size: int


# Columns of the per-request state (float32: positions and token ids are exact below 2**24).
_POSITION, _COMPLETE, _MASS, _PREVIOUS = 0, 1, slice(2, 6), 6
"""Aligned text position, completion flag, mass (tail on the last 3 text tokens, then
repetition on earlier text) summed since completion, previous input token."""
_STATE_WIDTH = 7
_INITIAL_STATE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)


class AlignmentGuard:
    """The reference's analyzer rules, batched over the sampled rows of a step."""

    def __init__(self, config: T3Config, recorder: AlignmentRecorder) -> None:
        self.config = config
        self.recorder = recorder
        self.scale = config.head_dim**-0.5
        self.stop_token = config.stop_speech_token
        self.text_start = config.conditioning_len
        self._key_cache: torch.Tensor | None = None
        self._state: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._initial: torch.Tensor | None = None
        self._sampled_positions: torch.Tensor | None = None
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

    def _state_for(self, slots: int, device: torch.device) -> torch.Tensor:
        state = self._state
        if state is None or state.shape[0] < slots:
            capacity = max(slots, 64 if state is None else 2 * state.shape[0])
            self._initial = torch.tensor(_INITIAL_STATE, device=device)
            grown = self._initial.repeat(capacity, 1)
            if state is not None:
                grown[: state.shape[0]] = state
            self._state = state = grown
        return state

    def _arange(self, length: int, device: torch.device) -> torch.Tensor:
        if self._positions is None or self._positions.shape[0] < length:
            self._positions = torch.arange(max(length, 4096), device=device)
        return self._positions[:length]

    def sampled_positions(self, num_rows: int) -> torch.Tensor:
        """``[num_rows]`` int64: the aligned text position (index into ``[start, text..., stop]``)
        each logits row of the last :meth:`apply` was sampled at, -1 for rows that took no
        analyzer step. What word timings are built from (:mod:`chatterbox_t3.word_alignment`)."""
        positions = self._sampled_positions
        if positions is None or positions.shape[0] < num_rows:
            return torch.full((num_rows,), -1, dtype=torch.long)
        return positions[:num_rows]

    def _record_positions(self, rows: torch.Tensor, position: torch.Tensor, num_rows: int) -> None:
        positions = self._sampled_positions
        if positions is None or positions.shape[0] < num_rows:
            positions = torch.full(
                (max(num_rows, 64),), -1, dtype=torch.long, device=position.device
            )
            self._sampled_positions = positions
        positions.fill_(-1)
        positions[rows] = position.long()

    # ------------------------------------------------------------------------------- the step
    def store_keys(self, step: AlignmentStep, num_kv_slots: int) -> None:
        """File this step's alignment keys under their KV-cache slots."""
        cache = self._key_cache_for(num_kv_slots)
        n = step.num_tokens
        cache.index_copy_(0, step.kv_slots[:n], self.recorder.keys[:n])

    def text_attention(
        self, step: AlignmentStep
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``([R, S_max] masked mean attention over the text tokens, [R] text lengths, [R] frame
        index (speech tokens generated so far))``."""
        assert self._key_cache is not None
        facts = step.facts
        positions = self._arange(step.max_seq_len, facts.device)
        blocks = step.block_table[facts[:, StepFacts.ROW]][:, positions // step.block_size]
        kv_slots = blocks * step.block_size + positions % step.block_size
        keys = self._key_cache[kv_slots].float()  # [R, P, H, d]
        queries = self.recorder.queries[facts[:, StepFacts.TOKEN_INDEX]].float() * self.scale
        scores = torch.einsum("rphd,rhd->rhp", keys, queries)
        seq_len, prompt_len = facts[:, StepFacts.SEQ_LEN], facts[:, StepFacts.PROMPT_LEN]
        scores.masked_fill_((positions[None, :] >= seq_len[:, None])[:, None, :], float("-inf"))
        attention = torch.softmax(scores, dim=-1).mean(dim=1)  # [R, P]
        # The text is contiguous: positions [text_start, text_start + S) of every row.
        text = attention[:, self.text_start : self.text_start + step.max_text_len]
        text_len = text_length(prompt_len, self.config)
        frame = seq_len - prompt_len
        # The reference zeroes the columns beyond the frame index (alignment can advance at most
        # one text token per frame) and has no columns beyond the text.
        columns = positions[: step.max_text_len]
        limit = torch.minimum(text_len - 1, frame)
        return text.masked_fill(columns[None, :] > limit[:, None], 0.0), text_len, frame

    def apply(self, logits: torch.Tensor, step: AlignmentStep, num_kv_slots: int) -> torch.Tensor:
        """Store the step's keys, then apply the stop rules to ``logits`` ``[rows, vocab]``."""
        self.store_keys(step, num_kv_slots)
        if step.num_rows == 0:
            self._record_positions(step.facts[:, StepFacts.ROW], logits.new_zeros(0), 0)
            return logits
        facts = step.facts
        state_table = self._state_for(step.num_state_slots, logits.device)
        attention, text_len, frame = self.text_attention(step)
        slot = facts[:, StepFacts.STATE_SLOT]
        assert self._initial is not None
        state = torch.where((frame == 0)[:, None], self._initial, state_table[slot])

        current = attention.argmax(dim=-1)
        step_size = current - state[:, _POSITION]
        accepted = (step_size > POSITION_STEP_MIN) & (step_size < POSITION_STEP_MAX)
        position = torch.where(accepted, current.float(), state[:, _POSITION])

        # Rows after the frame that completed the text count towards tail and repetition.
        was_complete = state[:, _COMPLETE, None] > 0
        tail_columns = text_len[:, None] - END_MARGIN + self._arange(END_MARGIN, logits.device)
        tail = attention.gather(1, tail_columns.clamp(min=0))
        columns = self._arange(attention.shape[1], logits.device)
        earlier = columns[None, :] < (text_len - REPETITION_TAIL)[:, None]
        earlier_max = attention.masked_fill(~earlier, 0.0).amax(dim=1, keepdim=True)
        mass = torch.where(was_complete, torch.cat([tail, earlier_max], dim=1), 0.0)
        mass = state[:, _MASS] + mass
        complete = was_complete[:, 0] | (position >= text_len - END_MARGIN)

        long_tail = mass[:, :3].amax(dim=1) >= LONG_TAIL_MASS
        alignment_repetition = mass[:, 3] > REPETITION_MASS
        input_token = facts[:, StepFacts.INPUT_TOKEN]
        token_repetition = (frame >= 2) & (input_token == state[:, _PREVIOUS])
        force_stop = (complete & (long_tail | alignment_repetition)) | token_repetition
        suppress_stop = (current < text_len - END_MARGIN) & (
            text_len > MIN_TEXT_FOR_EOS_SUPPRESSION
        )

        state_table[slot] = torch.cat(
            [position[:, None], complete[:, None].float(), mass, input_token[:, None].float()],
            dim=1,
        )
        self._record_positions(facts[:, StepFacts.ROW], position, logits.shape[0])
        if self.dry_run:
            return logits
        rows = facts[:, StepFacts.ROW]
        speech = logits[rows, : self.config.speech_tokens_dict_size]
        stop = self.stop_token
        speech[:, stop] = torch.where(suppress_stop, -FORCED_LOGIT, speech[:, stop])
        forced = torch.full_like(speech[:1], -FORCED_LOGIT)
        forced[:, stop] = FORCED_LOGIT
        logits[rows, : self.config.speech_tokens_dict_size] = torch.where(
            force_stop[:, None], forced, speech
        )
        return logits
