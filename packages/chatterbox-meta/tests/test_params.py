"""Generation controls: defaults are the reference's; out-of-range values name the control."""

from __future__ import annotations

import math

import pytest

from chatterbox_vllm.errors import InvalidParameterError
from chatterbox_vllm.params import GenerationParams


def test_defaults_match_the_reference_generate() -> None:
    params = GenerationParams()
    assert (
        params.exaggeration,
        params.cfg_weight,
        params.temperature,
        params.top_p,
        params.min_p,
        params.repetition_penalty,
        params.max_new_tokens,
    ) == (0.5, 0.5, 0.8, 1.0, 0.05, 1.2, 1000)
    assert params.chunk_seed(3) is None
    assert GenerationParams(seed=7).chunk_seed(3) == 10


@pytest.mark.parametrize(
    ("control", "value", "message"),
    [
        ("temperature", 0.0, r"temperature must be in \(0, 5\]"),
        ("temperature", math.nan, "temperature must be in"),
        ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
        ("min_p", -0.1, r"min_p must be in \[0, 1\]"),
        ("cfg_weight", -1.0, r"cfg_weight must be in \[0, 3\]"),
        ("exaggeration", 2.5, r"exaggeration must be in \[0, 2\]"),
        ("repetition_penalty", 0.5, r"repetition_penalty must be in \[1, 10\]"),
        ("max_new_tokens", 0, r"max_new_tokens must be in \[1, 4096\]"),
        ("max_new_tokens", 10.5, "max_new_tokens must be an int"),
        ("seed", -1, "seed must be in"),
        ("temperature", "hot", "temperature must be a number"),
        ("max_tokens_per_expected_second", 0.0, "max_tokens_per_expected_second must be in"),
    ],
)
def test_out_of_range_controls_are_named(control: str, value: object, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        GenerationParams(**{control: value})
