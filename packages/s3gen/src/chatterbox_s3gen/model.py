"""S3Gen: S3 speech tokens + a voice reference -> 24 kHz waveform, batched."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from chatterbox_s3gen.audio import (
    S3GenMelSpectrogram,
    as_mono_waveform,
    check_sample_rate,
    resample,
)
from chatterbox_s3gen.checkpoint import load_checkpoint_file, load_into, resolve_checkpoint
from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import (
    MEL_CHANNELS,
    S3_TOKENIZER_SAMPLE_RATE,
    S3GEN_SAMPLE_RATE,
    SPEECH_VOCAB_SIZE,
    TOKEN_MEL_RATIO,
    TRIM_SAMPLES,
)
from chatterbox_s3gen.errors import S3GenInputError, S3GenInputTypeError
from chatterbox_s3gen.flow import CausalMaskedDiffWithXvec, EulerGraphs, GraphPreparation
from chatterbox_s3gen.graphs import ShapeGraphs
from chatterbox_s3gen.hift import HiFTGenerator
from chatterbox_s3gen.reference import S3GenReference
from chatterbox_s3gen.speaker_encoder import MIN_SPEAKER_SAMPLES, CAMPPlus
from chatterbox_s3gen.tokenizer import MIN_TOKENIZER_SAMPLES, S3SpeechTokenizer
from chatterbox_s3gen.vocoders import Vocoder, VocoderContext, accepts_seeds, get_vocoder

logger = logging.getLogger(__name__)

DEFAULT_NOISE_SEED = 0
"""Seed of the CFM initial noise when ``from_checkpoint`` gets no ``noise_seed``."""
MIN_REFERENCE_SECONDS = 0.05
"""Shortest reference ``embed_ref`` accepts (the speaker encoder needs three 25 ms fbank frames)."""
LONG_REFERENCE_SECONDS = 10.0
"""References longer than this are used whole but logged (chatterbox trims them to 10 s)."""
PADDING_SPLIT = 0.25
"""GPU batching: an item shorter than (1 - this) x the batch's longest starts a new batch..."""
MIN_SPLIT_BATCH = 8
"""...once the batch holds this many items (smaller batches leave the GPU idle instead)."""


def _trim_fade() -> torch.Tensor:
    """Silence the first 20 ms, raised-cosine fade-in over the next 20 ms."""
    fade = torch.zeros(2 * TRIM_SAMPLES)
    fade[TRIM_SAMPLES:] = (torch.cos(torch.linspace(torch.pi, 0, TRIM_SAMPLES)) + 1) / 2
    return fade


def _as_token_tensor(tokens: object, index: int) -> torch.Tensor:
    if isinstance(tokens, str | bytes):
        raise S3GenInputTypeError(
            f"token_sequences[{index}] must be a sequence of ints, got {type(tokens).__name__}"
        )
    if isinstance(tokens, torch.Tensor):
        if (
            tokens.dim() != 1
            or tokens.is_floating_point()
            or tokens.is_complex()
            or tokens.dtype == torch.bool
        ):
            raise S3GenInputError(
                f"token_sequences[{index}] must be a 1-D integer tensor, got shape {tuple(tokens.shape)} "
                f"dtype {tokens.dtype}"
            )
        ids = tokens.detach().to("cpu", torch.int64)
    else:
        try:
            values = list(tokens)  # type: ignore[call-overload]
        except TypeError:
            raise S3GenInputTypeError(
                f"token_sequences[{index}] must be a sequence of ints, got {type(tokens).__name__}"
            ) from None
        if not all(hasattr(v, "__index__") and not isinstance(v, bool) for v in values):
            raise S3GenInputTypeError(f"token_sequences[{index}] must contain ints")
        ids = torch.tensor([v.__index__() for v in values], dtype=torch.int64)
    if ids.numel() == 0:
        raise S3GenInputError(
            f"token_sequences[{index}] is empty; S3Gen needs at least one speech token"
        )
    bad = ids[(ids < 0) | (ids >= SPEECH_VOCAB_SIZE)]
    if bad.numel():
        raise S3GenInputError(
            f"token_sequences[{index}] has {bad.numel()} id(s) outside [0, {SPEECH_VOCAB_SIZE}), e.g. "
            f"{bad[:5].tolist()}; drop start/stop and other control tokens first"
        )
    return ids


@dataclass
class WarmShapes:
    """Batch shapes ``(rows, tokens)`` of the flow encoder and ``(rows, frames)`` of HiFT that
    streamed windows have run since start-up's warm-up. Those two run eagerly (only the CFM
    loop replays graphs), and on a GPU the first batch of each new shape pays cuDNN's plan
    selection and the allocator's growth for every conv: a stall of up to about a second in the
    middle of serving. :attr:`cold_after_warmup` counts the shapes met while serving that the
    warm-up had not run (each one such first batch)."""

    encoder: set[tuple[int, int]] = field(default_factory=set)
    vocoder: set[tuple[int, int]] = field(default_factory=set)
    cold_after_warmup: int = 0

    def note(self, part: str, shape: tuple[int, int]) -> None:
        seen = self.encoder if part == "encoder" else self.vocoder
        if shape not in seen:
            seen.add(shape)
            self.cold_after_warmup += 1


class S3Gen(nn.Module):
    """Chatterbox's token-to-waveform decoder (flow matching + HiFT).

    Build it with :meth:`from_checkpoint`. Attribute names (``tokenizer``, ``speaker_encoder``,
    ``flow``, ``mel2wav``) are the checkpoint's top-level key prefixes."""

    def __init__(self, config: S3GenConfig | None = None) -> None:
        super().__init__()
        self.config = config or S3GenConfig()
        self.tokenizer = S3SpeechTokenizer(self.config)
        self.speaker_encoder = CAMPPlus(self.config)
        self.flow = CausalMaskedDiffWithXvec(self.config)
        self.mel2wav = HiFTGenerator(self.config)
        self.mel_extractor = S3GenMelSpectrogram()
        self.trim_fade: torch.Tensor
        self.register_buffer("trim_fade", _trim_fade(), persistent=False)
        self._vocoder: Vocoder | None = None
        self._vocoder_takes_seeds = False
        self._checkpoint_dir: Path | None = None
        self.warm_shapes: WarmShapes | None = None
        self.anchored_hift_graphs: ShapeGraphs | None = None
        """Streamed windows' anchored HiFT captured at a streaming server's fixed shapes
        (:func:`chatterbox_s3gen.streaming.prepare_stream_kernels`); None: always eager."""
        """Set by a streaming server's warm-up (see :class:`WarmShapes`); None: not counted."""
        self.eval()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        vocoder_dtype: torch.dtype = torch.float32,
        vocoder: str | Vocoder = "hift-torch",
        vocoder_options: dict[str, Any] | None = None,
        noise_seed: torch.Generator | int | None = None,
        cuda_graphs: bool = True,
    ) -> S3Gen:
        """Load a checkpoint directory (``s3gen.safetensors`` or ``s3gen.pt`` [+ ``s3gen_config.json``])
        strictly:
        a missing, unexpected or mis-shaped tensor raises :class:`~chatterbox_s3gen.checkpoint.CheckpointError`
        naming it (``tokenizer._mel_filters``/``tokenizer.window`` may be absent: they are derived).

        ``dtype`` is the precision of the flow (encoder + CFM estimator; the Euler state stays
        float32) and ``vocoder_dtype`` that of HiFT's convolutions (its sine source, STFT and
        inverse STFT always run in float32); the tokenizer and speaker encoder always run in
        float32. ``noise_seed`` (a ``torch.Generator`` or an int; default
        :data:`DEFAULT_NOISE_SEED`) draws the fixed CFM initial noise ``randn(1, 80, 15000)``,
        see :attr:`flow_noise`. ``vocoder`` is a registered name (see
        :func:`~chatterbox_s3gen.available_vocoders`) or a vocoder object. ``cuda_graphs``: on a
        CUDA device, replay the 10 (``n_timesteps``) Euler steps of each batch shape from a
        captured CUDA graph (see :meth:`set_cuda_graphs`; no effect on CPU)."""
        for name, value in (("dtype", dtype), ("vocoder_dtype", vocoder_dtype)):
            if value not in (torch.float32, torch.bfloat16, torch.float16):
                raise S3GenInputError(
                    f"{name} must be torch.float32, torch.bfloat16 or torch.float16, got {value}"
                )
        device = _usable_device(device)  # before reading the weights (1 GB for the real model)
        if noise_seed is not None:
            _check_noise_seed(noise_seed)
        weights, config = resolve_checkpoint(path)
        with torch.random.fork_rng(devices=[]):  # construction must not disturb the caller's RNG
            model = cls(config)
        load_into(model, load_checkpoint_file(weights), str(weights))
        model.mel2wav.fold_weight_norm()
        model._checkpoint_dir = weights.parent
        model.set_flow_noise_seed(DEFAULT_NOISE_SEED if noise_seed is None else noise_seed)
        model.to(device)
        model._cast_parameters(model.flow, dtype)
        model._cast_parameters(model.mel2wav, vocoder_dtype)
        model.set_vocoder(vocoder, **(vocoder_options or {}))
        model.set_cuda_graphs(cuda_graphs)
        logger.info(
            "loaded S3Gen (%s) from %s on %s, flow %s, vocoder %s",
            config.name,
            weights,
            device,
            dtype,
            type(model.vocoder).__name__,
        )
        return model

    @staticmethod
    def _cast_parameters(module: nn.Module, dtype: torch.dtype) -> None:
        # Parameters only: buffers such as the CFM noise stay float32.
        for parameter in module.parameters():
            parameter.data = parameter.data.to(dtype)

    # -- properties ---------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return S3GEN_SAMPLE_RATE

    @property
    def device(self) -> torch.device:
        return self.trim_fade.device

    @property
    def dtype(self) -> torch.dtype:
        """Precision of the flow (see :meth:`from_checkpoint`)."""
        return self.flow.input_embedding.weight.dtype

    @property
    def flow_noise(self) -> torch.Tensor:
        """The fixed CFM initial noise ``[1, 80, frames]`` (float32). Item ``i`` of every call
        starts from ``flow_noise[:, :, :total_frames_i]``, as the reference does with its
        ``rand_noise``; set it to reproduce a given reference instance."""
        return self.flow.decoder.noise

    @flow_noise.setter
    def flow_noise(self, noise: torch.Tensor) -> None:
        if (
            not isinstance(noise, torch.Tensor)
            or noise.dim() != 3
            or noise.shape[:2] != (1, MEL_CHANNELS)
        ):
            shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise S3GenInputError(
                f"flow_noise must be a [1, {MEL_CHANNELS}, frames] tensor, got {shape}"
            )
        if (
            noise.shape[2] < 2
            or not noise.is_floating_point()
            or not bool(torch.isfinite(noise).all())
        ):
            raise S3GenInputError("flow_noise must be finite floats with at least 2 frames")
        self.flow.decoder.noise = noise.detach().to(self.device, torch.float32).clone()

    def set_flow_noise_seed(self, seed: torch.Generator | int) -> None:
        """Redraw :attr:`flow_noise` as ``randn(1, 80, config.flow_noise_frames)`` from ``seed``."""
        _check_noise_seed(seed)
        generator = (
            seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        )
        if generator.device.type != "cpu":
            raise S3GenInputError(
                "noise_seed must be a CPU torch.Generator (the noise is drawn on CPU)"
            )
        self.flow_noise = torch.randn(
            (1, MEL_CHANNELS, self.config.flow_noise_frames), generator=generator
        )

    def set_cuda_graphs(self, enabled: bool, max_graphs: int = 32) -> None:
        """Capture and replay the CFM Euler loop as CUDA graphs on CUDA devices.

        Each batch is padded to a bucket of rows (1, 2, 4, 8, then multiples of 8) and frames
        (multiples of 64, of 128 past 1024; see :func:`chatterbox_s3gen.flow.frame_bucket`); the
        first batch of a bucket captures its graph (one eager warm-up solve, then the capture),
        later ones replay it, removing the CPU cost of ~15,000 kernel launches per batch. Padded rows and frames
        are masked, so results equal eager runs up to float rounding of the GPU kernels. CPU runs
        never use graphs."""
        self.flow.decoder.graphs = EulerGraphs(max_graphs) if enabled else None

    @torch.inference_mode()
    def prepare_graphs(
        self, shapes: Sequence[tuple[int, int]], n_timesteps: int | None = None
    ) -> GraphPreparation:
        """Start-up work: capture the Euler loop of every ``(rows, frames)`` flow shape in
        ``shapes`` (a streaming server's: :func:`chatterbox_s3gen.streaming.prepare_stream_graphs`),
        then seal the set: from now on a batch runs on the smallest prepared shape that holds it,
        and one that none holds (a whole-utterance window, :meth:`synthesize`) runs eagerly;
        nothing is captured while serving (see :meth:`graph_stats`). Turns CUDA graphs on if they
        were off. On a CPU the same bookkeeping runs without capture (static buffers, eager
        solves). ``n_timesteps``: default :attr:`flow_steps`."""
        shapes = list(shapes)
        n_timesteps = self.steps(n_timesteps)
        capture = self.device.type == "cuda"
        graphs = self.flow.decoder.graphs
        if graphs is None or graphs.capture != capture:
            graphs = EulerGraphs(len(shapes), capture=capture)
            self.flow.decoder.graphs = graphs
        begin = time.perf_counter()
        captures = graphs.prepare(self.flow.decoder, shapes, n_timesteps)
        if capture:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - begin
        logger.info(
            "S3Gen: %d flow shapes (%d captured) in %.1f s; sealed%s",
            len(shapes),
            captures,
            seconds,
            f"; {torch.cuda.memory_allocated(self.device) / 2**30:.2f} GiB allocated on "
            f"{self.device}"
            if capture
            else "",
        )
        return GraphPreparation(tuple(shapes), n_timesteps, captures, seconds)

    def graph_stats(self) -> dict[str, int | bool]:
        """Start-up preparation counters: ``graphs`` held, ``captures`` so far, ``sealed``,
        ``eager_after_seal`` (batches no prepared shape held), ``captures_after_seal``
        (re-captures after new weights or noise; 0 while serving) and ``cold_shapes_after_seal``
        (eager encoder/HiFT shapes the warm-up had not run, see :class:`WarmShapes`) and
        ``kernel_graphs`` (encoder and HiFT shapes prepared for streamed windows: CUDA graphs on
        a GPU, see :func:`chatterbox_s3gen.streaming.prepare_stream_kernels`)."""
        graphs = self.flow.decoder.graphs
        stats: dict[str, int | bool] = (
            graphs.stats()
            if graphs is not None
            else {
                "graphs": 0,
                "captures": 0,
                "sealed": False,
                "eager_after_seal": 0,
                "captures_after_seal": 0,
            }
        )
        warm = self.warm_shapes
        stats["cold_shapes_after_seal"] = warm.cold_after_warmup if warm is not None else 0
        stats["kernel_graphs"] = sum(
            len(part) for part in (self.flow.encoder_graphs, self.anchored_hift_graphs) if part
        )
        return stats

    @property
    def cuda_graphs(self) -> bool:
        return self.flow.decoder.graphs is not None

    @property
    def flow_steps(self) -> int:
        """Euler steps when a call gives none: 10 for the standard decoder, 2 for the meanflow
        decoder (``config.meanflow``, Chatterbox Turbo's ``s3gen_meanflow.safetensors``)."""
        return self.config.flow_steps

    def steps(self, n_timesteps: int | None) -> int:
        """``n_timesteps`` checked (a positive int), or :attr:`flow_steps` for ``None``."""
        if n_timesteps is None:
            return self.flow_steps
        if isinstance(n_timesteps, bool) or not isinstance(n_timesteps, int) or n_timesteps < 1:
            raise S3GenInputError(f"n_timesteps must be a positive int, got {n_timesteps!r}")
        return n_timesteps

    @property
    def max_frames(self) -> int:
        """Longest prompt + generated mel (frames) the fixed noise covers (15000 = 300 s)."""
        return int(self.flow_noise.shape[2])

    @property
    def vocoder(self) -> Vocoder:
        """The mel -> waveform backend (default ``hift-torch``); assign any :class:`Vocoder`."""
        if self._vocoder is None:
            self.set_vocoder("hift-torch")
        assert self._vocoder is not None
        return self._vocoder

    @vocoder.setter
    def vocoder(self, vocoder: Vocoder) -> None:
        self.set_vocoder(vocoder)

    def set_vocoder(self, vocoder: str | Vocoder, **options: Any) -> None:
        """Use a registered vocoder by name (``options`` go to its factory) or a vocoder object."""
        if isinstance(vocoder, str):
            vocoder = self.make_vocoder(vocoder, **options)
        elif options:
            raise S3GenInputTypeError(
                "vocoder options apply to a vocoder name, not to a vocoder object"
            )
        for attribute in ("sample_rate", "hop_length", "vocode"):
            if not hasattr(vocoder, attribute):
                raise S3GenInputTypeError(
                    f"{type(vocoder).__name__} is not a vocoder: it lacks `{attribute}`"
                )
        self._vocoder = vocoder
        self._vocoder_takes_seeds = accepts_seeds(vocoder)

    def make_vocoder(self, name: str, **options: Any) -> Vocoder:
        """A registered vocoder built for this model (it receives the loaded HiFT weights)."""
        context = VocoderContext(
            hift=self.mel2wav, checkpoint_dir=self._checkpoint_dir, device=self.device
        )
        return get_vocoder(name, context, **options)

    # -- conditioning ---------------------------------------------------------------------------
    @torch.inference_mode()
    def tokenize(self, wav_16k: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """S3 speech tokens (int64 ``[T]``, on :attr:`device`) of 16 kHz mono audio. ``max_len``
        keeps at most that many tokens (chatterbox's T3 prompt uses 150)."""
        if max_len is not None and (
            isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1
        ):
            raise S3GenInputError(f"max_len must be a positive int or None, got {max_len!r}")
        wav = as_mono_waveform(wav_16k, "wav_16k")
        if wav.numel() < MIN_TOKENIZER_SAMPLES:
            raise S3GenInputError(
                f"wav_16k has {wav.numel()} samples; the tokenizer needs at least {MIN_TOKENIZER_SAMPLES} "
                f"({MIN_TOKENIZER_SAMPLES / S3_TOKENIZER_SAMPLE_RATE * 1000:.1f} ms at 16 kHz)"
            )
        if max_len is None and wav.numel() > self.tokenizer.max_samples():
            raise S3GenInputError(
                f"wav_16k is {wav.numel() / S3_TOKENIZER_SAMPLE_RATE:.1f} s; the tokenizer handles at most "
                f"{self.tokenizer.max_samples() / S3_TOKENIZER_SAMPLE_RATE:.1f} s (pass max_len or trim)"
            )
        return self.tokenizer.tokenize(wav.to(self.device), max_len=max_len)

    @torch.inference_mode()
    def embed_ref(self, wav: torch.Tensor, sample_rate: int) -> S3GenReference:
        """Voice conditioning from a reference recording (any sample rate: it is resampled to
        24 kHz for the prompt mel and to 16 kHz for the tokens and the x-vector). Mono 1-D or
        ``(channels, samples)`` audio (averaged to mono); see :func:`chatterbox_s3gen.audio.as_mono_waveform`
        for what is rejected."""
        sample_rate = check_sample_rate(sample_rate)
        wav = as_mono_waveform(wav, "wav")
        seconds = wav.numel() / sample_rate
        if seconds < MIN_REFERENCE_SECONDS:
            raise S3GenInputError(
                f"reference is {seconds * 1000:.1f} ms long; embed_ref needs at least "
                f"{MIN_REFERENCE_SECONDS * 1000:.0f} ms"
            )
        if seconds > LONG_REFERENCE_SECONDS:
            logger.warning(
                "reference is %.1f s long; chatterbox uses at most %.0f s (longer prompts slow every "
                "synthesis and were not seen in training)",
                seconds,
                LONG_REFERENCE_SECONDS,
            )
        wav = wav.to(self.device).unsqueeze(0)
        wav_24k = resample(wav, sample_rate, S3GEN_SAMPLE_RATE)
        wav_16k = resample(wav, sample_rate, S3_TOKENIZER_SAMPLE_RATE)[0]
        if wav_16k.numel() < max(MIN_SPEAKER_SAMPLES, MIN_TOKENIZER_SAMPLES):
            raise S3GenInputError(
                f"reference is too short after resampling ({wav_16k.numel()} samples at 16 kHz)"
            )
        if wav_16k.numel() > self.tokenizer.max_samples():
            raise S3GenInputError(
                f"reference is {seconds:.1f} s; the tokenizer handles at most "
                f"{self.tokenizer.max_samples() / S3_TOKENIZER_SAMPLE_RATE:.0f} s"
            )
        prompt_mel = self.mel_extractor(wav_24k)[0].transpose(0, 1)  # [frames, 80]
        speaker_embedding = self.speaker_encoder.embed(wav_16k)
        tokens = self.tokenizer.tokenize(wav_16k)
        if prompt_mel.shape[0] != TOKEN_MEL_RATIO * tokens.numel():
            # As the reference: the 16 kHz token count can exceed mel/2 for lengths that are not a
            # multiple of 40 ms; drop the extra tokens (the mel keeps an odd frame if it has one).
            tokens = tokens[: prompt_mel.shape[0] // TOKEN_MEL_RATIO]
        return S3GenReference(tokens.clone(), prompt_mel.clone(), speaker_embedding.clone())

    # -- synthesis --------------------------------------------------------------------------------
    def _check_batch(
        self,
        token_sequences: Sequence[Sequence[int]],
        references: Sequence[S3GenReference],
        n_timesteps: int,
        batch_size: int | None,
    ) -> list[torch.Tensor]:
        """Checks every argument; ``n_timesteps`` was resolved by :meth:`steps`."""
        if isinstance(token_sequences, str | bytes | torch.Tensor) or not isinstance(
            token_sequences, Sequence
        ):
            raise S3GenInputTypeError(
                "token_sequences must be a sequence of token sequences (one per utterance)"
            )
        if isinstance(references, S3GenReference) or not isinstance(references, Sequence):
            raise S3GenInputTypeError(
                "references must be a sequence of S3GenReference (one per token sequence)"
            )
        if len(token_sequences) != len(references):
            raise S3GenInputError(
                f"got {len(token_sequences)} token sequences but {len(references)} references; they pair up by index"
            )
        for i, ref in enumerate(references):
            if not isinstance(ref, S3GenReference):
                raise S3GenInputTypeError(
                    f"references[{i}] must be an S3GenReference (from embed_ref), got {type(ref).__name__}"
                )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise S3GenInputError(f"batch_size must be a positive int or None, got {batch_size!r}")
        tokens = [_as_token_tensor(seq, i) for i, seq in enumerate(token_sequences)]
        for i, (ids, ref) in enumerate(zip(tokens, references)):
            frames = TOKEN_MEL_RATIO * (ids.numel() + ref.num_prompt_tokens)
            if frames > self.max_frames:
                raise S3GenInputError(
                    f"item {i}: prompt + tokens make {frames} mel frames ({frames / 50:.0f} s); the CFM "
                    f"noise covers at most {self.max_frames} frames"
                )
        return tokens

    def _batches(
        self,
        tokens: list[torch.Tensor],
        references: Sequence[S3GenReference],
        batch_size: int | None,
    ) -> list[list[int]]:
        # Longest first, similar lengths together: less padding per batch.
        frames = [tokens[i].numel() + references[i].num_prompt_tokens for i in range(len(tokens))]
        order = sorted(range(len(tokens)), key=lambda i: frames[i], reverse=True)
        size = batch_size or max(len(order), 1)
        if self.device.type == "cpu":
            # CPU batches keep exactly the historical grouping (results stay bit-identical).
            return [order[i : i + size] for i in range(0, len(order), size)]
        # GPU: also start a new batch where an item would be padded by more than
        # PADDING_SPLIT of the batch's longest item, once the batch is big enough to keep the
        # GPU busy (a padded frame costs as much as a real one).
        batches: list[list[int]] = []
        for i in order:
            current = batches[-1] if batches else None
            if (
                current is None
                or len(current) >= size
                or (
                    len(current) >= MIN_SPLIT_BATCH
                    and frames[i] < (1.0 - PADDING_SPLIT) * frames[current[0]]
                )
            ):
                batches.append([i])
            else:
                current.append(i)
        return batches

    def _flow_batch(
        self, tokens: list[torch.Tensor], references: Sequence[S3GenReference], n_timesteps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch through the flow; lengths stay on the host so nothing waits on the GPU."""
        device = self.device
        batch = len(tokens)
        full = [
            torch.cat([ref.prompt_tokens.to("cpu"), ids]) for ids, ref in zip(tokens, references)
        ]
        token_lengths = torch.tensor([t.numel() for t in full])
        padded_tokens = torch.zeros(batch, int(token_lengths.max()), dtype=torch.int64)
        for i, t in enumerate(full):
            padded_tokens[i, : t.numel()] = t
        prompt_lengths = torch.tensor([ref.num_prompt_frames for ref in references])
        prompt_mel = torch.zeros(batch, int(prompt_lengths.max()), MEL_CHANNELS, device=device)
        for i, ref in enumerate(references):
            prompt_mel[i, : ref.num_prompt_frames] = ref.prompt_mel.to(device, torch.float32)
        speakers = torch.stack(
            [ref.speaker_embedding.to(device, torch.float32) for ref in references]
        )
        return self.flow.inference(
            padded_tokens.to(device),
            token_lengths,
            prompt_mel,
            prompt_lengths,
            speakers,
            n_timesteps,
        )

    @torch.inference_mode()
    def synthesize_mels(
        self,
        token_sequences: Sequence[Sequence[int]],
        references: Sequence[S3GenReference],
        *,
        n_timesteps: int | None = None,
        batch_size: int | None = None,
    ) -> list[torch.Tensor]:
        """The flow alone: one float32 log-mel ``[80, frames]`` per item (on :attr:`device`),
        ``frames = 2 * len(tokens)`` (one less when the prompt mel has an odd frame count)."""
        n_timesteps = self.steps(n_timesteps)
        tokens = self._check_batch(token_sequences, references, n_timesteps, batch_size)
        out: list[torch.Tensor] = [torch.empty(0)] * len(tokens)
        for chunk in self._progress(self._batches(tokens, references, batch_size), "flow"):
            mels, lengths = self._flow_batch(
                [tokens[i] for i in chunk], [references[i] for i in chunk], n_timesteps
            )
            for row, i in enumerate(chunk):
                out[i] = mels[row, :, : int(lengths[row])].clone()
        return out

    @torch.inference_mode()
    def synthesize(
        self,
        token_sequences: Sequence[Sequence[int]],
        references: Sequence[S3GenReference],
        *,
        n_timesteps: int | None = None,
        seeds: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> list[torch.Tensor]:
        """Waveforms (1-D float32 CPU tensors at :attr:`sample_rate`) for many utterances at once.

        ``token_sequences[i]`` (ids in ``[0, 6561)``) is spoken in the voice of ``references[i]``.
        All items of a batch run through the encoder, every Euler step (guided and unguided rows
        together) and the vocoder as one padded, masked batch; each item's result equals its
        unbatched run. ``batch_size`` caps the items per batch (default: all). ``seeds[i]`` seeds
        item ``i``'s vocoder noise exactly like ``torch.manual_seed(seeds[i])`` before the
        reference's ``inference``; default: drawn from torch's global RNG. The first 20 ms are
        silenced and the next 20 ms faded in, as in the reference. ``n_timesteps``: Euler steps,
        default :attr:`flow_steps` (10 standard, 2 meanflow)."""
        n_timesteps = self.steps(n_timesteps)
        tokens = self._check_batch(token_sequences, references, n_timesteps, batch_size)
        seeds = self._check_seeds(seeds, len(tokens))
        out: list[torch.Tensor] = [torch.empty(0)] * len(tokens)
        for chunk in self._progress(self._batches(tokens, references, batch_size), "synthesize"):
            mels, lengths = self._flow_batch(
                [tokens[i] for i in chunk], [references[i] for i in chunk], n_timesteps
            )
            wavs = self._vocode_batch(mels, lengths, [seeds[i] for i in chunk])
            for row, i in enumerate(chunk):
                out[i] = wavs[row]
        return out

    @torch.inference_mode()
    def vocode(
        self, mels: Sequence[torch.Tensor], *, seeds: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """The second half of :meth:`synthesize`: mels ``[80, frames]`` (e.g. from
        :meth:`synthesize_mels`) -> faded-in waveforms, all items as one padded vocoder batch."""
        if isinstance(mels, torch.Tensor) or not isinstance(mels, Sequence) or not mels:
            raise S3GenInputTypeError("mels must be a non-empty sequence of [80, frames] tensors")
        for i, mel in enumerate(mels):
            if (
                not isinstance(mel, torch.Tensor)
                or mel.dim() != 2
                or mel.shape[0] != MEL_CHANNELS
                or mel.shape[1] < 1
            ):
                shape = tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__
                raise S3GenInputError(
                    f"mels[{i}] must be a [{MEL_CHANNELS}, frames] tensor with frames >= 1, got {shape}"
                )
        seeds = self._check_seeds(seeds, len(mels))
        lengths = torch.tensor([mel.shape[1] for mel in mels])
        padded = torch.zeros(len(mels), MEL_CHANNELS, int(lengths.max()), device=self.device)
        for i, mel in enumerate(mels):
            padded[i, :, : mel.shape[1]] = mel.to(self.device, torch.float32)
        return self._vocode_batch(padded, lengths, seeds)

    @staticmethod
    def _check_seeds(seeds: Sequence[int] | None, count: int) -> list[int]:
        if seeds is None:
            return [int(s) for s in torch.randint(0, 2**62, (count,)).tolist()]
        if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence) or len(seeds) != count:
            raise S3GenInputError(f"seeds must hold one int per utterance ({count})")
        if not all(hasattr(s, "__index__") and not isinstance(s, bool) for s in seeds):
            raise S3GenInputTypeError("seeds must be ints")
        return [s.__index__() for s in seeds]

    def _vocode_batch(
        self, mels: torch.Tensor, lengths: torch.Tensor, seeds: list[int]
    ) -> list[torch.Tensor]:
        return [self._fade_in(wav) for wav in self._vocode_unfaded(mels, lengths, seeds)]

    def _vocode_unfaded(
        self, mels: torch.Tensor, lengths: torch.Tensor, seeds: list[int]
    ) -> list[torch.Tensor]:
        """:attr:`vocoder` on a padded batch -> float32 CPU waveforms, before the fade-in (whole
        streamed windows use this and fade as a stream does: the same samples)."""
        vocoder = self.vocoder
        if self._vocoder_takes_seeds:
            wavs = vocoder.vocode(mels, lengths, seeds=seeds)  # type: ignore[call-arg]
        else:
            wavs = vocoder.vocode(mels, lengths)
        wavs = [wav.detach() for wav in wavs]
        if wavs and wavs[0].device.type != "cpu":
            # One device-to-host copy for the whole batch instead of one (and one sync) per item.
            sizes = [wav.numel() for wav in wavs]
            flat = torch.cat([wav.reshape(-1).float() for wav in wavs]).cpu()
            wavs = list(flat.split(sizes))
        return [wav.to("cpu", torch.float32) for wav in wavs]

    def _fade_in(self, wav: torch.Tensor) -> torch.Tensor:
        fade = self.trim_fade.to("cpu")[: wav.numel()]
        wav = wav.clone()
        wav[: fade.numel()] *= fade
        return wav

    @staticmethod
    def _progress(chunks: list[list[int]], what: str) -> list[list[int]] | tqdm:
        if len(chunks) <= 1:
            return chunks
        return tqdm(chunks, desc=f"S3Gen {what}", unit="batch", leave=False)


__all__ = ["DEFAULT_NOISE_SEED", "MIN_REFERENCE_SECONDS", "S3Gen"]


def _check_noise_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, torch.Generator | int):
        raise S3GenInputTypeError(
            f"noise_seed must be an int or a CPU torch.Generator, got {type(seed).__name__} "
            f"{seed!r}"
        )


def _usable_device(device: object) -> torch.device:
    """``device`` as a ``torch.device`` this machine has: torch's own errors come only once the
    weights are read (a bare RuntimeError, "Found no NVIDIA driver on your system")."""
    try:
        parsed = torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError):
        raise S3GenInputError(
            f"device must be a torch.device or a name such as 'cpu', 'cuda' or 'cuda:1', got "
            f"{device!r}"
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise S3GenInputError(
                f"device={str(parsed)!r}, but torch sees no CUDA GPU on this machine (no driver, "
                "no visible GPU, or a CPU-only torch build); use device='cpu'"
            )
        if parsed.index is not None and parsed.index >= count:
            raise S3GenInputError(
                f"device={str(parsed)!r}, but torch sees {count} CUDA GPU(s) here (cuda:0 to "
                f"cuda:{count - 1})"
            )
    return parsed
