"""ShapeGraphs on the CPU (``capture=False``: the static buffers and bookkeeping a CUDA capture
uses, run eagerly): prepared shapes give the function's results through the shared static
buffers, other shapes run eagerly and are counted, moved weights drop the prepared set, and a
failing preparation stops with the rest eager. The captures themselves: ``test_s3gen_gpu.py``."""

from __future__ import annotations

import logging

import pytest
import torch

from chatterbox_s3gen.graphs import ShapeGraphs


class _Affine(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(x) * scale.unsqueeze(-1), scale.sum()


def _graphs(module: _Affine, **kwargs) -> ShapeGraphs:
    return ShapeGraphs(
        "affine",
        module,
        capture=False,
        fingerprint=lambda: tuple(p.data_ptr() for p in module.parameters()),
        **kwargs,
    )


def _example(rows: int) -> list[torch.Tensor]:
    return [torch.zeros(()).expand(rows, 4), torch.ones(()).expand(rows)]


def test_prepared_shapes_give_the_functions_results_through_shared_buffers() -> None:
    torch.manual_seed(0)
    module = _Affine()
    graphs = _graphs(module)
    assert graphs.prepare([_example(2), _example(5)], warm=False) == 2
    assert len(graphs) == 2 and graphs.captures == 2
    for rows in (2, 5, 2):
        x, scale = torch.randn(rows, 4), torch.rand(rows)
        out, total = graphs.run(x, scale)
        expected, expected_total = module(x, scale)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        torch.testing.assert_close(total, expected_total, rtol=0, atol=0)
        assert [x, scale] in graphs
    assert graphs.eager_runs == 0
    # Every shape's static input is a view of one buffer per input position (the largest).
    statics = [call.inputs for call in graphs._calls.values()]
    assert statics[0][0].data_ptr() == statics[1][0].data_ptr()
    assert [arena.numel() for arena in graphs._arenas] == [5 * 4, 5]
    # Preparing a shape held already captures nothing.
    assert graphs.prepare([_example(2)]) == 0


def test_an_unprepared_shape_or_dtype_runs_eagerly_and_is_counted() -> None:
    module = _Affine()
    graphs = _graphs(module)
    graphs.prepare([_example(2)], warm=False)
    x, scale = torch.randn(3, 4), torch.rand(3)
    out, _ = graphs.run(x, scale)
    torch.testing.assert_close(out, module(x, scale)[0], rtol=0, atol=0)
    assert graphs.eager_runs == 1
    graphs.run(torch.randn(2, 4), torch.rand(2, dtype=torch.float64))  # same shape, new dtype
    assert graphs.eager_runs == 2


def test_moved_weights_drop_the_prepared_shapes(caplog) -> None:
    module = _Affine()
    graphs = _graphs(module)
    graphs.prepare([_example(2)], warm=False)
    module.linear.weight = torch.nn.Parameter(torch.randn(3, 4))  # new storage
    x, scale = torch.randn(2, 4), torch.rand(2)
    with caplog.at_level(logging.WARNING, logger="chatterbox_s3gen.graphs"):
        out, _ = graphs.run(x, scale)
    torch.testing.assert_close(out, module(x, scale)[0], rtol=0, atol=0)
    assert "affine's weights moved" in caplog.text
    assert len(graphs) == 0 and graphs.eager_runs == 1
    assert graphs.prepare([_example(2)], warm=False) == 1  # prepared again on the new weights
    graphs.run(x, scale)
    assert graphs.eager_runs == 1


def test_a_failing_preparation_stops_and_the_rest_stay_eager(caplog) -> None:
    module = _Affine()
    forward = module.forward

    def fails_at_three_rows(x: torch.Tensor, scale: torch.Tensor):
        if x.shape[0] == 3:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return forward(x, scale)

    graphs = _graphs(module)
    graphs.fn = fails_at_three_rows
    with caplog.at_level(logging.WARNING, logger="chatterbox_s3gen.graphs"):
        assert graphs.prepare([_example(1), _example(3), _example(4)], warm=True) == 1
    assert "affine stopped at [(3, 4), (3,)]" in caplog.text
    assert "the 1 after it run eagerly" in caplog.text
    graphs.fn = forward
    x, scale = torch.randn(4, 4), torch.rand(4)
    torch.testing.assert_close(graphs.run(x, scale)[0], forward(x, scale)[0], rtol=0, atol=0)
    assert graphs.eager_runs == 1


def test_examples_must_agree_on_their_inputs() -> None:
    graphs = _graphs(_Affine())
    with pytest.raises(ValueError, match="every affine example must have 2 inputs"):
        graphs.prepare([_example(1), [torch.zeros(2, 4)]])
