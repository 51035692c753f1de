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


@pytest.mark.parametrize(
    ("chars", "max_new_tokens", "per_second", "expected"),
    [
        (150, 1000, None, 250),  # 15 characters per second of speech, 25 tokens per second
        (30, 1000, None, 50),
        (150, 100, None, 100),  # capped by the token budget
        (150, 1000, 10, 100),  # capped by tokens per expected second
        (1, 1000, None, 2),
        (0, 1000, None, 1),  # never zero: placement divides by it
    ],
)
def test_estimated_tokens_follow_text_length_and_the_caps(
    chars: int, max_new_tokens: int, per_second: float | None, expected: int
) -> None:
    from chatterbox_vllm.planner import PlanItem

    params = GenerationParams(
        max_new_tokens=max_new_tokens, max_tokens_per_expected_second=per_second
    )
    item = PlanItem(
        order=0, request_index=0, chunk_index=0, text="x" * chars, params=params,
        max_tokens=token_cap("x" * chars, max_new_tokens, per_second), seed=None,
    )  # fmt: skip
    assert item.estimated_tokens == expected
