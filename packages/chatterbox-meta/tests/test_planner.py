"""The chunk planner: one plan per call, the same for the local and the Ray executor."""

from __future__ import annotations

import pytest

from chatterbox_vllm import EngineConfig, GenerationParams
from chatterbox_vllm.errors import InvalidParameterError, InvalidTextError
from chatterbox_vllm.planner import plan_requests, token_cap

SENTENCE = "The quick brown fox jumps over the lazy dog."  # 44 characters


def test_a_lower_token_budget_never_splits_a_sentence_that_fits() -> None:
    plan = plan_requests([SENTENCE], [GenerationParams(max_new_tokens=60)], EngineConfig())
    assert [item.text for item in plan.items] == [SENTENCE]
    assert plan.items[0].max_tokens == 60


def test_items_carry_seeds_caps_and_their_request() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    config = EngineConfig(max_chunk_chars=120)
    plan = plan_requests(
        [text, "Short one."],
        [GenerationParams(seed=5), GenerationParams(max_tokens_per_expected_second=10)],
        config,
    )
    first = plan.items_of(0)
    assert len(first) > 1 and all(len(item.text) <= 120 for item in first)
    assert [item.seed for item in first] == [5 + i for i in range(len(first))]
    assert [item.order for item in plan.items] == list(range(len(plan.items)))
    assert " ".join(plan.chunks_of(0)) == text
    (short,) = plan.items_of(1)
    # 10 characters take 10/15 s: at 10 tokens per expected second the cap is 7 tokens.
    assert short.max_tokens == 7 and short.seed is None
    assert all(item.max_tokens == config.max_new_tokens for item in first)


def test_token_cap_and_estimate() -> None:
    assert token_cap("x" * 150, 1000, None) == 1000
    assert token_cap("x" * 150, 1000, 10) == 100
    assert token_cap("x" * 150, 50, 10) == 50
    assert token_cap("", 1000, 10) == 1
    plan = plan_requests(["x" * 150], [GenerationParams()], EngineConfig(max_chunk_chars=200))
    assert plan.items[0].estimated_tokens == 250  # 10 s of speech at 25 tokens/s


def test_errors_name_the_text_when_there_are_several() -> None:
    with pytest.raises(InvalidTextError, match="^text 1: text is empty"):
        plan_requests(["fine", "  "], [GenerationParams()] * 2, EngineConfig())
    with pytest.raises(InvalidParameterError, match="max_new_tokens=2000 does not fit the engine"):
        plan_requests(["fine"], [GenerationParams(max_new_tokens=2000)], EngineConfig())
