"""Export S3Gen's two heavy networks to ONNX (extra ``onnx``):

* ``flow_estimator.onnx`` — the CFM vector field, ``(x, mask, mu, t, spks, cond) -> velocity``,
  all ``[batch, 80, frames]`` except ``mask [batch, 1, frames]``, ``t [batch]``,
  ``spks [batch, 80]``; batch and frames are dynamic (run guided + unguided rows as one batch);
  the meanflow estimator (Chatterbox Turbo's ``s3gen_meanflow.safetensors``) has a seventh input,
  ``end [batch]``, the time each step ends at;
* ``hift.onnx`` — the whole HiFT vocoder including the F0 predictor, sine source, STFT and
  inverse STFT: ``(mel [B, 80, T], mel_lengths [B] int64, phases [B, 9, 1], noise [B, 9, 480 T])
  -> wav [B, 480 T]``. Its randomness comes in as ``phases``/``noise``
  (:func:`chatterbox_s3gen.hift.draw_source_noise`), so it is deterministic.

The Euler loop, the conformer encoder and the reference front ends stay in PyTorch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from chatterbox_s3gen.constants import MEL_CHANNELS, MEL_HOP
from chatterbox_s3gen.hift import HiFTGenerator
from chatterbox_s3gen.model import S3Gen

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
ESTIMATOR_FILENAME = "flow_estimator.onnx"
HIFT_FILENAME = "hift.onnx"


class _HiFTGraph(nn.Module):
    def __init__(self, hift: HiFTGenerator) -> None:
        super().__init__()
        self.hift = hift

    def forward(
        self,
        mel: torch.Tensor,
        mel_lengths: torch.Tensor,
        phases: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        return self.hift(mel, mel_lengths, phases, noise)


def export_onnx(
    checkpoint: str | Path, out_dir: str | Path, *, opset: int = DEFAULT_OPSET
) -> dict[str, Path]:
    """Export the estimator and the vocoder of ``checkpoint`` (float32) into ``out_dir``; returns
    ``{"flow_estimator": path, "hift": path}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = S3Gen.from_checkpoint(checkpoint, device="cpu")
    estimator = model.flow.decoder.estimator.eval()
    hift = model.mel2wav.eval()

    batch, frames = 2, 24
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, MEL_CHANNELS, frames, generator=generator)
    mask = torch.ones(batch, 1, frames)
    mu = torch.randn(batch, MEL_CHANNELS, frames, generator=generator)
    t = torch.rand(batch, generator=generator)
    spks = torch.randn(batch, MEL_CHANNELS, generator=generator)
    cond = torch.randn(batch, MEL_CHANNELS, frames, generator=generator)
    inputs: tuple[torch.Tensor, ...] = (x, mask, mu, t, spks, cond)
    names = ["x", "mask", "mu", "t", "spks", "cond"]
    if model.config.meanflow:
        inputs, names = (*inputs, t + 0.5), [*names, "end"]
    estimator_path = out_dir / ESTIMATOR_FILENAME
    frame_axes = {0: "batch", 2: "frames"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter's deprecation and constant-folding notes are not actionable here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            estimator,
            inputs,
            str(estimator_path),
            input_names=names,
            output_names=["velocity"],
            dynamic_axes={
                "x": frame_axes,
                "mask": frame_axes,
                "mu": frame_axes,
                "t": {0: "batch"},
                "spks": {0: "batch"},
                "cond": frame_axes,
                "end": {0: "batch"},
                "velocity": frame_axes,
            },
            opset_version=opset,
            dynamo=False,
        )
    logger.info("exported the flow estimator to %s", estimator_path)

    mel = torch.randn(batch, MEL_CHANNELS, frames, generator=generator)
    mel_lengths = torch.tensor([frames, frames - 5], dtype=torch.int64)
    harmonics = hift.num_harmonics
    phases = torch.rand(batch, harmonics, 1, generator=generator)
    noise = torch.randn(batch, harmonics, frames * MEL_HOP, generator=generator)
    hift_path = out_dir / HIFT_FILENAME
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _HiFTGraph(hift),
            (mel, mel_lengths, phases, noise),
            str(hift_path),
            input_names=["mel", "mel_lengths", "phases", "noise"],
            output_names=["wav"],
            dynamic_axes={
                "mel": frame_axes,
                "mel_lengths": {0: "batch"},
                "phases": {0: "batch"},
                "noise": {0: "batch", 2: "samples"},
                "wav": {0: "batch", 1: "samples"},
            },
            opset_version=opset,
            dynamo=False,
        )
    logger.info("exported the HiFT vocoder to %s", hift_path)
    return {"flow_estimator": estimator_path, "hift": hift_path}
