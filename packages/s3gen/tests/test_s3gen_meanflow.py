"""The meanflow decoder (Chatterbox Turbo's ``s3gen_meanflow.safetensors``) on a tiny random
checkpoint: its file and strict weight map, one estimator row per item over 2 linear steps with
the step's end time, batching, the streamed windows on the sealed shape set, and ONNX export.
Numerical parity with the reference is ``tests/parity_turbo/test_meanflow_parity.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatterbox_s3gen import S3Gen, S3GenConfig, S3GenReference, write_random_s3gen_checkpoint
from chatterbox_s3gen.checkpoint import CheckpointError
from chatterbox_s3gen.cli import main
from chatterbox_s3gen.streaming import (
    S3GenStream,
    StreamingConfig,
    prepare_stream_graphs,
    stream_flow_shapes,
    synthesize_windows,
)

MIXER = "flow.decoder.estimator.time_embed_mixer.weight"


@pytest.fixture(scope="module")
def meanflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("s3gen-meanflow")
    assert main(["write-random-checkpoint", str(directory), "--format", "meanflow"]) == 0
    return directory


@pytest.fixture(scope="module")
def meanflow(meanflow_dir: Path) -> S3Gen:
    return S3Gen.from_checkpoint(meanflow_dir)


@pytest.fixture(scope="module")
def voice(meanflow: S3Gen, tone: Any) -> S3GenReference:
    return meanflow.embed_ref(tone(1.2, 24_000, (220.0, 440.0), seed=1), 24_000)


def test_file_is_the_standard_layout_plus_the_time_mixer(
    meanflow_dir: Path, tmp_path: Path
) -> None:
    assert sorted(p.name for p in meanflow_dir.iterdir()) == [
        "s3gen_config.json",
        "s3gen_meanflow.safetensors",
    ]
    mixer_file = load_file(str(meanflow_dir / "s3gen_meanflow.safetensors"))
    standard = load_file(str(write_random_s3gen_checkpoint(tmp_path, size="tiny")))
    assert set(mixer_file) - set(standard) == {MIXER}
    assert set(standard) <= set(mixer_file)
    time_dim = 4 * S3GenConfig.tiny().estimator_channels
    assert mixer_file[MIXER].shape == (time_dim, 2 * time_dim)


def test_the_file_name_selects_the_decoder(meanflow: S3Gen, s3gen: S3Gen) -> None:
    assert meanflow.config.meanflow and meanflow.flow_steps == 2
    assert not s3gen.config.meanflow and s3gen.flow_steps == 10


def test_strict_weight_maps_name_the_tensor(meanflow_dir: Path, tmp_path: Path) -> None:
    state = load_file(str(meanflow_dir / "s3gen_meanflow.safetensors"))
    (tmp_path / "s3gen_config.json").write_text((meanflow_dir / "s3gen_config.json").read_text())
    # The Turbo file without its mixer: a missing tensor.
    without = {k: v for k, v in state.items() if k != MIXER}
    save_file(without, str(tmp_path / "s3gen_meanflow.safetensors"))
    with pytest.raises(CheckpointError, match="time_embed_mixer"):
        S3Gen.from_checkpoint(tmp_path)
    # The Turbo tensors under the standard file's name: an unexpected tensor.
    (tmp_path / "s3gen_meanflow.safetensors").unlink()
    save_file(state, str(tmp_path / "s3gen.safetensors"))
    with pytest.raises(CheckpointError, match="time_embed_mixer"):
        S3Gen.from_checkpoint(tmp_path)


class _CountingEstimator:
    """Wraps the estimator's forward and records (rows, t, end) of every call."""

    def __init__(self, model: S3Gen) -> None:
        self.estimator = model.flow.decoder.estimator
        self.forward = self.estimator.forward
        self.calls: list[tuple[int, list[float], list[float] | None]] = []

    def __enter__(self) -> _CountingEstimator:
        def spy(
            x: torch.Tensor,
            mask: torch.Tensor,
            mu: torch.Tensor,
            t: torch.Tensor,
            spks: Any,
            cond: Any,
            end: torch.Tensor | None = None,
        ) -> torch.Tensor:
            self.calls.append((x.shape[0], t.tolist(), None if end is None else end.tolist()))
            return self.forward(x, mask, mu, t, spks, cond, end)

        self.estimator.forward = spy
        return self

    def __exit__(self, *exc: object) -> None:
        del self.estimator.forward


def test_two_linear_steps_one_row_per_item(
    meanflow: S3Gen, voice: S3GenReference, tokens: Any
) -> None:
    with _CountingEstimator(meanflow) as counter:
        meanflow.synthesize_mels([tokens(20, 1), tokens(33, 2)], [voice, voice])
    assert counter.calls == [(2, [0.0, 0.0], [0.5, 0.5]), (2, [0.5, 0.5], [1.0, 1.0])]
    with _CountingEstimator(meanflow) as counter:
        meanflow.synthesize_mels([tokens(20, 1)], [voice], n_timesteps=4)
    assert [c[1][0] for c in counter.calls] == [0.0, 0.25, 0.5, 0.75]
    assert [c[2][0] for c in counter.calls if c[2]] == [0.25, 0.5, 0.75, 1.0]


def test_end_time_changes_the_velocity(meanflow: S3Gen) -> None:
    """The mixer makes the end time an input: same start, other end, other velocity; and with
    the mixer at the identity on the start embedding, the end time has no effect."""
    estimator = meanflow.flow.decoder.estimator
    g = torch.Generator().manual_seed(3)
    x, mu, cond = (torch.randn(1, 80, 16, generator=g) for _ in range(3))
    spks, mask, t = torch.randn(1, 80, generator=g), torch.ones(1, 1, 16), torch.tensor([0.0])
    with torch.no_grad():
        half = estimator(x, mask, mu, t, spks, cond, torch.tensor([0.5]))
        whole = estimator(x, mask, mu, t, spks, cond, torch.tensor([1.0]))
        assert (half - whole).abs().max() > 1e-3
        assert estimator.time_embed_mixer is not None
        saved = estimator.time_embed_mixer.weight.clone()
        dim = saved.shape[0]
        try:
            estimator.time_embed_mixer.weight.copy_(
                torch.cat([torch.eye(dim), torch.zeros(dim, dim)], 1)
            )
            a = estimator(x, mask, mu, t, spks, cond, torch.tensor([0.5]))
            b = estimator(x, mask, mu, t, spks, cond, torch.tensor([1.0]))
        finally:
            estimator.time_embed_mixer.weight.copy_(saved)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="end time"):
        estimator(x, mask, mu, t, spks, cond)


def test_batched_items_equal_their_single_runs(
    meanflow: S3Gen, voice: S3GenReference, tone: Any, tokens: Any
) -> None:
    other = meanflow.embed_ref(tone(0.9, 16_000, (300.0,), seed=2), 16_000)
    items = [(tokens(40, 3), voice, 1), (tokens(11, 4), other, 2)]
    batched = meanflow.synthesize([i[0] for i in items], [i[1] for i in items], seeds=[1, 2])
    for (ids, ref, seed), wav in zip(items, batched):
        (single,) = meanflow.synthesize([ids], [ref], seeds=[seed])
        assert wav.shape == single.shape and wav.numel() >= (2 * len(ids) - 1) * 480
        torch.testing.assert_close(wav, single, rtol=0, atol=2e-5)


def test_streams_run_on_the_sealed_shapes_at_two_steps(
    meanflow_dir: Path, meanflow: S3Gen, voice: S3GenReference, tokens: Any
) -> None:
    """prepare_stream_graphs (capture=False on CPU: the same bookkeeping) prepares the standard
    shape set at the model's 2 steps; two streams' windows then run on it (nothing eager) and
    give the unprepared model's audio; a whole window equals synthesize."""
    model = S3Gen.from_checkpoint(meanflow_dir)
    cfg = StreamingConfig()
    report = prepare_stream_graphs(model, cfg, max_rows=2)
    assert report.n_timesteps == 2 and report.shapes == tuple(stream_flow_shapes(cfg, 2))
    token_lists = [tokens(45, 5), tokens(20, 6)]

    def run(on: S3Gen, config: StreamingConfig = cfg) -> list[list[torch.Tensor]]:
        streams = [S3GenStream(on, voice, seed=i, config=config) for i in range(2)]
        out: list[list[torch.Tensor]] = [[], []]
        for i, ids in enumerate(token_lists):
            streams[i].add_tokens(ids)
            streams[i].end_of_tokens()
        while not all(s.done for s in streams):
            windows = []
            for i, stream in enumerate(streams):
                window = stream.next_window()
                if window is not None:
                    windows.append(window)
                elif stream.finished and stream.pending is None and not stream.done:
                    out[i] += stream.flush()
            for result in synthesize_windows(on, windows):
                i = next(k for k, s in enumerate(streams) if s.stream_id == result.stream_id)
                out[i] += streams[i].accept(result)
        return out

    prepared = run(model)
    stats = model.graph_stats()
    assert stats["eager_after_seal"] == 0 and stats["captures_after_seal"] == 0
    plain = run(meanflow)
    for a, b, ids in zip(prepared, plain, token_lists):
        assert len(a) > 1 or len(ids) < cfg.first_chunk_tokens + 3
        assert sum(c.numel() for c in a) == 2 * len(ids) * 480
        torch.testing.assert_close(torch.cat(a), torch.cat(b), rtol=0, atol=2e-5)
    whole = run(meanflow, StreamingConfig(whole=True))
    expected = meanflow.synthesize(token_lists, [voice, voice], seeds=[0, 1])
    for chunks, wav in zip(whole, expected):
        torch.testing.assert_close(torch.cat(chunks), wav, rtol=0, atol=2e-5)


def test_onnx_export_takes_the_end_time(
    meanflow_dir: Path, meanflow: S3Gen, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import numpy as np

    assert main(["export-onnx", str(meanflow_dir), str(tmp_path)]) == 0
    session = ort.InferenceSession(
        str(tmp_path / "flow_estimator.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["x", "mask", "mu", "t", "spks", "cond", "end"]
    g = torch.Generator().manual_seed(4)
    batch, frames = 3, 31
    inputs = {
        "x": torch.randn(batch, 80, frames, generator=g),
        "mask": torch.ones(batch, 1, frames),
        "mu": torch.randn(batch, 80, frames, generator=g),
        "t": torch.tensor([0.0, 0.5, 0.25]),
        "spks": torch.randn(batch, 80, generator=g),
        "cond": torch.randn(batch, 80, frames, generator=g),
        "end": torch.tensor([0.5, 1.0, 0.75]),
    }
    with torch.no_grad():
        expected = meanflow.flow.decoder.estimator(*inputs.values()).numpy()
    (got,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
