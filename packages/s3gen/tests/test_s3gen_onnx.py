"""ONNX export of the flow estimator and the HiFT vocoder, checked against PyTorch with ONNX
Runtime on the tiny checkpoint. Tolerances: estimator 1e-4 absolute on outputs of magnitude ~1;
vocoder 1e-5 absolute on samples in [-0.99, 0.99] (measured: ~1e-6 and ~1e-7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chatterbox_s3gen import S3Gen
from chatterbox_s3gen.cli import main
from chatterbox_s3gen.hift import draw_source_noise

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def onnx_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s3gen-onnx")
    assert main(["export-onnx", str(tiny_checkpoint), str(out)]) == 0
    return out


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_cli_writes_both_graphs(onnx_dir: Path) -> None:
    assert (onnx_dir / "flow_estimator.onnx").is_file()
    assert (onnx_dir / "hift.onnx").is_file()


def test_estimator_matches_torch_with_dynamic_batch_and_length(
    onnx_dir: Path, s3gen: S3Gen
) -> None:
    session = _session(onnx_dir / "flow_estimator.onnx")
    estimator = s3gen.flow.decoder.estimator
    generator = torch.Generator().manual_seed(1)
    for batch, frames in ((1, 9), (4, 71)):  # export used batch 2, 24 frames
        x = torch.randn(batch, 80, frames, generator=generator)
        mask = torch.ones(batch, 1, frames)
        mask[-1, :, frames // 2 :] = 0
        mu = torch.randn(batch, 80, frames, generator=generator)
        t = torch.rand(batch, generator=generator)
        spks = torch.randn(batch, 80, generator=generator)
        cond = torch.randn(batch, 80, frames, generator=generator)
        with torch.no_grad():
            expected = estimator(x, mask, mu, t, spks, cond).numpy()
        inputs = {"x": x, "mask": mask, "mu": mu, "t": t, "spks": spks, "cond": cond}
        (got,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_hift_matches_torch_with_padding(onnx_dir: Path, s3gen: S3Gen) -> None:
    session = _session(onnx_dir / "hift.onnx")
    generator = torch.Generator().manual_seed(2)
    frames = 37
    mel = torch.randn(3, 80, frames, generator=generator)
    lengths = torch.tensor([frames, 20, 4])
    phases, noise = draw_source_noise([int(n) * 480 for n in lengths], [1, 2, 3], 9)
    padded = torch.zeros(3, 9, frames * 480)
    padded[:, :, : noise.shape[2]] = noise
    with torch.no_grad():
        expected = s3gen.mel2wav(mel, lengths, phases, padded).numpy()
    (got,) = session.run(
        None,
        {
            "mel": mel.numpy(),
            "mel_lengths": lengths.numpy(),
            "phases": phases.numpy(),
            "noise": padded.numpy(),
        },
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_hift_onnx_vocoder_in_s3gen(
    onnx_dir: Path, tiny_checkpoint: Path, voice_a, voice_b, tokens
) -> None:
    torch_model = S3Gen.from_checkpoint(tiny_checkpoint)
    onnx_model = S3Gen.from_checkpoint(
        tiny_checkpoint, vocoder="hift-onnx", vocoder_options={"path": onnx_dir / "hift.onnx"}
    )
    sequences, voices = [tokens(9, 1), tokens(3, 2)], [voice_a, voice_b]
    expected = torch_model.synthesize(sequences, voices, seeds=[5, 6])
    got = onnx_model.synthesize(sequences, voices, seeds=[5, 6])
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_hift_onnx_default_path_and_missing_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint)
    with pytest.raises(FileNotFoundError, match="export-onnx"):
        model.make_vocoder("hift-onnx")  # looks for <checkpoint>/onnx/hift.onnx
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        model.make_vocoder("hift-onnx", path=tmp_path / "nope.onnx")
