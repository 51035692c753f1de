"""The multilingual model's alignment-guided stop under CUDA graphs (``-m gpu``; skipped without
a GPU).

float32 greedy decoding of a tiny multilingual checkpoint (14 layers: the three alignment heads
exist) under ``cuda_graphs="off"``, ``"piecewise"`` and ``"full"``: requests in several languages
(English among them) in one batch, with mixed CFG weights; a batch of 5 (between the captured
sizes 4 and 8); the 16 again through a KV cache too small for them (preemption and recomputation).
The analyzer's query/key rows are recorded inside the captured forward and its stops shrink the
batch step by step through every captured size, so any difference between a graph and eager, in
its buffers or in the kernels the graph froze, shows up as other tokens. The tokens must be
identical, and the analyzer must have forced stops.

Full graphs gave other tokens on an H200 (2026-12-02). One graph/eager difference found since:
vLLM 0.9.2 captured its Triton attention for sizes >= 2 with the 2D kernel while eager decode of
2-4 requests runs the 3D split-KV kernel (tests/test_graph_attention_kernel.py);
:class:`chatterbox_t3.worker.DecodeShapedGraphBuilder` captures graphs as decode steps. Full
graphs for this model are still behind ``CHATTERBOX_T3_MULTILINGUAL_FULL_GRAPHS=1``, which these
tests set; if they fail, ``bench/mtl_graph_diff.py`` (``session.sh mtl-diff``) says where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from chatterbox_t3 import T3Engine, T3Request
from chatterbox_t3.checkpoint import write_random_t3_checkpoint
from chatterbox_t3.cuda_graphs import MULTILINGUAL_FULL_GRAPHS_ENV
from vllm_cpu_test_support.multilingual import mixed_language_requests

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("triton_attention"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MAX_NEW_TOKENS = 120
STOP = 6562
SMALL_BATCH = 5
"""Between the captured sizes 4 and 8: every step is padded, then 3 and 2 are padded too."""
PREEMPTING_BLOCKS = 64
"""KV blocks of 16 for the 16 requests (~80 prompt + up to 120 new tokens each need ~200)."""
GPU_ENGINE: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 384,
    "max_num_seqs": 24,
    "gpu_memory_utilization": 0.1,
    "seed": 0,
}


@pytest.fixture(scope="module")
def multilingual_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_t3_checkpoint(
        tmp_path_factory.mktemp("t3-mtl"), "tiny", seed=11, model="multilingual"
    )


def _requests() -> list[T3Request]:
    return mixed_language_requests(16, MAX_NEW_TOKENS)


def _generate(engine: T3Engine, requests: list[T3Request]) -> list[tuple[int, ...]]:
    return [o.raw_token_ids for o in engine.generate_speech_tokens(requests)]


def _engine(checkpoint: Path, mode: str, **options: Any) -> T3Engine:
    engine = T3Engine.from_checkpoint(checkpoint, cuda_graphs=mode, **GPU_ENGINE, **options)
    assert engine.config.is_multilingual
    plan = engine.cuda_graph_plan
    assert plan is not None and plan.mode == mode
    return engine


@pytest.fixture(scope="module")
def eager_runs(multilingual_checkpoint: Path) -> dict[str, list[tuple[int, ...]]]:
    engine = _engine(multilingual_checkpoint, "off")
    try:
        requests = _requests()
        return {
            "mixed": _generate(engine, requests),
            "small": _generate(engine, requests[:SMALL_BATCH]),
        }
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def eager_tokens(eager_runs) -> list[tuple[int, ...]]:
    return eager_runs["mixed"]


def _mismatched(tokens: list[tuple[int, ...]], expected: list[tuple[int, ...]]) -> list[int]:
    assert len(tokens) == len(expected)
    return [i for i, (a, b) in enumerate(zip(tokens, expected, strict=True)) if a != b]


def test_the_analyzer_forces_stops(eager_tokens) -> None:
    forced = [t for t in eager_tokens if t[-1] == STOP and len(t) < MAX_NEW_TOKENS]
    assert forced, "no request was stopped by the analyzer: the comparison would prove little"
    assert len(set(eager_tokens)) > len(eager_tokens) // 2


def test_full_graphs_need_the_switch(multilingual_checkpoint: Path, monkeypatch) -> None:
    monkeypatch.delenv(MULTILINGUAL_FULL_GRAPHS_ENV, raising=False)
    with pytest.raises(ValueError, match="multilingual alignment stop"):
        T3Engine.from_checkpoint(multilingual_checkpoint, cuda_graphs="full", **GPU_ENGINE)


def test_full_graphs_give_the_eager_tokens(
    multilingual_checkpoint: Path, eager_runs, monkeypatch
) -> None:
    monkeypatch.setenv(MULTILINGUAL_FULL_GRAPHS_ENV, "1")
    engine = _engine(multilingual_checkpoint, "full")
    try:
        compilation = engine.vllm.llm_engine.vllm_config.compilation_config
        assert compilation.full_cuda_graph
        assert sorted(compilation.cudagraph_capture_sizes) == [1, 2, 4, 8, 16, 24]
        requests = _requests()
        mixed = _generate(engine, requests)
        small = _generate(engine, requests[:SMALL_BATCH])
    finally:
        engine.shutdown()
    mismatched = _mismatched(mixed, eager_runs["mixed"])
    assert not mismatched, f"full graphs: requests {mismatched} differ from eager"
    mismatched = _mismatched(small, eager_runs["small"])
    assert not mismatched, f"full graphs, batch of {SMALL_BATCH}: requests {mismatched} differ"


def _preempted_run(checkpoint: Path, mode: str) -> tuple[list[tuple[int, ...]], int]:
    engine = _engine(
        checkpoint, mode, num_gpu_blocks_override=PREEMPTING_BLOCKS, disable_log_stats=False
    )
    try:
        tokens = _generate(engine, _requests())
        preemptions = sum(
            int(m.value) for m in engine.vllm.get_metrics() if m.name == "vllm:num_preemptions"
        )
    finally:
        engine.shutdown()
    return tokens, preemptions


def test_full_graphs_through_preemption(multilingual_checkpoint: Path, monkeypatch) -> None:
    """Eager and full graphs through the same small KV cache: requests are preempted and
    recomputed (their analyzer state kept, their keys filed again) at the same steps."""
    monkeypatch.setenv(MULTILINGUAL_FULL_GRAPHS_ENV, "1")
    eager, eager_preemptions = _preempted_run(multilingual_checkpoint, "off")
    full, full_preemptions = _preempted_run(multilingual_checkpoint, "full")
    assert eager_preemptions > 0 and full_preemptions > 0
    mismatched = _mismatched(full, eager)
    assert not mismatched, f"full graphs after preemption: requests {mismatched} differ"


def test_piecewise_graphs_give_the_eager_tokens(
    multilingual_checkpoint: Path, eager_tokens
) -> None:
    engine = _engine(multilingual_checkpoint, "piecewise")
    try:
        tokens = _generate(engine, _requests())
    finally:
        engine.shutdown()
    mismatched = _mismatched(tokens, eager_tokens)
    assert not mismatched, f"piecewise: requests {mismatched} differ from eager"
