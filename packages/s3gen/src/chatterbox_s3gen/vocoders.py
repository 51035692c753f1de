"""Mel -> waveform backends behind one small protocol, selectable by name.

Built in: ``hift-torch`` (S3Gen's own HiFT in PyTorch), ``hift-onnx`` (the same generator
exported with :func:`chatterbox_s3gen.onnx_export.export_onnx`, run by ONNX Runtime) and
``griffin-lim`` (no weights: pseudo-inverse mel + Griffin-Lim phase recovery; a quality-agnostic
fallback). Other packages add backends through the entry-point group
``chatterbox_s3gen.vocoders`` (``name = "module:factory"``) or :func:`register_vocoder`.

A factory is called as ``factory(context, **options)`` and returns an object with
``sample_rate``, ``hop_length`` and ``vocode(mels, mel_lengths)``. Vocoders whose ``vocode``
also takes a keyword ``seeds`` (one int per item) are given S3Gen's per-item seeds."""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torchaudio

from chatterbox_s3gen.checkpoint import load_hift
from chatterbox_s3gen.constants import MEL_CHANNELS, MEL_FMAX, MEL_HOP, MEL_N_FFT, S3GEN_SAMPLE_RATE
from chatterbox_s3gen.errors import MissingCheckpointFileError, S3GenInputError, S3GenInputTypeError
from chatterbox_s3gen.hift import HiFTGenerator, draw_source_noise

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "chatterbox_s3gen.vocoders"


@runtime_checkable
class Vocoder(Protocol):
    """Structurally identical to ``chatterbox_vllm.interfaces.Vocoder``."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def hop_length(self) -> int: ...

    def vocode(self, mels: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class VocoderContext:
    """What S3Gen hands a vocoder factory: its loaded HiFT generator (or None when a vocoder is
    built stand-alone), the checkpoint directory it was loaded from, and its device."""

    hift: HiFTGenerator | None = None
    checkpoint_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


VocoderFactory = Callable[..., Vocoder]


def _check_mels(mels: torch.Tensor, mel_lengths: torch.Tensor) -> list[int]:
    if not isinstance(mels, torch.Tensor) or mels.dim() != 3 or mels.shape[1] != MEL_CHANNELS:
        shape = tuple(mels.shape) if isinstance(mels, torch.Tensor) else type(mels).__name__
        raise S3GenInputError(f"mels must be a [batch, {MEL_CHANNELS}, frames] tensor, got {shape}")
    lengths = [int(v) for v in torch.as_tensor(mel_lengths).reshape(-1).tolist()]
    if len(lengths) != mels.shape[0]:
        raise S3GenInputError(
            f"mel_lengths has {len(lengths)} entries for a batch of {mels.shape[0]} mels"
        )
    bad = [n for n in lengths if not 1 <= n <= mels.shape[2]]
    if bad:
        raise S3GenInputError(
            f"mel_lengths must lie in [1, {mels.shape[2]}] (the padded frame count), got {bad}"
        )
    return lengths


def _default_seeds(count: int) -> list[int]:
    # Drawn from torch's global RNG: unseeded runs differ, torch.manual_seed makes them repeat.
    return [int(s) for s in torch.randint(0, 2**62, (count,)).tolist()]


def accepts_seeds(vocoder: object) -> bool:
    try:
        return "seeds" in inspect.signature(vocoder.vocode).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False


class HiFTTorchVocoder:
    """S3Gen's HiFT generator in PyTorch; batches are padded and masked (see :mod:`.hift`)."""

    def __init__(self, hift: HiFTGenerator) -> None:
        self.hift = hift

    @property
    def sample_rate(self) -> int:
        return S3GEN_SAMPLE_RATE

    @property
    def hop_length(self) -> int:
        return MEL_HOP

    @torch.inference_mode()
    def vocode(
        self, mels: torch.Tensor, mel_lengths: torch.Tensor, *, seeds: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        lengths = _check_mels(mels, mel_lengths)
        seeds = _default_seeds(len(lengths)) if seeds is None else list(seeds)
        if len(seeds) != len(lengths):
            raise S3GenInputError(f"got {len(seeds)} seeds for {len(lengths)} mels")
        device = next(self.hift.parameters()).device
        phases, noise = draw_source_noise(
            [n * MEL_HOP for n in lengths], seeds, self.hift.num_harmonics, device
        )
        lengths_t = torch.tensor(lengths, device=device)
        wav = self.hift(mels.to(device, torch.float32), lengths_t, phases, noise)
        return [wav[i, : n * MEL_HOP].float() for i, n in enumerate(lengths)]


class HiFTOnnxVocoder:
    """The exported HiFT graph (``hift.onnx``) on ONNX Runtime; same inputs and noise as
    :class:`HiFTTorchVocoder`, so with equal seeds both agree to float32 rounding."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise MissingCheckpointFileError(
                f"no ONNX model at {path}; create it with `chatterbox-s3gen export-onnx`"
            )
        if providers:
            chosen = list(providers)
        else:  # CUDA only where torch sees a GPU: onnxruntime-gpu lists it even without CUDA libraries
            wanted = ["CUDAExecutionProvider"] if torch.cuda.is_available() else []
            available = ort.get_available_providers()
            chosen = [p for p in [*wanted, "CPUExecutionProvider"] if p in available]
        self.session: onnxruntime.InferenceSession = ort.InferenceSession(
            str(path), providers=chosen
        )
        phases_input = next(i for i in self.session.get_inputs() if i.name == "phases")
        self.num_harmonics = int(phases_input.shape[1])

    @property
    def sample_rate(self) -> int:
        return S3GEN_SAMPLE_RATE

    @property
    def hop_length(self) -> int:
        return MEL_HOP

    def vocode(
        self, mels: torch.Tensor, mel_lengths: torch.Tensor, *, seeds: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        lengths = _check_mels(mels, mel_lengths)
        seeds = _default_seeds(len(lengths)) if seeds is None else list(seeds)
        if len(seeds) != len(lengths):
            raise S3GenInputError(f"got {len(seeds)} seeds for {len(lengths)} mels")
        frames = mels.shape[2]
        phases, noise = draw_source_noise([n * MEL_HOP for n in lengths], seeds, self.num_harmonics)
        padded_noise = torch.zeros(len(lengths), self.num_harmonics, frames * MEL_HOP)
        padded_noise[:, :, : noise.shape[2]] = noise
        (wav,) = self.session.run(
            ["wav"],
            {
                "mel": mels.detach().float().cpu().numpy(),
                "mel_lengths": torch.tensor(lengths, dtype=torch.int64).numpy(),
                "phases": phases.numpy(),
                "noise": padded_noise.numpy(),
            },
        )
        out = torch.from_numpy(wav)
        return [out[i, : n * MEL_HOP].clone() for i, n in enumerate(lengths)]


class GriffinLimVocoder:
    """No weights: least-squares inverse of the 80-bin mel, then Griffin-Lim phase recovery.
    Deterministic (zero initial phase). Intelligible but buzzy; for tests, demos and fallbacks."""

    def __init__(self, n_iter: int = 32, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=MEL_N_FFT // 2 + 1,
            n_mels=MEL_CHANNELS,
            sample_rate=S3GEN_SAMPLE_RATE,
            f_min=0.0,
            f_max=MEL_FMAX,
            norm="slaney",
            mel_scale="slaney",
        ).to(self.device)
        self.n_iter = n_iter
        self.window = torch.hann_window(MEL_N_FFT, device=self.device)

    @property
    def sample_rate(self) -> int:
        return S3GEN_SAMPLE_RATE

    @property
    def hop_length(self) -> int:
        return MEL_HOP

    @torch.inference_mode()
    def vocode(self, mels: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]:
        lengths = _check_mels(mels, mel_lengths)
        out = []
        for i, n in enumerate(lengths):
            magnitude_mel = torch.exp(mels[i, :, :n].to(self.device, torch.float32))
            spectrogram = self.inverse_mel(magnitude_mel)
            # S3Gen frame k is centred on sample 480k + 240; Griffin-Lim's (centre=True) frame j on
            # 480j. Average neighbours onto the n + 1 Griffin-Lim centres.
            edged = torch.cat([spectrogram[:, :1], spectrogram, spectrogram[:, -1:]], dim=1)
            spectrogram = 0.5 * (edged[:, :-1] + edged[:, 1:])
            wav = torchaudio.functional.griffinlim(
                spectrogram,
                self.window,
                n_fft=MEL_N_FFT,
                hop_length=MEL_HOP,
                win_length=MEL_N_FFT,
                power=1.0,
                n_iter=self.n_iter,
                momentum=0.99,
                length=n * MEL_HOP,
                rand_init=False,
            )
            out.append(torch.clamp(wav, -1.0, 1.0).float())
        return out


# -- registry ---------------------------------------------------------------------------------
def _hift_torch_factory(
    context: VocoderContext, *, checkpoint: str | Path | None = None, **options: Any
) -> Vocoder:
    if options:
        raise S3GenInputTypeError(f"hift-torch takes only `checkpoint`, got {sorted(options)}")
    if checkpoint is not None:
        return HiFTTorchVocoder(load_hift(checkpoint, device=context.device))
    if context.hift is None:
        raise S3GenInputError(
            "hift-torch needs S3Gen's HiFT weights: pass checkpoint=<s3gen checkpoint>"
        )
    return HiFTTorchVocoder(context.hift)


def _hift_onnx_factory(
    context: VocoderContext,
    *,
    path: str | Path | None = None,
    providers: Sequence[str] | None = None,
) -> Vocoder:
    if path is None:
        if context.checkpoint_dir is None:
            raise S3GenInputError(
                "hift-onnx needs path=<hift.onnx> (see `chatterbox-s3gen export-onnx`)"
            )
        path = context.checkpoint_dir / "onnx" / "hift.onnx"
    return HiFTOnnxVocoder(path, providers)


def _griffin_lim_factory(context: VocoderContext, *, n_iter: int = 32) -> Vocoder:
    return GriffinLimVocoder(n_iter=n_iter, device=context.device)


_BUILTIN: dict[str, VocoderFactory] = {
    "hift-torch": _hift_torch_factory,
    "hift-onnx": _hift_onnx_factory,
    "griffin-lim": _griffin_lim_factory,
}
_REGISTERED: dict[str, VocoderFactory] = {}


def register_vocoder(name: str, factory: VocoderFactory, *, replace: bool = False) -> None:
    """Make ``factory(context, **options)`` available as ``get_vocoder(name)``."""
    if not isinstance(name, str) or not name:
        raise S3GenInputError("vocoder name must be a non-empty string")
    if not callable(factory):
        raise S3GenInputTypeError(f"factory for {name!r} must be callable")
    if not replace and (name in _BUILTIN or name in _REGISTERED):
        raise S3GenInputError(
            f"vocoder {name!r} is already registered; pass replace=True to override"
        )
    _REGISTERED[name] = factory


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_vocoders() -> list[str]:
    """Names accepted by :func:`get_vocoder`: built-ins, registered and entry-point backends."""
    return sorted(set(_BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def get_vocoder(name: str, context: VocoderContext | None = None, **options: Any) -> Vocoder:
    """Build the vocoder called ``name``; ``options`` go to its factory."""
    context = context or VocoderContext()
    factory = _REGISTERED.get(name) or _BUILTIN.get(name)
    if factory is None:
        entry_point = _entry_points().get(name)
        if entry_point is None:
            raise S3GenInputError(
                f"unknown vocoder {name!r}; available: {', '.join(available_vocoders())}"
            )
        factory = entry_point.load()
    vocoder = factory(context, **options)
    for attribute in ("sample_rate", "hop_length", "vocode"):
        if not hasattr(vocoder, attribute):
            raise S3GenInputTypeError(
                f"vocoder {name!r} lacks `{attribute}` (see chatterbox_s3gen.vocoders.Vocoder)"
            )
    if vocoder.sample_rate != S3GEN_SAMPLE_RATE or vocoder.hop_length != MEL_HOP:
        raise S3GenInputError(
            f"vocoder {name!r} runs at {vocoder.sample_rate} Hz / hop {vocoder.hop_length}; S3Gen mels need "
            f"{S3GEN_SAMPLE_RATE} Hz / hop {MEL_HOP}"
        )
    return vocoder
