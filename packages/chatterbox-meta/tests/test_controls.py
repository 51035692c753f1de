"""The controls contract: one definition per control, from which params, CLI flags and the
``generate`` signature come; defaults are the reference's; bad values name the control."""

from __future__ import annotations

import inspect
import math

import pytest

from chatterbox_t3 import T3SamplingParams
from chatterbox_t3.errors import InvalidSamplingParameterError
from chatterbox_vllm import CONTROLS, ChatterboxTTS, GenerationParams
from chatterbox_vllm.cli import build_parser
from chatterbox_vllm.errors import InvalidParameterError


def test_defaults_match_the_reference_generate() -> None:
    params = GenerationParams()
    assert (
        params.exaggeration,
        params.cfg_weight,
        params.temperature,
        params.top_p,
        params.min_p,
        params.repetition_penalty,
    ) == (0.5, 0.5, 0.8, 1.0, 0.05, 1.2)  # chatterbox-tts 0.1.2's ChatterboxTTS.generate
    assert params.max_new_tokens is None  # the engine's budget
    assert params.chunk_seed(3) is None
    assert GenerationParams(seed=7).chunk_seed(3) == 10


@pytest.mark.parametrize(
    ("control", "value", "message"),
    [
        ("temperature", -0.1, r"temperature must be in \[0, 5\]"),
        ("temperature", 5.5, r"temperature must be in \[0, 5\]"),
        ("temperature", math.nan, "temperature must be in"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
        ("min_p", -0.1, r"min_p must be in \[0, 1\]"),
        ("cfg_weight", -1.0, r"cfg_weight must be in \[0, 3\]"),
        ("cfg_weight", 3.5, r"cfg_weight must be in \[0, 3\]"),
        ("exaggeration", 2.5, r"exaggeration must be in \[0, 2\]"),
        ("repetition_penalty", 0.5, r"repetition_penalty must be in \[1, 10\]"),
        ("max_new_tokens", 0, r"max_new_tokens must be in \[1, 4096\]"),
        ("max_new_tokens", 10.5, "max_new_tokens must be an int"),
        ("seed", -1, r"seed must be in \[0, 9223372036854775807\]"),
        ("seed", True, "seed must be an int"),
        ("temperature", "hot", "temperature must be a number"),
        ("max_tokens_per_expected_second", 0.0, "max_tokens_per_expected_second must be in"),
    ],
)
def test_out_of_range_controls_are_named(control: str, value: object, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        GenerationParams(**{control: value})


def test_numpy_scalars_are_numbers_of_the_controls_type() -> None:
    import numpy as np

    # A seed from rng.integers, a temperature from a float32 array: what the Python numbers are.
    params = GenerationParams.from_controls(
        seed=np.random.default_rng(0).integers(0, 100, dtype=np.int64),
        temperature=np.float32(0.5),
        top_k=np.int32(5),
        speed=np.float64(1.5),
    )
    assert (type(params.seed), type(params.temperature), type(params.top_k)) == (int, float, int)
    assert (params.temperature, params.top_k, params.speed) == (0.5, 5, 1.5)
    assert params == GenerationParams(seed=params.seed, temperature=0.5, top_k=5, speed=1.5)
    for control, value, message in (
        ("temperature", np.float32(6.0), r"temperature must be in \[0, 5\]"),
        ("seed", np.int64(-1), r"seed must be in \[0, "),
        ("seed", np.float64(3.0), "seed must be an int"),
        ("top_k", np.bool_(True), "top_k must be an int"),
    ):
        with pytest.raises(InvalidParameterError, match=message):
            GenerationParams(**{control: value})


def test_temperature_zero_is_greedy_and_accepted_everywhere() -> None:
    params = GenerationParams(temperature=0.0)
    assert params.t3_sampling(max_tokens=10, seed=None).temperature == 0.0


@pytest.mark.parametrize(
    "name", ["exaggeration", "cfg_weight", "temperature", "top_p", "min_p", "repetition_penalty"]
)
def test_the_product_accepts_exactly_what_t3_accepts(name: str) -> None:
    control = CONTROLS[name]
    span = control.high - control.low
    probes = [control.low - 0.01 * span, control.low, control.high, control.high + 0.01 * span]
    for value in probes:
        try:
            T3SamplingParams(**{name: value})
            t3_ok = True
        except InvalidSamplingParameterError:
            t3_ok = False
        try:
            GenerationParams(**{name: value})
            product_ok = True
        except InvalidParameterError:
            product_ok = False
        assert t3_ok == product_ok, (name, value)


def test_unknown_control_names_list_the_known_ones() -> None:
    with pytest.raises(
        InvalidParameterError,
        match="unknown generation control.*temprature.*the controls are exaggeration",
    ):
        GenerationParams.from_controls(temprature=0.5)


def test_generate_and_stream_take_every_control_by_name() -> None:
    from chatterbox_vllm.controls import ControlKwargs

    assert list(ControlKwargs.__annotations__) == list(CONTROLS)
    for method in (ChatterboxTTS.generate, ChatterboxTTS.stream, ChatterboxTTS.astream):
        kinds = {p.kind for p in inspect.signature(method).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD in kinds  # **controls: Unpack[ControlKwargs]


@pytest.mark.parametrize("command", ["speak", "bench"])
def test_cli_has_one_flag_per_control_with_its_range(command: str) -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    actions = {action.dest: action for action in sub._actions}
    for name, control in CONTROLS.items():
        action = actions[name]
        assert control.flag in action.option_strings
        assert control.interval in action.help
    args = parser.parse_args(
        [command, *(["x"] if command == "speak" else ["--text-file", "t"]), "--cfg-weight", "0.3"]
    )
    assert args.cfg_weight == 0.3 and args.temperature is None  # unset flags keep the defaults
