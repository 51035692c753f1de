"""The bucketed Euler loop behind S3Gen's CUDA graphs, run on CPU without capture.

On CUDA, :class:`~chatterbox_s3gen.flow.EulerGraphs` pads every batch to a row and frame bucket
and replays a captured graph over static buffers. ``capture=False`` runs the same static buffers
and padding eagerly, so everything except the capture itself is checked here: padded rows and
frames must not change the valid frames, shapes must reuse their buffers, and a replaced noise
must drop what was built for the old one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3Gen
from chatterbox_s3gen.flow import EulerGraphs, frame_bucket, row_bucket


def test_buckets() -> None:
    assert [row_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 33)] == [
        1,
        2,
        4,
        4,
        8,
        8,
        16,
        16,
        24,
        40,
    ]
    assert [frame_bucket(n) for n in (1, 64, 65, 1000, 1024, 1025, 1500)] == [
        64,
        64,
        128,
        1024,
        1024,
        1152,
        1536,
    ]
    with pytest.raises(ValueError, match="max_graphs"):
        EulerGraphs(0)


@pytest.fixture(scope="module")
def models(tiny_checkpoint: Path) -> tuple[S3Gen, S3Gen]:
    bucketed = S3Gen.from_checkpoint(tiny_checkpoint)
    bucketed.flow.decoder.graphs = EulerGraphs(max_graphs=3, capture=False)
    eager = S3Gen.from_checkpoint(tiny_checkpoint, cuda_graphs=False)
    assert eager.flow.decoder.graphs is None
    return bucketed, eager


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert float((x - y).abs().max() / y.abs().max()) < 1e-5


def test_padded_rows_and_frames_leave_the_valid_frames(models, voice_a, voice_b, tokens) -> None:
    bucketed, eager = models
    graphs = bucketed.flow.decoder.graphs
    assert isinstance(graphs, EulerGraphs)
    for sizes in [(3,), (3, 50, 21), (40, 41, 7, 33, 12)]:  # rows 1, 4 and 8 after padding
        sequences = [tokens(n, n + 11) for n in sizes]
        voices = [voice_a if i % 2 else voice_b for i in range(len(sizes))]
        _close(
            bucketed.synthesize_mels(sequences, voices), eager.synthesize_mels(sequences, voices)
        )
    built = graphs.captures
    # Shorter items in the bucket of the (3, 50, 21) batch: its buffers are reused, and what the
    # longer batch left in them past the new lengths must not leak in.
    sequences = [tokens(n, n + 5) for n in (2, 44, 20)]
    voices = [voice_b, voice_a, voice_b]
    _close(bucketed.synthesize_mels(sequences, voices), eager.synthesize_mels(sequences, voices))
    assert graphs.captures == built
    assert len(graphs._graphs) == 3  # the cache holds at most max_graphs


def test_new_noise_drops_the_buffers_built_for_the_old(models, voice_a, tokens) -> None:
    bucketed, eager = models
    graphs = bucketed.flow.decoder.graphs
    assert isinstance(graphs, EulerGraphs)
    ids = [tokens(25, 4)]
    bucketed.synthesize_mels(ids, [voice_a])
    built = graphs.captures
    for model in models:
        model.set_flow_noise_seed(123)
    new = bucketed.synthesize_mels(ids, [voice_a])
    assert graphs.captures == built + 1
    _close(new, eager.synthesize_mels(ids, [voice_a]))


def test_cuda_graphs_option_is_a_no_op_on_cpu(tiny_checkpoint: Path, voice_a, tokens) -> None:
    """The default (graphs on) must give CPU callers exactly the eager, unpadded computation."""
    with_option = S3Gen.from_checkpoint(tiny_checkpoint)
    without = S3Gen.from_checkpoint(tiny_checkpoint, cuda_graphs=False)
    assert with_option.cuda_graphs and not without.cuda_graphs
    ids = [tokens(30, 8), tokens(9, 9)]
    a = with_option.synthesize(ids, [voice_a, voice_a], seeds=[1, 2])
    b = without.synthesize(ids, [voice_a, voice_a], seeds=[1, 2])
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert with_option.flow.decoder.graphs is not None
    assert with_option.flow.decoder.graphs.captures == 0


def test_a_failed_capture_falls_back_to_eager(
    tiny_checkpoint: Path, voice_a, tokens, caplog
) -> None:
    """Capturing on a machine without CUDA fails like any capture error would: that shape runs
    eagerly (same result), is not retried, and the failure is logged once."""
    model = S3Gen.from_checkpoint(tiny_checkpoint, cuda_graphs=False)
    eager = model.synthesize_mels([tokens(20, 3)], [voice_a])
    graphs = EulerGraphs()  # capture=True, as on a GPU
    model.flow.decoder.graphs = graphs
    cfm = model.flow.decoder
    original = cfm.solve
    # Route the CPU batch through the graph path, which tries to capture.
    cfm.solve = lambda mu, mask, spks, cond, n: graphs.solve(cfm, mu, mask, spks, cond, n)  # type: ignore[method-assign]
    try:
        with caplog.at_level("WARNING", logger="chatterbox_s3gen.flow"):
            first = model.synthesize_mels([tokens(20, 3)], [voice_a])
            second = model.synthesize_mels([tokens(20, 3)], [voice_a])
    finally:
        cfm.solve = original  # type: ignore[method-assign]
    assert torch.equal(first[0], eager[0]) and torch.equal(second[0], eager[0])
    assert graphs.captures == 0 and len(graphs._failed) == 1
    assert sum("no CUDA graph" in r.message for r in caplog.records) == 1
