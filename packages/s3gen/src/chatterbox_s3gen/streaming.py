"""Streaming synthesis: a growing list of speech tokens of one utterance -> audio chunks in order.

How a stream cuts the work (frame numbers are generated 50 Hz mel frames, 480 samples each):

* **Flow windows.** Window ``k`` runs the flow on the last ``prompt_tokens`` voice-prompt tokens
  (and their prompt-mel frames), then up to ``left_context_tokens`` utterance tokens before its
  first new token, then its new tokens and ``lookahead_tokens`` more. It decodes everything but
  the look-ahead (the reference's ``finalize=False``: those tokens are context for the encoder's
  pre-lookahead conv and the full attention) and keeps only its new frames (plus the vocoder's
  context). It goes through :meth:`CausalMaskedDiffWithXvec.inference`, the flow
  :meth:`S3Gen.synthesize` runs, and every frame starts from the column of S3Gen's fixed CFM
  noise that whole-utterance synthesis uses for it (its index in prompt mel + generated mel), so
  the differences from the non-streamed mel are the unseen future, the cut history and the cut
  prompt. A window's cost is bounded whatever the utterance's length (``None`` for either bound
  re-runs everything, as CosyVoice2 does). Window sizes are ``first_chunk_tokens``, then
  doubling up to ``chunk_tokens``; the last window (after :meth:`S3GenStream.finish`) keeps
  everything. A ``StreamingConfig(whole=True)`` stream has one window over the whole utterance,
  equal to :meth:`S3Gen.synthesize`.
* **Vocoder windows.** HiFT runs on the window's fresh mel from ``context_frames`` before the
  first frame still to be emitted up to the end of the kept mel. The last ``lookahead_frames``
  and the ``crossfade_frames`` before them are not emitted yet: the next window recomputes them
  with more right context and blends its first ``crossfade_frames`` with the held-back samples
  (complementary raised-cosine weights that sum to exactly 1).
* **Source continuity.** HiFT's excitation is a sine at the predicted F0 plus noise. Instead of
  the reference's ``cache_source`` (overwriting the start of each window's source with the
  previous one's), each window's sine is started at the phase that makes it agree with the
  previous window at the centre of their crossfade (the *anchor*): the harmonics' cumulative
  cycles up to the anchor, as the previous window computed them, minus the cycles this window's
  own F0 adds between its first frame and the anchor, folded into HiFT's ``phases`` input. Both
  sums avoid the frames where a window's F0 is disturbed by its edges, so the phase at each
  anchor equals the non-streamed one to the extent the F0 does. The noise is read at absolute
  sample positions from a per-seed sequence (:func:`stream_source_noise`), so overlapping
  windows see the same noise.

Everything is deterministic for a given ``(tokens, reference, seed, n_timesteps, config)``: window
boundaries depend on token counts only, never on how the tokens were pushed.

Batched use (what a server does): each stream's :meth:`S3GenStream.next_window` returns a
:class:`StreamWindow` when it has enough tokens; :func:`synthesize_windows` runs windows of many
streams (any voices) as one padded flow batch and one padded HiFT batch; each
:class:`WindowResult` goes back to its stream's :meth:`S3GenStream.accept`, which returns the new
audio. :meth:`S3GenStream.push` / :meth:`S3GenStream.finish` do that loop for a single stream."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from chatterbox_s3gen.constants import (
    MEL_CHANNELS,
    MEL_HOP,
    S3GEN_SAMPLE_RATE,
    SPEECH_VOCAB_SIZE,
    TOKEN_MEL_RATIO,
)
from chatterbox_s3gen.errors import (
    ConfigurationError,
    S3GenError,
    S3GenInputError,
    S3GenInputTypeError,
)
from chatterbox_s3gen.flow import GraphPreparation, frame_bucket
from chatterbox_s3gen.graphs import ShapeGraphs
from chatterbox_s3gen.hift import HiFTGenerator, draw_source_noise
from chatterbox_s3gen.model import S3Gen, WarmShapes
from chatterbox_s3gen.reference import S3GenReference
from chatterbox_s3gen.vocoders import HiFTTorchVocoder

DEFAULT_LEFT_CONTEXT_TOKENS = 25
"""Utterance tokens (1 s) a window re-runs before its first new token (measured: README)."""
DEFAULT_PROMPT_TOKENS = 50
"""Voice-prompt tokens (2 s, the prompt's end) a window conditions on (measured: README)."""
MAX_PROMPT_TOKENS = 250
"""Longest prompt the shape lists assume for unbounded prompts (10 s, chatterbox's limit)."""

NOISE_BLOCK_SAMPLES = S3GEN_SAMPLE_RATE
"""A stream's vocoder noise is drawn in blocks of this many samples (1 s), each from its own
generator, so any sample range can be drawn without knowing the utterance's final length."""

_stream_ids = itertools.count()
logger = logging.getLogger(__name__)


class StreamStateError(S3GenError, RuntimeError):
    """A stream used out of order: tokens after :meth:`S3GenStream.finish`, a second ``finish``,
    ``accept`` with no window pending, ``flush`` before the last window."""


@dataclass(frozen=True)
class StreamingConfig:
    """How a :class:`S3GenStream` cuts an utterance into windows. Token counts are 25 Hz speech
    tokens (40 ms of audio each), frame counts 50 Hz mel frames (20 ms, 480 samples each).

    * ``first_chunk_tokens``: tokens whose audio the first window produces (default 16 = 0.64 s
      of mel; the first chunk is that minus the held-back ``crossfade_frames + lookahead_frames``);
      it needs ``first_chunk_tokens + lookahead_tokens`` tokens.
    * ``chunk_tokens``: the largest later window; windows double from ``first_chunk_tokens`` up to
      it (small early windows keep playback ahead of synthesis, large later ones need fewer flow
      passes over the re-run context).
    * ``lookahead_tokens``: future tokens a non-final window gives the flow as context and drops
      (3 = the flow's pre-lookahead conv; more gives the full-attention encoder and estimator more
      right context, i.e. less error, at the cost of latency).
    * ``left_context_tokens``: utterance tokens before a window's first new token that the flow
      re-runs as context (their mel is dropped, except the vocoder's ``context_frames``). Bounds
      the cost of a window whatever the utterance's length; ``None`` re-runs the whole history.
      Must cover the vocoder's re-run frames: ``2 * left_context_tokens >= context_frames +
      crossfade_frames + lookahead_frames``.
    * ``prompt_tokens``: windows condition on only the last this many voice-prompt tokens (and
      their prompt-mel frames); ``None`` uses the whole prompt. With ``first_window_full_prompt``
      the first window uses the whole prompt anyway (its cost then depends on the voice).
    * ``crossfade_frames``: overlap between consecutive vocoder windows, blended with
      complementary raised-cosine weights (0 = butt joins).
    * ``context_frames``: frames before the first new one that the vocoder recomputes (not
      emitted) so its convolutions see real left context.
    * ``lookahead_frames``: frames after the crossfade region that the vocoder computes but does
      not emit yet, so the crossfaded samples are not at the vocoder's right edge.
    * ``whole``: no streaming: one window, issued after :meth:`S3GenStream.end_of_tokens`, keeps
      every token with the whole prompt; its audio equals :meth:`S3Gen.synthesize` for the same
      tokens, voice, steps and seed (a non-streamed request run through the same scheduler).

    A non-final window re-runs at most ``prompt_tokens + left_context_tokens + chunk_tokens +
    lookahead_tokens`` tokens through the flow (a final one up to one token less); see
    :func:`stream_flow_shapes` for the flow batch shapes this allows.
    """

    first_chunk_tokens: int = 16
    chunk_tokens: int = 100
    lookahead_tokens: int = 3
    crossfade_frames: int = 4
    context_frames: int = 8
    lookahead_frames: int = 6
    left_context_tokens: int | None = DEFAULT_LEFT_CONTEXT_TOKENS
    prompt_tokens: int | None = DEFAULT_PROMPT_TOKENS
    first_window_full_prompt: bool = False
    whole: bool = False

    def __post_init__(self) -> None:
        minimum = {
            "first_chunk_tokens": 1,
            "chunk_tokens": 1,
            "lookahead_tokens": 0,
            "crossfade_frames": 0,
            "context_frames": 0,
            "lookahead_frames": 0,
            "left_context_tokens": 0,
            "prompt_tokens": 0,
        }
        for name, least in minimum.items():
            value = getattr(self, name)
            if value is None and name in ("left_context_tokens", "prompt_tokens"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise S3GenInputTypeError(
                    f"StreamingConfig.{name} must be an int, got {type(value).__name__}"
                )
            if value < least:
                raise ConfigurationError(f"StreamingConfig.{name} must be >= {least}, got {value}")
        for name in ("first_window_full_prompt", "whole"):
            if not isinstance(getattr(self, name), bool):
                raise S3GenInputTypeError(
                    f"StreamingConfig.{name} must be a bool, got {type(getattr(self, name)).__name__}"
                )
        if self.chunk_tokens < self.first_chunk_tokens:
            raise ConfigurationError(
                f"StreamingConfig.chunk_tokens ({self.chunk_tokens}) must be >= first_chunk_tokens "
                f"({self.first_chunk_tokens}): later windows are the larger ones"
            )
        held = self.held_frames
        # The first window's mel can be one frame short (odd prompt-mel frame count), and it must
        # still emit at least one frame beyond what it holds back.
        if TOKEN_MEL_RATIO * self.first_chunk_tokens - 1 <= held:
            raise ConfigurationError(
                f"StreamingConfig.first_chunk_tokens ({self.first_chunk_tokens}) is too small: its "
                f"{TOKEN_MEL_RATIO * self.first_chunk_tokens} mel frames must exceed the "
                f"{held} held back (crossfade_frames + lookahead_frames) by at least 2"
            )
        rerun = held + self.context_frames
        if (
            self.left_context_tokens is not None
            and TOKEN_MEL_RATIO * self.left_context_tokens < rerun
        ):
            # The vocoder re-runs the held-back and context frames of the previous window: the
            # flow must have produced them, i.e. they must lie in the window's left context.
            raise ConfigurationError(
                f"StreamingConfig.left_context_tokens ({self.left_context_tokens}) is too small: "
                f"its {TOKEN_MEL_RATIO * self.left_context_tokens} frames must cover the {rerun} "
                "the vocoder re-runs (context_frames + crossfade_frames + lookahead_frames)"
            )

    @property
    def held_frames(self) -> int:
        """Frames at the end of a non-final window that are computed but emitted later."""
        return self.crossfade_frames + self.lookahead_frames

    def window_tokens(self, index: int) -> int:
        """Tokens kept by non-final window ``index`` (0-based): doubling, capped at ``chunk_tokens``."""
        return min(self.chunk_tokens, self.first_chunk_tokens * 2 ** min(index, 30))

    def window_prompt_tokens(self, prompt_tokens: int, index: int) -> int:
        """Prompt tokens window ``index`` of a voice with ``prompt_tokens`` conditions on."""
        if (
            self.whole
            or self.prompt_tokens is None
            or (index == 0 and self.first_window_full_prompt)
        ):
            return prompt_tokens
        return min(prompt_tokens, self.prompt_tokens)

    def max_flow_tokens(self, max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> int:
        """The most tokens (prompt part included) any non-whole window runs through the flow's
        encoder, for voices of at most ``max_prompt_tokens`` prompt tokens."""
        if self.whole or self.left_context_tokens is None:
            raise ConfigurationError(
                "StreamingConfig: windows are bounded only with left_context_tokens set and "
                "whole=False"
            )
        prompt = max_prompt_tokens if self.prompt_tokens is None else self.prompt_tokens
        if self.first_window_full_prompt:
            first = max_prompt_tokens + self.first_chunk_tokens + self.lookahead_tokens
        else:
            first = 0
        steady = prompt + self.left_context_tokens + self.chunk_tokens + self.lookahead_tokens
        return max(first, steady)


@dataclass(frozen=True)
class StreamWindow:
    """One unit of work of a stream, to run (possibly batched with other streams' windows) through
    :func:`synthesize_windows`. Frame indices count the utterance's generated mel frames.

    * ``tokens``: utterance tokens ``[token_start, token_stop)`` (int64 CPU), prompt not included;
      ``token_start`` > 0 once the left context is bounded;
    * ``prompt_tokens``: how many of the voice's last prompt tokens (and their prompt-mel frames)
      the flow conditions on;
    * ``keep_tokens``: tokens whose mel is kept (``token_stop`` minus the dropped look-ahead);
    * ``mel_start``/``mel_stop``: generated frames handed to the vocoder;
    * ``phases``: ``[H, 1]`` float32 random initial phases of the harmonics (per seed);
    * ``anchor_frame`` / ``anchor_cycles``: the frame (``>= mel_start``) at which the sine must
      have accumulated ``anchor_cycles`` (``[H]`` float64, mod 1) cycles per harmonic;
    * ``noise``: the stream's :class:`SourceNoise` (the anchored vocoder draws the window's
      samples from it on the model's device);
    * ``whole``: the window of a ``StreamingConfig(whole=True)`` stream (vocoded exactly as
      :meth:`S3Gen.synthesize` with ``seed``).
    """

    stream_id: int
    index: int
    reference: S3GenReference
    tokens: torch.Tensor
    keep_tokens: int
    final: bool
    n_timesteps: int
    mel_start: int
    mel_stop: int
    phases: torch.Tensor
    anchor_frame: int
    anchor_cycles: torch.Tensor
    noise: SourceNoise
    token_start: int = 0
    prompt_tokens: int | None = None
    seed: int = 0
    whole: bool = False

    @property
    def frames(self) -> int:
        return self.mel_stop - self.mel_start

    # -- what the flow runs (frame numbers of the window's own prompt + token sequence) ---------
    @property
    def _prompt_cut(self) -> int:
        """Prompt tokens dropped from the front of the voice's prompt."""
        total = self.reference.num_prompt_tokens
        return total - (total if self.prompt_tokens is None else self.prompt_tokens)

    def flow_tokens(self) -> torch.Tensor:
        """The window's flow input: its prompt tokens, then its utterance tokens."""
        prompt = self.reference.prompt_tokens.to("cpu")[self._prompt_cut :]
        return torch.cat([prompt, self.tokens])

    def flow_prompt_mel(self) -> torch.Tensor:
        """The prompt-mel frames of the window's prompt tokens ``[F, 80]``. An odd last prompt
        frame overlaps the utterance's first token: kept only when that token is in the window."""
        ref = self.reference
        odd = ref.num_prompt_frames - TOKEN_MEL_RATIO * ref.num_prompt_tokens
        stop = TOKEN_MEL_RATIO * ref.num_prompt_tokens + (odd if self.token_start == 0 else 0)
        return ref.prompt_mel[TOKEN_MEL_RATIO * self._prompt_cut : stop]

    @property
    def keep_frames(self) -> int:
        """Frames (prompt part included) the CFM decodes: everything before the look-ahead."""
        prompt = self.reference.num_prompt_tokens - self._prompt_cut
        return TOKEN_MEL_RATIO * (prompt + self.keep_tokens - self.token_start)

    def noise_columns(self) -> torch.Tensor:
        """For each decoded frame, the column of S3Gen's fixed CFM noise that whole-utterance
        synthesis starts that frame from (its index in prompt mel + generated mel)."""
        ref = self.reference
        prompt = ref.num_prompt_tokens - self._prompt_cut
        prompt_part = TOKEN_MEL_RATIO * self._prompt_cut + torch.arange(TOKEN_MEL_RATIO * prompt)
        first = TOKEN_MEL_RATIO * (ref.num_prompt_tokens + self.token_start)
        rest = first + torch.arange(self.keep_frames - TOKEN_MEL_RATIO * prompt)
        return torch.cat([prompt_part, rest])

    @property
    def generated_offset(self) -> int:
        """Generated-frame index of the window's first generated (non-prompt) mel frame."""
        if self.token_start == 0:
            return 0
        ref = self.reference
        return TOKEN_MEL_RATIO * (ref.num_prompt_tokens + self.token_start) - ref.num_prompt_frames


@dataclass(frozen=True)
class WindowResult:
    """What :func:`synthesize_windows` computed for one :class:`StreamWindow`: the mel
    ``[80, frames]`` (float32, on the model's device), the vocoder's F0 per frame ``[frames]``
    (float64 CPU), the cycles per harmonic its sine started with at ``mel_start`` (``[H]``
    float64; with the F0 they give the next window's anchor) and the waveform ``[480 * frames]``
    (float32 CPU, before any fade, crossfade or hold-back)."""

    stream_id: int
    index: int
    mel: torch.Tensor
    f0: torch.Tensor
    cycles: torch.Tensor
    wav: torch.Tensor


def _splitmix64(value: int) -> int:
    # A fixed integer mixer: block seeds that are unrelated for neighbouring (seed, block) pairs.
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (value ^ (value >> 31)) & 0x7FFFFFFFFFFFFFFF


def _noise_block(seed: int, block: int, num_harmonics: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(_splitmix64(_splitmix64(seed) ^ block))
    return torch.randn((num_harmonics, NOISE_BLOCK_SAMPLES), generator=generator, device=device)


class SourceNoise:
    """The standard-normal source noise of one stream's anchored vocoder: an endless sequence per
    ``(seed, device type)`` in blocks of :data:`NOISE_BLOCK_SAMPLES`, each drawn from its own
    generator on the device that needs it, so any sample range is a slice of one sequence and
    overlapping windows see the same noise. On the CPU a stream keeps the blocks its next window
    may touch again (a block costs ~1 ms there); on a GPU a block is a single kernel, drawn where
    it is used, so no noise crosses the host-device link."""

    def __init__(self, seed: int, num_harmonics: int) -> None:
        self.seed = seed
        self.num_harmonics = num_harmonics
        self._cpu_blocks: dict[int, torch.Tensor] = {}

    def fill(self, out: torch.Tensor, start: int) -> None:
        """Write samples ``[start, start + out.shape[1])`` into ``out`` ``[H, n]`` (on its device).
        Streams ask for ranges that start ever later; earlier CPU blocks are dropped."""
        stop = start + out.shape[1]
        if start < 0:
            raise S3GenInputError(f"need 0 <= start <= stop, got [{start}, {stop})")
        cache = self._cpu_blocks if out.device.type == "cpu" else None
        if cache is not None:
            for block in [b for b in cache if b < start // NOISE_BLOCK_SAMPLES]:
                del cache[block]
        position = start
        while position < stop:
            block, offset = divmod(position, NOISE_BLOCK_SAMPLES)
            take = min(NOISE_BLOCK_SAMPLES - offset, stop - position)
            values = cache.get(block) if cache is not None else None
            if values is None:
                values = _noise_block(self.seed, block, self.num_harmonics, out.device)
                if cache is not None:
                    cache[block] = values
            out[:, position - start : position - start + take] = values[:, offset : offset + take]
            position += take


def stream_source_noise(
    seed: int,
    start: int,
    stop: int,
    num_harmonics: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Samples ``[start, stop)`` of the standard-normal source noise a stream with ``seed`` uses
    on ``device`` (``[num_harmonics, stop - start]`` float32; see :class:`SourceNoise`: one
    sequence per seed and device type). It differs from the noise :meth:`S3Gen.synthesize` draws
    (which depends on the utterance's total length)."""
    if start < 0 or stop < start:
        raise S3GenInputError(f"need 0 <= start <= stop, got [{start}, {stop})")
    out = torch.empty(num_harmonics, stop - start, device=device)
    SourceNoise(seed, num_harmonics).fill(out, start)
    return out


def _cycles_after(start: torch.Tensor, f0: torch.Tensor, num_harmonics: int) -> torch.Tensor:
    """Cycles per harmonic (mod 1, float64) after ``f0`` (Hz per mel frame, each held for 480
    samples) starting from ``start`` cycles: what HiFT's sine source accumulates."""
    harmonics = torch.arange(1, num_harmonics + 1, dtype=torch.float64)
    total = float(f0.detach().to("cpu", torch.float64).sum()) * MEL_HOP / S3GEN_SAMPLE_RATE
    return (start.to(torch.float64) + harmonics * total).remainder(1.0)


def _cycles_until(f0: torch.Tensor, frames: torch.Tensor, num_harmonics: int) -> torch.Tensor:
    """:func:`_cycles_after` from 0 cycles for every row of ``f0`` ``[B, T]`` over its first
    ``frames[b]`` frames, on ``f0``'s device: ``[B, H]`` float64."""
    span = torch.arange(f0.shape[1], device=f0.device) < frames.view(-1, 1)
    total = (f0.to(torch.float64) * span).sum(dim=1) * MEL_HOP / S3GEN_SAMPLE_RATE
    harmonics = torch.arange(1, num_harmonics + 1, dtype=torch.float64, device=f0.device)
    return (harmonics * total.unsqueeze(-1)).remainder(1.0)


def _crossfade_weights(samples: int) -> torch.Tensor:
    """Rising weights ``sin^2`` over ``samples`` points; ``1 - w`` is the falling side, so the two
    sides always sum to exactly 1 (the reference's Hamming halves sum to up to 1.08)."""
    position = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples
    return torch.sin(0.5 * math.pi * position).pow(2).float()


def _as_token_list(tokens: object) -> list[int]:
    if isinstance(tokens, str | bytes):
        raise S3GenInputTypeError(f"push() takes a sequence of ints, got {type(tokens).__name__}")
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1 or tokens.is_floating_point() or tokens.is_complex():
            raise S3GenInputError(
                f"push() takes a 1-D integer tensor, got shape {tuple(tokens.shape)} dtype {tokens.dtype}"
            )
        if tokens.dtype == torch.bool:
            raise S3GenInputTypeError("push() takes integer token ids, not booleans")
        values: list[int] = [int(v) for v in tokens.tolist()]
    else:
        try:
            items = list(tokens)  # type: ignore[call-overload]
        except TypeError:
            raise S3GenInputTypeError(
                f"push() takes a sequence of ints, got {type(tokens).__name__}"
            ) from None
        if not all(hasattr(v, "__index__") and not isinstance(v, bool) for v in items):
            raise S3GenInputTypeError("push() takes a sequence of ints (token ids)")
        values = [v.__index__() for v in items]
    bad = [v for v in values if not 0 <= v < SPEECH_VOCAB_SIZE]
    if bad:
        raise S3GenInputError(
            f"push() got {len(bad)} id(s) outside [0, {SPEECH_VOCAB_SIZE}), e.g. {bad[:5]}; "
            "drop T3's start/stop and other control tokens first"
        )
    return values


class S3GenStream:
    """Streaming synthesis of one utterance in one voice.

    ``push(tokens)`` adds tokens as T3 produces them and returns the audio chunks (1-D float32 CPU
    tensors at 24 kHz) that became ready; ``finish()`` returns the rest. Concatenated, the chunks
    have exactly the length of :meth:`S3Gen.synthesize`'s waveform for the same tokens (see the
    package README for how close the samples are). For batching across streams use
    :meth:`next_window` / :func:`synthesize_windows` / :meth:`accept` instead of ``push``.

    ``seed`` seeds the vocoder's source (the harmonic phases are the ones :meth:`S3Gen.synthesize`
    uses for that seed; the noise comes from :func:`stream_source_noise`; a ``whole`` stream uses
    exactly :meth:`S3Gen.synthesize`'s draws). With the built-in ``hift-torch`` vocoder, windows
    are vocoded by the model's HiFT with sine-phase anchoring; with any other ``s3gen.vocoder``
    (``griffin-lim``, ``hift-onnx``, a plug-in) by that vocoder, each window's mel with its left
    context, crossfaded the same way. Not thread-safe: drive one stream from one thread."""

    def __init__(
        self,
        s3gen: S3Gen,
        reference: S3GenReference,
        *,
        seed: int = 0,
        n_timesteps: int | None = None,
        config: StreamingConfig | None = None,
    ) -> None:
        if not isinstance(s3gen, S3Gen):
            raise S3GenInputTypeError(f"s3gen must be an S3Gen, got {type(s3gen).__name__}")
        if not isinstance(reference, S3GenReference):
            raise S3GenInputTypeError(
                f"reference must be an S3GenReference (from embed_ref), got {type(reference).__name__}"
            )
        if isinstance(seed, bool) or not hasattr(seed, "__index__"):
            raise S3GenInputTypeError(f"seed must be an int, got {type(seed).__name__}")
        n_timesteps = s3gen.steps(n_timesteps)  # None: the model's default (S3Gen.flow_steps)
        if config is None:
            config = StreamingConfig()
        elif not isinstance(config, StreamingConfig):
            raise S3GenInputTypeError(
                f"config must be a StreamingConfig, got {type(config).__name__}"
            )
        self.s3gen = s3gen
        self.reference = reference
        self.seed = seed.__index__()
        self.n_timesteps = n_timesteps
        self.config = config
        self.stream_id = next(_stream_ids)
        self._num_harmonics = s3gen.mel2wav.num_harmonics
        self._max_tokens = s3gen.max_frames // TOKEN_MEL_RATIO - reference.num_prompt_tokens
        # The reference's harmonic phases for this seed (the first draws after manual_seed).
        phases, _ = draw_source_noise([0], [self.seed], self._num_harmonics)
        self._base_phases = phases[0, :, 0].double()
        self._fade = s3gen.trim_fade.detach().to("cpu", torch.float32)
        self._weights = _crossfade_weights(config.crossfade_frames * MEL_HOP)
        self._tokens: list[int] = []
        self._finish_requested = False
        self._done = False
        self._windows = 0  # windows accepted so far
        self._pending: StreamWindow | None = None
        self._kept_tokens = 0  # utterance tokens whose mel has been produced
        self._last_hop = 0  # tokens the last accepted window kept (later windows keep >= this)
        self._emitted_frames = 0  # frames whose audio has been returned
        self._emitted_samples = 0
        # Phase anchor of the next window: frame 0 with no cycles, exactly as unstreamed.
        self._anchor_frame = 0
        self._anchor_cycles = torch.zeros(self._num_harmonics, dtype=torch.float64)
        # Samples of the last window after the emitted ones (crossfade + look-ahead frames).
        self._tail = torch.zeros(0)
        self._noise = SourceNoise(self.seed, self._num_harmonics)

    # -- state -----------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Tokens pushed so far."""
        return len(self._tokens)

    @property
    def emitted_samples(self) -> int:
        """Audio samples returned so far."""
        return self._emitted_samples

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` or :meth:`end_of_tokens` was called (no more tokens)."""
        return self._finish_requested

    @property
    def done(self) -> bool:
        """True once the last audio has been returned."""
        return self._done

    @property
    def pending(self) -> StreamWindow | None:
        """The window handed out by :meth:`next_window` and not yet accepted."""
        return self._pending

    def _generated_frames(self, tokens: int) -> int:
        """Generated mel frames for the first ``tokens`` utterance tokens (an odd prompt mel eats
        the first frame, as in :meth:`S3Gen.synthesize`)."""
        prompt = self.reference
        return max(
            0,
            TOKEN_MEL_RATIO * (prompt.num_prompt_tokens + tokens) - prompt.num_prompt_frames,
        )

    # -- feeding ---------------------------------------------------------------------------------
    def add_tokens(self, tokens: Sequence[int] | torch.Tensor) -> None:
        """Append tokens without running anything (for batched driving; :meth:`push` runs too)."""
        if self._finish_requested:
            raise StreamStateError(
                f"stream {self.stream_id} is finished; start a new S3GenStream for more tokens"
            )
        values = _as_token_list(tokens)
        if len(self._tokens) + len(values) > self._max_tokens:
            raise S3GenInputError(
                f"stream {self.stream_id}: {len(self._tokens) + len(values)} tokens after a "
                f"{self.reference.num_prompt_tokens}-token prompt exceed the CFM noise "
                f"({self.s3gen.max_frames} frames); at most {self._max_tokens} tokens"
            )
        self._tokens.extend(values)

    def end_of_tokens(self) -> None:
        """Declare that no more tokens will come (the final window may then run)."""
        self._finish_requested = True

    def next_window(self, *, grow: bool = False) -> StreamWindow | None:
        """The next window to synthesize, or None: not enough tokens yet, a window is already
        pending (each window needs the previous one's result), or the stream is done.

        ``grow``: once the window's own tokens are there, it takes every token there is, up to
        ``chunk_tokens`` (with the stream's end, the rest as a final window when it fits): a
        server whose S3Gen was busy while the tokens came gets more audio from the same round
        (a round's cost is mostly fixed). A window never keeps fewer tokens than the one before
        it; ``StreamingConfig``'s doubling is the least."""
        if self._done or self._pending is not None:
            return None
        span = self._next_span(grow)
        if span is None:
            return None
        keep, stop, final = span
        cfg = self.config
        mel_stop = self._generated_frames(keep)
        mel_start = max(0, self._emitted_frames - cfg.context_frames)
        context = cfg.left_context_tokens
        token_start = 0 if context is None else max(0, self._kept_tokens - context)
        window = StreamWindow(
            stream_id=self.stream_id,
            index=self._windows,
            reference=self.reference,
            tokens=torch.tensor(self._tokens[token_start:stop], dtype=torch.int64),
            keep_tokens=keep,
            final=final,
            n_timesteps=self.n_timesteps,
            mel_start=mel_start,
            mel_stop=mel_stop,
            phases=self._base_phases.float().unsqueeze(-1),
            anchor_frame=self._anchor_frame,
            anchor_cycles=self._anchor_cycles.clone(),
            noise=self._noise,
            token_start=token_start,
            prompt_tokens=cfg.window_prompt_tokens(self.reference.num_prompt_tokens, self._windows),
            seed=self.seed,
            whole=cfg.whole,
        )
        self._pending = window
        return window

    def grow_pending(self) -> StreamWindow | None:
        """The pending window (taken, not synthesized yet) rebuilt with the tokens that came
        since, as :meth:`next_window` with ``grow`` builds it; returns the new pending window,
        or None when there is no pending window or nothing to add (it stays as it was)."""
        pending = self._pending
        if pending is None or self._done or pending.final:
            return None
        largest = pending.keep_tokens - self._kept_tokens >= self.config.chunk_tokens
        if largest and not self._finish_requested:
            # Already the largest window: rebuilding it (a token tensor per round for every
            # held window) could only give the same window back.
            return None
        self._pending = None
        grown = self.next_window(grow=True)
        if grown is None or (
            grown.keep_tokens <= pending.keep_tokens and grown.final == pending.final
        ):
            self._pending = pending
            return None
        return grown

    def _next_span(self, grow: bool = False) -> tuple[int, int, bool] | None:
        """(keep, stop, final) of the next window, or None if it cannot run yet."""
        cfg = self.config
        available = len(self._tokens)
        if cfg.whole:
            ready = self._finish_requested and available > 0
            return (available, available, True) if ready else None
        hop = max(cfg.window_tokens(self._windows), min(cfg.chunk_tokens, self._last_hop))
        remaining = available - self._kept_tokens
        if grow and remaining >= hop + cfg.lookahead_tokens:
            if self._finish_requested and remaining < cfg.chunk_tokens + cfg.lookahead_tokens:
                return available, available, True  # the rest fits one (final) window
            hop = min(cfg.chunk_tokens, remaining - cfg.lookahead_tokens)
        if available >= self._kept_tokens + hop + cfg.lookahead_tokens:
            keep = self._kept_tokens + hop
            return keep, keep + cfg.lookahead_tokens, False
        if self._finish_requested and available > self._kept_tokens:
            return available, available, True
        # Not enough tokens yet, or nothing new for the flow: finish() flushes the held tail.
        return None

    def accept(self, result: WindowResult) -> list[torch.Tensor]:
        """Take the result of the pending window; returns the audio it completes (zero or one
        chunk). Crossfades with the previous window's held-back samples, holds back this window's
        last ``crossfade_frames + lookahead_frames`` (unless final) and applies the reference's
        20 ms silence + 20 ms fade-in at the utterance's start."""
        window = self._pending
        if window is None:
            raise StreamStateError(f"stream {self.stream_id} has no pending window to accept")
        if not isinstance(result, WindowResult):
            raise S3GenInputTypeError(f"accept() takes a WindowResult, got {type(result).__name__}")
        if result.stream_id != self.stream_id or result.index != window.index:
            raise S3GenInputError(
                f"result of stream {result.stream_id} window {result.index} given to stream "
                f"{self.stream_id}, whose pending window is {window.index}"
            )
        if result.wav.numel() != window.frames * MEL_HOP or result.f0.numel() != window.frames:
            raise S3GenInputError(
                f"result has {result.wav.numel()} samples / {result.f0.numel()} F0 frames for a "
                f"{window.frames}-frame window"
            )
        cfg = self.config
        wav = result.wav.detach().to("cpu", torch.float32)
        start = self._emitted_frames
        stop = window.mel_stop if window.final else window.mel_stop - cfg.held_frames
        stop = max(stop, start)
        offset = (start - window.mel_start) * MEL_HOP
        chunk = wav[offset : (stop - window.mel_start) * MEL_HOP].clone()
        overlap = min(self._tail.numel(), self._weights.numel(), chunk.numel())
        if overlap:
            # The previous window's tail covers the same samples, computed with less right context.
            rising = self._weights[:overlap]
            chunk[:overlap] = chunk[:overlap] * rising + self._tail[:overlap] * (1 - rising)
        self._tail = wav[(stop - window.mel_start) * MEL_HOP :].clone()
        # The next window's sine must agree with this one at the centre of their crossfade.
        anchor = min(stop + cfg.crossfade_frames // 2, window.mel_stop)
        self._anchor_cycles = _cycles_after(
            result.cycles, result.f0[: anchor - window.mel_start], self._num_harmonics
        )
        self._anchor_frame = anchor
        self._last_hop = window.keep_tokens - self._kept_tokens
        self._kept_tokens = window.keep_tokens
        self._emitted_frames = stop
        self._windows += 1
        self._pending = None
        if window.final:
            self._done = True
            self._tail = torch.zeros(0)
        return self._emit(chunk)

    def _emit(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        if chunk.numel() == 0:
            return []
        start = self._emitted_samples
        if start < self._fade.numel():
            fade = self._fade[start : start + chunk.numel()]
            chunk[: fade.numel()] *= fade
        self._emitted_samples += chunk.numel()
        return [chunk]

    def _flush_tail(self) -> list[torch.Tensor]:
        """End without a new flow window: the last window's held-back samples are final audio."""
        self._done = True
        tail, self._tail = self._tail, torch.zeros(0)
        self._emitted_frames += tail.numel() // MEL_HOP
        return self._emit(tail.clone())

    # -- single-stream driving -----------------------------------------------------------------------
    def _run(self) -> list[torch.Tensor]:
        chunks: list[torch.Tensor] = []
        while (window := self.next_window()) is not None:
            (result,) = synthesize_windows(self.s3gen, [window])
            chunks.extend(self.accept(result))
        return chunks

    def push(self, tokens: Sequence[int] | torch.Tensor) -> list[torch.Tensor]:
        """Add tokens and synthesize every window they complete; returns the new audio chunks
        (possibly none). Raises RuntimeError after :meth:`finish`."""
        self.add_tokens(tokens)
        return self._run()

    def finish(self) -> list[torch.Tensor]:
        """No more tokens: synthesize the final window (no look-ahead trim) and return the
        remaining audio. A stream that never got a token returns no audio."""
        if self._done:
            raise StreamStateError(f"stream {self.stream_id} is already finished")
        self.end_of_tokens()
        chunks = self._run()
        return chunks + self.flush()

    def flush(self) -> list[torch.Tensor]:
        """After :meth:`end_of_tokens` and once :meth:`next_window` returns None with nothing
        pending: return the held-back tail and mark the stream done (batched drivers call this)."""
        if not self._finish_requested:
            raise StreamStateError("flush() needs end_of_tokens() first")
        if self._pending is not None:
            raise StreamStateError("flush() with a window still pending; accept its result first")
        if self._done:
            return []
        if len(self._tokens) != self._kept_tokens:
            raise StreamStateError("tokens remain to synthesize; run next_window() first")
        return self._flush_tail()


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _row_bucket(rows: int) -> int:
    """1, 2, 4, 8, then multiples of 8 (padded rows repeat the last window and are dropped)."""
    return 1 << (rows - 1).bit_length() if rows <= 8 else _round_up(rows, 8)


def _bucketing(s3gen: S3Gen, bucket: bool | None) -> bool:
    # On CUDA every new (rows, length) shape costs kernel/plan selection in every conv and matmul;
    # streamed windows grow every round, so shapes are rounded up to a few buckets there. Padding
    # is masked (batch invariance), so results do not change; on a CPU it would only add work.
    return s3gen.device.type == "cuda" if bucket is None else bool(bucket)


TOKEN_BUCKET = 32
"""Flow batches are padded to a multiple of this many tokens (64 frames) when bucketing."""
VOCODER_FRAME_BUCKET = 16
"""HiFT batches are padded to a multiple of this many frames when bucketing."""


def _flow_windows(
    s3gen: S3Gen, windows: Sequence[StreamWindow], n_timesteps: int, bucket: bool
) -> list[torch.Tensor]:
    """Mels ``[80, frames]`` of every window's ``[mel_start, mel_stop)``, as one padded batch
    through :meth:`CausalMaskedDiffWithXvec.inference` (the flow :meth:`S3Gen.synthesize` runs):
    each item decodes its kept frames only (the look-ahead tokens reach the encoder only) and
    starts every frame from the CFM noise column the whole utterance uses for it."""
    device = s3gen.device
    count = len(windows)
    if bucket:  # padded rows repeat the last window; their output is dropped
        windows = [*windows, *[windows[-1]] * (_row_bucket(count) - count)]
    batch = len(windows)
    full = [w.flow_tokens() for w in windows]
    token_lengths = torch.tensor([t.numel() for t in full])
    width = int(token_lengths.max())
    if bucket:
        width = min(_round_up(width, TOKEN_BUCKET), s3gen.max_frames // TOKEN_MEL_RATIO)
        if s3gen.warm_shapes is not None:
            s3gen.warm_shapes.note("encoder", (batch, width))
    padded = torch.zeros(batch, width, dtype=torch.int64)
    for i, t in enumerate(full):
        padded[i, : t.numel()] = t
    prompts = [w.flow_prompt_mel() for w in windows]
    prompt_lengths = torch.tensor([p.shape[0] for p in prompts])
    prompt_mel = torch.zeros(batch, max(int(prompt_lengths.max()), 1), MEL_CHANNELS, device=device)
    for i, p in enumerate(prompts):
        prompt_mel[i, : p.shape[0]] = p.to(device, torch.float32)
    keep = torch.tensor([w.keep_frames for w in windows])
    columns = torch.zeros(batch, int(keep.max()), dtype=torch.int64)
    for i, w in enumerate(windows):
        columns[i, : w.keep_frames] = w.noise_columns()
    speakers = torch.stack(
        [w.reference.speaker_embedding.to(device, torch.float32) for w in windows]
    )
    # Host-to-device copies here and below are non-blocking: a blocking one would make the host
    # wait for every kernel already queued (the previous round's) before launching this one's.
    mel, _ = s3gen.flow.inference(
        padded.to(device, non_blocking=True),
        token_lengths,
        prompt_mel,
        prompt_lengths,
        speakers,
        n_timesteps,
        keep_frames=keep,
        noise_columns=columns.to(device, non_blocking=True),
    )
    out = []
    for i, w in enumerate(windows[:count]):
        first = w.mel_start - w.generated_offset
        out.append(mel[i, :, first : first + w.frames].float())
    return out


def _anchored_hift(s3gen: S3Gen) -> bool:
    """Whether streamed windows are vocoded by the model's own torch HiFT with sine-phase
    anchoring (the built-in ``hift-torch`` vocoder); any other vocoder is used as a plug-in."""
    vocoder = s3gen.vocoder
    return isinstance(vocoder, HiFTTorchVocoder) and vocoder.hift is s3gen.mel2wav


def stream_flow_shapes(
    config: StreamingConfig, max_rows: int, *, max_prompt_tokens: int = MAX_PROMPT_TOKENS
) -> list[tuple[int, int]]:
    """Every ``(rows, frames)`` CFM batch shape that windows of ``config`` make in batches of up
    to ``max_rows`` windows: rows 1, 2, 4, ... up to the first power of two >= ``max_rows``
    (larger batches are split), frames every :func:`~chatterbox_s3gen.flow.frame_bucket` up to
    the longest window's decoded frames. ``max_prompt_tokens`` bounds voices' prompts where the
    config does not (``prompt_tokens=None`` or ``first_window_full_prompt``)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise S3GenInputError(f"max_rows must be a positive int, got {max_rows!r}")
    if not isinstance(config, StreamingConfig):
        raise S3GenInputTypeError(f"config must be a StreamingConfig, got {type(config).__name__}")
    # Decoded frames exclude the look-ahead of non-final windows; a final window keeps up to
    # one window plus lookahead - 1 new tokens (with lookahead_tokens more it would not be final).
    longest = config.max_flow_tokens(max_prompt_tokens) - min(config.lookahead_tokens, 1)
    top = frame_bucket(TOKEN_MEL_RATIO * longest)
    frames = sorted({frame_bucket(f) for f in range(1, top + 1, 16)} | {top})
    rows = [1 << i for i in range((max_rows - 1).bit_length() + 1)]
    return [(r, f) for r in rows for f in frames]


def stream_kernel_shapes(
    config: StreamingConfig, max_rows: int, *, max_frames: int | None = None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The eager parts' batch shapes that windows of ``config`` make in rounds of up to
    ``max_rows`` windows when bucketed (on CUDA): ``(rows, tokens)`` of the flow encoder (every
    :data:`TOKEN_BUCKET` up to the longest window's flow tokens) and ``(rows, frames)`` of the
    anchored HiFT (every :data:`VOCODER_FRAME_BUCKET` up to the longest window's vocoder
    frames), rows the padded row counts :func:`flow_windows` and :func:`vocode_windows` use.
    ``max_frames``: the model's :attr:`S3Gen.max_frames` (caps the encoder's width)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise S3GenInputError(f"max_rows must be a positive int, got {max_rows!r}")
    if not isinstance(config, StreamingConfig):
        raise S3GenInputTypeError(f"config must be a StreamingConfig, got {type(config).__name__}")
    rows = sorted({_row_bucket(r) for r in range(1, max_rows + 1)})
    widest = _round_up(config.max_flow_tokens(), TOKEN_BUCKET)
    if max_frames is not None:
        widest = min(widest, max_frames // TOKEN_MEL_RATIO)
    widths = sorted(
        {min(w, widest) for w in range(TOKEN_BUCKET, widest + TOKEN_BUCKET, TOKEN_BUCKET)}
    )
    # A window's vocoder frames: its new tokens' mel (a final one keeps up to a window plus
    # lookahead - 1 tokens), the frames re-run for context and held back before it, and the
    # odd prompt frame a first window can carry.
    longest = (
        TOKEN_MEL_RATIO * (config.chunk_tokens + config.lookahead_tokens)
        + config.context_frames
        + config.held_frames
        + 1
    )
    frames = range(
        VOCODER_FRAME_BUCKET, _round_up(longest, VOCODER_FRAME_BUCKET) + 1, VOCODER_FRAME_BUCKET
    )
    return [(r, w) for r in rows for w in widths], [(r, f) for r in rows for f in frames]


@torch.inference_mode()
def prepare_stream_kernels(
    s3gen: S3Gen,
    config: StreamingConfig,
    max_rows: int,
    *,
    run: bool | None = None,
    capture: bool | None = None,
) -> int:
    """Start-up work for the parts of a streamed round around the CFM loop: the flow encoder
    (:meth:`CausalMaskedDiffWithXvec.encode`) and the anchored HiFT (:func:`anchored_hift`) at
    every shape of :func:`stream_kernel_shapes`, each run once (every new shape costs cuDNN's
    plan selection and the allocator's growth once, which would otherwise stall the first
    round that meets it while serving) and captured as a CUDA graph that rounds of that shape
    then replay (``S3Gen.flow.encoder_graphs``, :attr:`S3Gen.anchored_hift_graphs`). From now
    on the shapes met that were not prepared here are counted
    (:attr:`S3Gen.warm_shapes`, ``graph_stats()["cold_shapes_after_seal"]``).

    ``capture`` (default: on CUDA) False keeps the graphs' static buffers and bookkeeping but
    runs the parts eagerly on them (the CPU tests check everything around the capture that
    way); ``run`` (default: on CUDA) False then also skips the one run per shape (a CPU has no
    kernels to warm). A failing run or capture (out of
    memory, say) is logged and ends that part's preparation: the rest of its shapes run
    eagerly. Returns the number of shapes prepared."""
    on_cuda = s3gen.device.type == "cuda"
    capture = on_cuda if capture is None else capture
    run = on_cuda if run is None else run
    encoder_shapes, vocoder_shapes = stream_kernel_shapes(
        config, max_rows, max_frames=s3gen.max_frames
    )
    flow, hift, device = s3gen.flow, s3gen.mel2wav, s3gen.device
    harmonics = hift.num_harmonics

    # Examples are broadcast scalars (no memory of their own): all shapes' are listed at once.
    def filled(value: float, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.full((), value, dtype=dtype, device=device).expand(*shape)

    def encoder_example(rows: int, tokens: int) -> list[torch.Tensor]:
        return [filled(0, rows, tokens, dtype=torch.int64), filled(tokens, rows, dtype=torch.int64)]

    def vocoder_example(rows: int, frames: int) -> list[torch.Tensor]:
        return [
            filled(0, rows, MEL_CHANNELS, frames),
            filled(frames, rows, dtype=torch.int64),
            filled(0, rows, harmonics, frames * MEL_HOP),
            filled(frames, rows, dtype=torch.int64),
            filled(0, rows, harmonics, dtype=torch.float64),
            filled(0, rows, harmonics, dtype=torch.float64),
        ]

    encoder = ShapeGraphs(
        "flow encoder",
        flow.encode_eager,
        capture=capture,
        keep_alive=flow.encoder.positions.tables,
        fingerprint=flow.encoder_parameters_fingerprint,
    )
    vocoder = ShapeGraphs(
        "anchored HiFT",
        functools.partial(anchored_hift, hift),
        capture=capture,
        fingerprint=lambda: tuple(p.data_ptr() for p in hift.parameters()),
    )
    warm = WarmShapes()
    for graphs, shapes, example, done in (
        (encoder, encoder_shapes, encoder_example, warm.encoder),
        (vocoder, vocoder_shapes, vocoder_example, warm.vocoder),
    ):
        prepared = graphs.prepare([example(*shape) for shape in shapes], warm=run)
        done.update(shapes[:prepared])
    flow.encoder_graphs = encoder
    s3gen.anchored_hift_graphs = vocoder
    if on_cuda:
        torch.cuda.synchronize(device)
    s3gen.warm_shapes = warm
    return len(warm.encoder) + len(warm.vocoder)


def prepare_stream_graphs(
    s3gen: S3Gen,
    config: StreamingConfig,
    max_rows: int,
    n_timesteps: int | None = None,
    *,
    kernel_graphs: bool = True,
) -> GraphPreparation:
    """A streaming server's start-up: :meth:`S3Gen.prepare_graphs` for every flow shape the
    windows of ``config`` can make in batches of up to ``max_rows`` (:func:`stream_flow_shapes`),
    captured now and sealed, so none is captured while serving; then
    :func:`prepare_stream_kernels` for the flow encoder and HiFT (captured as CUDA graphs too
    unless ``kernel_graphs`` is False: then each shape is only run once). ``n_timesteps``: default the
    model's :attr:`S3Gen.flow_steps` (the meanflow decoder's shapes are the same, at 2 steps)."""
    report = s3gen.prepare_graphs(stream_flow_shapes(config, max_rows), n_timesteps)
    begin = time.perf_counter()
    capture = s3gen.device.type == "cuda" and kernel_graphs
    warmed = prepare_stream_kernels(s3gen, config, max_rows, capture=capture)
    seconds = time.perf_counter() - begin
    logger.info(
        "S3Gen: flow encoder and HiFT prepared at %d shapes in %.1f s%s",
        warmed,
        seconds,
        " (CUDA graphs)" if capture else "",
    )
    return dataclasses.replace(report, warmed=warmed, seconds=report.seconds + seconds)


def _check_windows(windows: object) -> Sequence[StreamWindow]:
    if isinstance(windows, StreamWindow) or not isinstance(windows, Sequence):
        raise S3GenInputTypeError("windows must be a sequence of StreamWindow")
    for i, w in enumerate(windows):
        if not isinstance(w, StreamWindow):
            raise S3GenInputTypeError(
                f"windows[{i}] must be a StreamWindow, got {type(w).__name__}"
            )
    seen = [(w.stream_id, w.index) for w in windows]
    if len(set(seen)) != len(seen):
        raise S3GenInputError("windows must not contain the same stream window twice")
    return windows


@torch.inference_mode()
def flow_windows(
    s3gen: S3Gen, windows: Sequence[StreamWindow], *, bucket: bool | None = None
) -> list[torch.Tensor]:
    """The flow half of :func:`synthesize_windows`: each window's mel ``[80, frames]`` (float32,
    on the model's device), one padded batch per distinct ``n_timesteps``. ``bucket`` (default:
    on CUDA only) rounds the batch's rows and length up to a few sizes, so a stream of growing
    windows reuses the same kernels, plans and CUDA graphs; it does not change the results."""
    windows = _check_windows(windows)
    bucket = _bucketing(s3gen, bucket)
    mels: list[torch.Tensor] = [torch.empty(0)] * len(windows)
    steps: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        steps.setdefault(w.n_timesteps, []).append(i)
    graphs = s3gen.flow.decoder.graphs
    # A sealed graph set holds batches of at most this many rows: larger ones are split.
    most = (graphs.max_sealed_rows if graphs is not None else None) or max(len(windows), 1)
    for n_timesteps, members in steps.items():
        for begin in range(0, len(members), most):
            part = members[begin : begin + most]
            batch = [windows[i] for i in part]
            for i, mel in zip(part, _flow_windows(s3gen, batch, n_timesteps, bucket)):
                mels[i] = mel
    return mels


@torch.inference_mode()
def vocode_windows(
    s3gen: S3Gen,
    windows: Sequence[StreamWindow],
    mels: Sequence[torch.Tensor],
    *,
    bucket: bool | None = None,
) -> list[WindowResult]:
    """The vocoder half of :func:`synthesize_windows` on each window's mel ``[80, window.frames]``
    (normally from :func:`flow_windows`). Whole windows go through ``s3gen.vocoder`` exactly as
    :meth:`S3Gen.synthesize` vocodes (same seed semantics). Streamed windows go through the
    model's torch HiFT as one padded batch, each started at the sine phase its anchor asks for;
    with another vocoder (``griffin-lim``, ``hift-onnx``, a plug-in) through that vocoder, as one
    batch (crossfaded by the stream as usual; no phase anchoring). ``bucket``: as in
    :func:`flow_windows`."""
    windows = _check_windows(windows)
    bucket = _bucketing(s3gen, bucket)
    if (
        isinstance(mels, torch.Tensor)
        or not isinstance(mels, Sequence)
        or len(mels) != len(windows)
    ):
        raise S3GenInputError(f"mels must be a sequence of one mel per window ({len(windows)})")
    for i, (w, m) in enumerate(zip(windows, mels)):
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != (MEL_CHANNELS, w.frames):
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise S3GenInputError(f"mels[{i}] must be [{MEL_CHANNELS}, {w.frames}], got {shape}")
    anchored = _anchored_hift(s3gen)
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(windows):
        path = "whole" if w.whole else "anchored" if anchored else "plugin"
        groups.setdefault(path, []).append(i)
    results: list[WindowResult | None] = [None] * len(windows)
    for path, members in groups.items():
        part = [windows[i] for i in members]
        part_mels = [mels[i] for i in members]
        if path == "anchored":
            done = _vocode_anchored(s3gen, part, part_mels, bucket)
        else:
            done = _vocode_plain(s3gen, part, part_mels, whole=path == "whole")
        for i, result in zip(members, done):
            results[i] = result
    return [r for r in results if r is not None]


def _vocode_plain(
    s3gen: S3Gen, windows: Sequence[StreamWindow], mels: Sequence[torch.Tensor], *, whole: bool
) -> list[WindowResult]:
    """``s3gen.vocoder`` on the windows' mels as one batch, without a fade (the stream fades).
    Whole windows get their stream's seed, as :meth:`S3Gen.synthesize` gives an item; streamed
    windows one seed per (stream seed, window) so a seeded plug-in's noise differs per window."""
    lengths = torch.tensor([w.frames for w in windows])
    padded = torch.zeros(len(windows), MEL_CHANNELS, int(lengths.max()), device=s3gen.device)
    for i, m in enumerate(mels):
        padded[i, :, : m.shape[1]] = m.to(s3gen.device, torch.float32)
    seeds = [w.seed if whole else _splitmix64(w.seed ^ _splitmix64(w.index)) for w in windows]
    wavs = s3gen._vocode_unfaded(padded, lengths, seeds)
    harmonics = s3gen.mel2wav.num_harmonics
    return [
        WindowResult(
            w.stream_id,
            w.index,
            m,
            torch.zeros(w.frames, dtype=torch.float64),
            torch.zeros(harmonics, dtype=torch.float64),
            wav,
        )
        for w, m, wav in zip(windows, mels, wavs)
    ]


def anchored_hift(
    hift: HiFTGenerator,
    mel: torch.Tensor,
    lengths: torch.Tensor,
    noise: torch.Tensor,
    upto: torch.Tensor,
    anchors: torch.Tensor,
    base: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiFT on padded window mels ``[B, 80, T]`` (``lengths`` ``[B]``), each window's sine
    started at the phase its anchor asks for: its F0 first (each window's starting phase depends
    on the cycles its own F0 adds up to ``upto`` frames, where ``anchors`` ``[B, H]`` cycles
    must be reached), then HiFT with ``base`` ``[B, H]`` phases and the source ``noise``.
    Returns the waveforms ``[B, 480 T]`` (float32), the F0 ``[B, T]`` and the starting cycles
    ``[B, H]`` (float64), all on the device: one function of device tensors, so a streaming
    server captures it as one CUDA graph per shape."""
    f0 = hift.predict_f0(mel, lengths)
    start = (anchors - _cycles_until(f0, upto, hift.num_harmonics)).remainder(1.0)
    # sin(2pi(c + cumsum) + phase) == sin(2pi cumsum + (phase + 2pi c)): fold c into phases.
    phases = (base + 2 * math.pi * start).float().unsqueeze(-1)
    return hift(mel, lengths, phases, noise, f0=f0).float(), f0, start


def _vocode_anchored(
    s3gen: S3Gen, windows: Sequence[StreamWindow], mels: Sequence[torch.Tensor], bucket: bool
) -> list[WindowResult]:
    """The model's torch HiFT on the windows' mels as one padded batch, each window's sine
    started at the phase its anchor asks for and its noise read from the stream's sequence.

    Everything between the mel and the waveform stays on the model's device: the F0 (computed
    once, then given to HiFT), each window's starting phase from it, and the source noise
    (:class:`SourceNoise`); the host waits once, for the waveforms and F0 at the end."""
    hift = s3gen.mel2wav
    device = s3gen.device
    count = len(windows)
    if bucket:  # padded rows repeat the last window; their output is dropped
        extra = _row_bucket(count) - count
        windows, mels = [*windows, *[windows[-1]] * extra], [*mels, *[mels[-1]] * extra]
    lengths = torch.tensor([w.frames for w in windows])
    frames = int(lengths.max())
    if bucket:
        frames = _round_up(frames, VOCODER_FRAME_BUCKET)
        if s3gen.warm_shapes is not None:
            s3gen.warm_shapes.note("vocoder", (len(windows), frames))
    harmonics = hift.num_harmonics
    mel = torch.zeros(len(windows), MEL_CHANNELS, frames, device=device)
    for i, (w, m) in enumerate(zip(windows, mels)):
        mel[i, :, : w.frames] = m.to(device, torch.float32)
    noise = torch.zeros(len(windows), harmonics, frames * MEL_HOP, device=device)
    for i, w in enumerate(windows[:count]):
        w.noise.fill(noise[i, :, : w.frames * MEL_HOP], w.mel_start * MEL_HOP)
    noise[count:] = noise[count - 1]  # the padded rows repeat the last window
    upto = torch.tensor([min(w.anchor_frame - w.mel_start, w.frames) for w in windows])
    anchors = torch.stack([w.anchor_cycles for w in windows])
    base = torch.stack([w.phases[:, 0] for w in windows])
    inputs = (
        mel,
        lengths.to(device, non_blocking=True),
        noise,
        upto.to(device, non_blocking=True),
        anchors.to(device, torch.float64, True),
        base.to(device, torch.float64, True),
    )
    graphs = s3gen.anchored_hift_graphs
    if graphs is not None:
        wav, f0, start = graphs.run(*inputs)
    else:
        wav, f0, start = anchored_hift(hift, *inputs)
    wav = wav.cpu()
    f0_host = f0.to("cpu", torch.float64)
    cycles = start.cpu()
    sizes = lengths.tolist()
    return [
        WindowResult(
            w.stream_id,
            w.index,
            m,
            f0_host[i, :n].clone(),
            cycles[i],
            wav[i, : n * MEL_HOP].clone(),
        )
        for i, (w, m, n) in enumerate(zip(windows[:count], mels[:count], sizes[:count]))
    ]


@torch.inference_mode()
def synthesize_windows(
    s3gen: S3Gen, windows: Sequence[StreamWindow], *, bucket: bool | None = None
) -> list[WindowResult]:
    """Run windows of any streams (any voices, lengths, final or not) as padded batches: one flow
    batch per distinct ``n_timesteps`` (:func:`flow_windows`) and one HiFT batch for all
    (:func:`vocode_windows`). Each result equals running its window alone (to float rounding)
    and goes back to its stream's :meth:`S3GenStream.accept`. ``bucket``: see :func:`flow_windows`."""
    mels = flow_windows(s3gen, windows, bucket=bucket)
    return vocode_windows(s3gen, windows, mels, bucket=bucket)


def stream_synthesize(
    s3gen: S3Gen,
    tokens: Sequence[int] | torch.Tensor,
    reference: S3GenReference,
    *,
    seed: int = 0,
    n_timesteps: int | None = None,
    config: StreamingConfig | None = None,
    push_sizes: Iterable[int] | None = None,
) -> list[torch.Tensor]:
    """All chunks of one utterance streamed at once (tests, benchmarks): pushes ``tokens`` in
    pieces of ``push_sizes`` (default: one token at a time) and finishes."""
    stream = S3GenStream(s3gen, reference, seed=seed, n_timesteps=n_timesteps, config=config)
    values = _as_token_list(tokens)
    sizes = iter(push_sizes) if push_sizes is not None else itertools.repeat(1)
    chunks: list[torch.Tensor] = []
    position = 0
    while position < len(values):
        size = max(1, next(sizes, len(values) - position))
        chunks.extend(stream.push(values[position : position + size]))
        position += size
    chunks.extend(stream.finish())
    return chunks


__all__ = [
    "NOISE_BLOCK_SAMPLES",
    "S3GenStream",
    "SourceNoise",
    "StreamStateError",
    "StreamWindow",
    "StreamingConfig",
    "WindowResult",
    "flow_windows",
    "prepare_stream_graphs",
    "prepare_stream_kernels",
    "stream_flow_shapes",
    "stream_kernel_shapes",
    "stream_source_noise",
    "stream_synthesize",
    "synthesize_windows",
    "vocode_windows",
]
