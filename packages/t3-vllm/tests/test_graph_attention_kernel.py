"""Full CUDA graphs launch the attention kernel eager decoding launches (CPU; no GPU, no engine).

vLLM 0.9.2's Triton ``unified_attention`` chooses between two kernels from host values
(``max_seqlen_q``, token and sequence counts): a split-KV "3D" kernel for small decode batches
and a single-pass "2D" kernel otherwise. A full CUDA graph freezes the choice made at capture.
These tests run vLLM's own ``unified_attention`` with the kernels replaced by recorders, on the
metadata vLLM's builder gives an eager decode step of B requests and on the metadata captured for
the graph size B is padded to, and compare the kernels launched.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from chatterbox_t3.cuda_graphs import capture_sizes
from chatterbox_t3.worker import DecodeShapedGraphBuilder

KV_HEADS = 32
"""T3: 16 heads per CFG branch, both branches folded into the head axis."""
HEAD_SIZE = 64
BLOCK_SIZE = 16
MAX_NUM_SEQS = 24
CAPTURE_SIZES = capture_sizes(MAX_NUM_SEQS)


@pytest.fixture
def launched_kernel(monkeypatch: pytest.MonkeyPatch):
    """``launched_kernel(num_tokens, metadata)``: which kernel vLLM's Triton attention launches
    for a step of ``num_tokens`` query rows with ``metadata`` (as ``TritonAttentionImpl``
    passes it)."""
    import vllm.attention.ops.triton_unified_attention as unified

    launched: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getitem__(self, grid: Any) -> Any:
            return lambda *args, **kwargs: launched.append(self.name)

    monkeypatch.setattr(unified, "kernel_unified_attention_2d", Recorder("2d"))
    monkeypatch.setattr(unified, "kernel_unified_attention_3d", Recorder("3d"))
    monkeypatch.setattr(unified, "reduce_segments", Recorder("reduce"))

    def run(num_tokens: int, metadata: Any) -> str:
        launched.clear()
        query = torch.zeros(num_tokens, KV_HEADS, HEAD_SIZE)
        cache = torch.zeros(4, BLOCK_SIZE, KV_HEADS, HEAD_SIZE)
        num_seqs = metadata.seq_lens.shape[0]
        unified.unified_attention(
            q=query,
            k=cache,
            v=cache,
            out=torch.empty_like(query),
            cu_seqlens_q=metadata.query_start_loc,
            max_seqlen_q=metadata.max_query_len,
            seqused_k=metadata.seq_lens,
            max_seqlen_k=metadata.max_seq_len,
            softmax_scale=HEAD_SIZE**-0.5,
            causal=True,
            window_size=(-1, -1),
            block_table=metadata.block_table,
            softcap=0,
            q_descale=None,
            k_descale=torch.ones(num_seqs, KV_HEADS),
            v_descale=torch.ones(num_seqs, KV_HEADS),
        )
        return launched[0]

    return run


def _builder() -> Any:
    """vLLM's Triton metadata builder over a CPU block table (the runner fields it reads)."""
    from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadataBuilder
    from vllm.v1.worker.block_table import BlockTable

    runner = SimpleNamespace(
        seq_lens_np=np.zeros(MAX_NUM_SEQS, dtype=np.int32),
        attention_chunk_size=None,
        device=torch.device("cpu"),
    )
    table = BlockTable(MAX_NUM_SEQS, 8, 256, False, torch.device("cpu"))
    spec = SimpleNamespace(block_size=BLOCK_SIZE)
    return TritonAttentionMetadataBuilder(runner, spec, table)  # type: ignore[arg-type]


def _common(num_reqs: int, query_len: int, seq_len: int, runner: Any) -> Any:
    from vllm.v1.attention.backends.utils import CommonAttentionMetadata

    runner.seq_lens_np[:] = 0
    runner.seq_lens_np[:num_reqs] = seq_len
    return CommonAttentionMetadata(
        query_start_loc=torch.arange(num_reqs + 1, dtype=torch.int32) * query_len,
        seq_lens=torch.full((num_reqs,), seq_len, dtype=torch.int32),
        num_reqs=num_reqs,
        num_actual_tokens=num_reqs * query_len,
        max_query_len=query_len,
    )


def _capture_common(size: int, runner: Any) -> Any:
    """What vLLM's ``_dummy_run(size, capture_attn_cudagraph=True)`` hands the builder: one token
    per request, ``max_query_len = size``."""
    common = _common(size, 1, 320, runner)
    return dataclasses.replace(common, max_query_len=size)


def _padded(batch: int) -> int:
    return min(size for size in CAPTURE_SIZES if size >= batch)


def test_vllms_own_capture_freezes_another_kernel_for_small_batches(launched_kernel) -> None:
    """The cause of the full-graph token change: without the decode-shaped capture a graph of
    size 2 or 4 holds the 2D kernel, and an eager decode step of 2-4 requests runs the 3D one."""
    builder = _builder()
    differs = []
    for batch in range(1, MAX_NUM_SEQS + 1):
        eager = launched_kernel(batch, builder.build(0, _common(batch, 1, 100, builder.runner)))
        size = _padded(batch)
        captured = launched_kernel(
            size, builder.build_for_cudagraph_capture(_capture_common(size, builder.runner))
        )
        if eager != captured:
            differs.append(batch)
    assert differs == [2, 3, 4]


def test_decode_shaped_capture_launches_the_eager_kernel(launched_kernel) -> None:
    builder = _builder()
    shaped = DecodeShapedGraphBuilder(builder)
    for batch in range(1, MAX_NUM_SEQS + 1):
        eager = launched_kernel(batch, builder.build(0, _common(batch, 1, 100, builder.runner)))
        size = _padded(batch)
        captured = launched_kernel(
            size, shaped.build_for_cudagraph_capture(_capture_common(size, builder.runner))
        )
        assert captured == eager, f"batch {batch} (graph {size}): eager {eager}, graph {captured}"


def test_decode_shaped_graphs_serve_decode_steps_only() -> None:
    builder = _builder()
    shaped = DecodeShapedGraphBuilder(builder)
    assert shaped.can_run_in_cudagraph(_common(3, 1, 100, builder.runner))
    # A prefill chunk or prefix-cache remainder of a few tokens runs without graphs.
    assert not shaped.can_run_in_cudagraph(_common(2, 2, 100, builder.runner))
    # Everything else is vLLM's builder.
    assert shaped.full_cudagraph_supported
    assert shaped.block_size == BLOCK_SIZE
