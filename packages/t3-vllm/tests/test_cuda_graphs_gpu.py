"""CUDA-graph modes give the eager tokens (``-m gpu``; skipped without a GPU).

float32 greedy decoding of the tiny checkpoint (2 layers, the real hidden size and CFG restack)
under ``cuda_graphs="off"``, ``"piecewise"`` and ``"full"``: 20 requests x 100 tokens with mixed
CFG weights (0 included), exaggerations, texts and voice-prompt lengths, submitted in batches of
3, 5 and 12 (between the captured sizes 1, 2, 4, 8, 16, 24, so every decode step is padded up),
then all 20 at once through an engine whose KV cache is too small for them (preemption and
recomputation under full graphs). float32 because bf16 greedy paths split at near-ties of random
weights, which says nothing about graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from chatterbox_t3 import T3Engine, T3Request, T3SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("triton_attention"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MAX_NEW_TOKENS = 100
BATCHES = (3, 5, 12)
GPU_ENGINE: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 320,
    "max_num_seqs": 24,
    "gpu_memory_utilization": 0.1,
    "seed": 0,
}
TEXTS = (
    "Hello world.",
    "A longer sentence with a few more words in it, to vary the prompt lengths.",
    "Hi.",
    "Graphs must not change a single token, whatever the batch looks like.",
    "Numbers: one, two, three.",
)


def _requests(make_voice) -> list[T3Request]:
    weights = (0.0, 0.5, 1.0, 0.3)
    exaggerations = (0.25, 0.5, 0.9)
    prompt_lengths = (150, 60, 9, 120)
    return [
        T3Request(
            TEXTS[i % len(TEXTS)],
            make_voice(100 + i, prompt_lengths[i % len(prompt_lengths)]),
            T3SamplingParams(
                temperature=0.0,
                cfg_weight=weights[i % len(weights)],
                exaggeration=exaggerations[i % len(exaggerations)],
                max_new_tokens=MAX_NEW_TOKENS,
            ),
        )
        for i in range(sum(BATCHES))
    ]


def _generate_in_batches(engine: T3Engine, requests: list[T3Request]) -> list[tuple[int, ...]]:
    tokens: list[tuple[int, ...]] = []
    start = 0
    for size in BATCHES:
        outputs = engine.generate_speech_tokens(requests[start : start + size])
        tokens.extend(o.raw_token_ids for o in outputs)
        start += size
    return tokens


@pytest.fixture(scope="module")
def eager_runs(tiny_checkpoint: Path, make_voice) -> dict[str, list[tuple[int, ...]]]:
    """Eager tokens in batches of 3/5/12 and of all 20 (compared batching for batching: a
    different batch can legitimately change float32 rounding in the matmuls)."""
    engine = T3Engine.from_checkpoint(tiny_checkpoint, cuda_graphs="off", **GPU_ENGINE)
    try:
        assert engine.cuda_graph_plan is not None and engine.cuda_graph_plan.mode == "off"
        requests = _requests(make_voice)
        return {
            "batches": _generate_in_batches(engine, requests),
            "all": [o.raw_token_ids for o in engine.generate_speech_tokens(requests)],
        }
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def eager_tokens(eager_runs) -> list[tuple[int, ...]]:
    return eager_runs["batches"]


def test_eager_run_is_long_enough(eager_tokens) -> None:
    assert len(eager_tokens) == sum(BATCHES) >= 16
    assert sum(len(t) for t in eager_tokens) >= 16 * MAX_NEW_TOKENS * 0.5
    # Different requests give different tokens (otherwise equality below would prove little).
    assert len(set(eager_tokens)) > len(eager_tokens) // 2


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_graph_modes_give_the_eager_tokens(
    mode: str, tiny_checkpoint: Path, make_voice, eager_tokens
) -> None:
    engine = T3Engine.from_checkpoint(tiny_checkpoint, cuda_graphs=mode, **GPU_ENGINE)
    try:
        plan = engine.cuda_graph_plan
        assert plan is not None and plan.mode == mode
        assert plan.capture_sizes == (1, 2, 4, 8, 16, 24)
        compilation = engine.vllm.llm_engine.vllm_config.compilation_config
        assert compilation.full_cuda_graph is (mode == "full")
        assert sorted(compilation.cudagraph_capture_sizes) == [1, 2, 4, 8, 16, 24]
        tokens = _generate_in_batches(engine, _requests(make_voice))
    finally:
        engine.shutdown()
    mismatched = [i for i, (a, b) in enumerate(zip(tokens, eager_tokens)) if a != b]
    assert not mismatched, f"{mode}: requests {mismatched} differ from eager"


def test_full_graphs_through_preemption(tiny_checkpoint: Path, make_voice, eager_runs) -> None:
    # 20 requests of ~60 prompt + 100 new tokens need ~200 blocks of 16; 40 force preemption.
    engine = T3Engine.from_checkpoint(
        tiny_checkpoint,
        cuda_graphs="full",
        num_gpu_blocks_override=40,
        disable_log_stats=False,
        **GPU_ENGINE,
    )
    try:
        outputs = engine.generate_speech_tokens(_requests(make_voice))
        preempted = sum(
            int(m.value) for m in engine.vllm.get_metrics() if m.name == "vllm:num_preemptions"
        )
    finally:
        engine.shutdown()
    assert preempted > 0
    tokens = [o.raw_token_ids for o in outputs]
    mismatched = [i for i, (a, b) in enumerate(zip(tokens, eager_runs["all"])) if a != b]
    assert not mismatched, f"after preemption: requests {mismatched} differ from eager"
