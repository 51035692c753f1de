"""The backbone under vLLM's torch.compile path (the default on GPUs) gives the eager tokens.

On CPU, vLLM compiles with Dynamo + ``backend="eager"`` when ``VLLM_CPU_CI_ENV`` is set: this checks
that Dynamo can trace the CFG restack and learned positions with dynamic token counts (no graph
breaks that change results), which CUDA-graph capture on GPUs builds on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatterbox_t3 import T3Engine, T3Request, T3SamplingParams


@pytest.fixture(scope="module")
def compiled_engine(tiny_checkpoint: Path, tiny_engine_kwargs) -> Iterator[T3Engine]:
    previous = os.environ.get("VLLM_CPU_CI_ENV")
    os.environ["VLLM_CPU_CI_ENV"] = "1"  # Dynamo with the eager backend instead of inductor
    try:
        engine = T3Engine.from_checkpoint(
            tiny_checkpoint, **{**tiny_engine_kwargs, "enforce_eager": False}
        )
    finally:
        if previous is None:
            os.environ.pop("VLLM_CPU_CI_ENV", None)
        else:
            os.environ["VLLM_CPU_CI_ENV"] = previous
    yield engine
    engine.shutdown()


def test_compiled_backbone_matches_eager(compiled_engine, tiny_engine, make_voice) -> None:
    texts = [
        "Hello world.",
        "A longer sentence with a few more words in it, to vary lengths.",
        "Hi.",
    ]
    requests = [
        T3Request(
            text,
            make_voice(30 + i),
            T3SamplingParams(temperature=0.0, cfg_weight=w, max_new_tokens=16),
        )
        for i, (text, w) in enumerate(zip(texts, [0.5, 0.0, 1.0]))
    ]
    compiled = [o.raw_token_ids for o in compiled_engine.generate_speech_tokens(requests)]
    eager = [o.raw_token_ids for o in tiny_engine.generate_speech_tokens(requests)]
    assert compiled == eager


def test_compiled_turbo_backbone_matches_eager(
    tmp_path_factory: pytest.TempPathFactory, make_voice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chatterbox Turbo's GPT-2 T3 (absolute positions over the whole sequence, no CFG row)
    traced by Dynamo gives the eager tokens: the path its full CUDA graphs take on a GPU."""
    from chatterbox_t3.checkpoint import write_random_t3_checkpoint
    from vllm_cpu_test_support.settings import T3_ENGINE

    checkpoint = write_random_t3_checkpoint(
        tmp_path_factory.mktemp("turbo-compiled"), "tiny", seed=4, model="turbo"
    )
    options = {**T3_ENGINE, "max_model_len": 480, "max_num_batched_tokens": 480}
    requests = [
        T3Request(
            text,
            make_voice(40 + i, prompt),
            T3SamplingParams.for_model("turbo", temperature=0.0, max_new_tokens=12),
        )
        for i, (text, prompt) in enumerate(
            [
                ("Hello [laugh] world.", 60),
                ("A longer sentence, with more words in it.", 150),
                ("Hi.", 9),
            ]
        )
    ]
    monkeypatch.setenv("VLLM_CPU_CI_ENV", "1")  # Dynamo with the eager backend, as above
    tokens = {}
    for mode, eager in (("eager", True), ("compiled", False)):
        engine = T3Engine.from_checkpoint(checkpoint, **{**options, "enforce_eager": eager})
        try:
            tokens[mode] = [o.raw_token_ids for o in engine.generate_speech_tokens(requests)]
        finally:
            engine.shutdown()
    assert all(len(t) == 12 for t in tokens["eager"])
    assert tokens["compiled"] == tokens["eager"]
