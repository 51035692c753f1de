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


# ---------------------------------------------------------------------------- incremental mode


def _feed(planner, deltas: list[str]) -> list[tuple[int, str]]:
    """(index of the delta after which an item came out, its text); -1: the commit."""
    out = [(i, item.text) for i, delta in enumerate(deltas) for item in planner.append(delta)]
    return out + [(-1, item.text) for item in planner.commit()]


def test_incremental_items_come_out_when_their_end_is_known() -> None:
    from chatterbox_vllm.planner import IncrementalPlanner

    config = EngineConfig(max_chunk_chars=60)
    planner = IncrementalPlanner(GenerationParams(seed=9), config)
    deltas = ["Dr. Sm", "ith is h", "ere.", " He", " says hi!", " And th", "e end"]
    out = _feed(planner, deltas)
    # "Dr." ends no sentence; "here." ends one only when the space after it arrives.
    assert out == [(3, "Dr. Smith is here."), (5, "He says hi!"), (-1, "And the end")]
    assert [item.seed for item in planner.items] == [9, 10, 11]
    assert [item.order for item in planner.items] == [0, 1, 2]
    text = "".join(deltas)
    assert [text[s.start : s.end].strip() for s in planner.spans] == [t for _, t in out]


def test_incremental_plan_equals_the_whole_plan_where_the_split_is_the_same() -> None:
    from chatterbox_vllm.planner import IncrementalPlanner

    config = EngineConfig(max_chunk_chars=60)
    text = (
        "The first sentence is said right here. Then a second one follows it! "
        "A third sentence is long enough to stand alone."
    )
    params = GenerationParams(seed=4, max_tokens_per_expected_second=20)
    whole = plan_requests([text], [params], config).items
    planner = IncrementalPlanner(params, config)
    _feed(planner, [text[i : i + 2] for i in range(0, len(text), 2)])
    assert planner.items == list(whole)


def test_a_long_first_clause_starts_early_and_a_run_on_is_cut_at_the_chunk_size() -> None:
    from chatterbox_vllm.planner import FIRST_CLAUSE_MIN_CHARS, IncrementalPlanner

    config = EngineConfig(max_chunk_chars=60)
    planner = IncrementalPlanner(GenerationParams(), config)
    clause = "Well, as I was saying to my friend yesterday,"
    assert len(clause.split(", ", 1)[1]) >= FIRST_CLAUSE_MIN_CHARS
    out = _feed(planner, [clause, " we should go", " and then, later on, more"])
    # "Well," is too short to say alone; the clause is not (known once the space after its
    # comma arrives); later clauses wait for their sentence.
    assert out == [(1, clause), (-1, "we should go and then, later on, more")]
    run_on = "word " * 30
    planner = IncrementalPlanner(GenerationParams(), config)
    cut = planner.append(run_on)
    assert cut and all(len(item.text) <= 60 for item in cut)
    assert len(planner.pending) <= 60
    assert planner.pending_after("more words") == len(planner.pending) + len("more words")


def test_incremental_deltas_may_cut_surrogate_pairs_and_bad_text_is_named() -> None:
    import json

    from chatterbox_vllm.planner import IncrementalPlanner

    config = EngineConfig(max_chunk_chars=60)
    planner = IncrementalPlanner(GenerationParams(), config, model="multilingual")
    planner.append(json.loads('"Smile \\ud83d"'))
    planner.append(json.loads('"\\ude00 now. "'))
    assert [item.text for item in planner.items] == ["Smile \U0001f600 now."]
    with pytest.raises(InvalidTextError, match="unpaired surrogate"):
        planner.append("A lone \ud800 surrogate. ")
    with pytest.raises(InvalidParameterError, match="delta must be a str"):
        IncrementalPlanner(GenerationParams(), config).append(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="max_new_tokens"):
        IncrementalPlanner(GenerationParams(max_new_tokens=100_000), config)
