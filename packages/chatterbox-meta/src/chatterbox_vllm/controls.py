"""The controls contract: every per-request generation control, defined once.

Each control has one :class:`Control` entry here: its type, default, accepted range and meaning.
Everything else is generated from :data:`CONTROLS`: :class:`GenerationParams` (defaults and
validation), the CLI flags (:func:`add_control_arguments`), the ``generate``/``stream`` keyword
arguments (:meth:`GenerationParams.from_controls`) and the server's request schema. T3's sampling
controls take their range and default from the component that implements them
(:data:`chatterbox_t3.sampling.SAMPLING_LIMITS`, :class:`chatterbox_t3.T3SamplingParams`), so the
product can never accept a value T3 rejects or the other way round.

Defaults depend on the model a checkpoint holds: a control's ``default`` is the English model's
(chatterbox-tts 0.1.2's ``generate``), and :data:`MODEL_DEFAULTS` lists where the multilingual
model's (0.1.7's ``ChatterboxMultilingualTTS.generate``) differ. They apply to the controls a
caller leaves unset (:meth:`GenerationParams.from_controls` with ``model=``), so one definition per
control still holds. ``language`` is the multilingual model's language id (one of 23, the ids of
:data:`chatterbox_t3.multilingual_text.SUPPORTED_LANGUAGES`; unset means ``en``); the English
model accepts only ``en`` (or unset).

Rules worth knowing: ``temperature=0`` is greedy decoding; ``cfg_weight=0`` disables guidance (one
branch); ``seed`` makes a request reproducible, chunk ``i`` of a long text using ``seed + i``;
``max_new_tokens=None`` means the engine's budget (:class:`~chatterbox_vllm.config.EngineConfig`).
"""

from __future__ import annotations

import argparse
import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypedDict

from chatterbox_t3.sampling import SAMPLING_LIMITS, T3SamplingParams
from chatterbox_vllm.errors import InvalidParameterError
from chatterbox_vllm.languages import SUPPORTED_LANGUAGES, check_language_for_model
from chatterbox_vllm.models import ModelKind, check_model_kind

if TYPE_CHECKING:
    from chatterbox_t3.sampling import ControlLimit

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS_LIMIT = 4096
"""T3 has learned speech positions for 4096 tokens (plus start/stop)."""
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Control:
    """One generation control: ``kind`` is ``float``, ``int`` or ``str``; ``None`` is accepted
    (and is the default) when ``optional``; a number's range is ``[low, high]`` (``(low, high]``
    when ``low_open``), a string's accepted values are ``choices`` (``low``/``high`` unused)."""

    name: str
    kind: type
    default: float | int | str | None
    low: float
    high: float
    meaning: str
    low_open: bool = False
    optional: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def interval(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(self.choices) + "}"
        # An int control's bounds exactly (seed's 2**63 - 1, not %g's 9.22337e+18).
        low, high = (
            (str(int(self.low)), str(int(self.high)))
            if self.kind is int
            else (f"{self.low:g}", f"{self.high:g}")
        )
        return f"{'(' if self.low_open else '['}{low}, {high}]"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def default_for(self, model: ModelKind) -> float | int | str | None:
        """This control's default on ``model`` (:data:`MODEL_DEFAULTS`, else :attr:`default`)."""
        return MODEL_DEFAULTS.get(model, {}).get(self.name, self.default)

    def describe(self) -> str:
        """One line for ``--help`` and the server schema: meaning, range, default."""
        if self.choices is not None:
            return f"{self.meaning}; one of {self.interval}"
        default: object = self.default
        if self.default is None and self.optional:
            default = "the engine's"
        others = [
            f"{value:g} on the {model} model"
            for model, table in MODEL_DEFAULTS.items()
            if (value := table.get(self.name)) is not None and value != self.default
        ]
        if others:
            default = f"{default} ({', '.join(others)})"
        return f"{self.meaning}; {self.kind.__name__} in {self.interval}, default {default}"

    def accept(self, value: object) -> object:
        """``value`` as the control's Python type, once :meth:`check` accepts it: NumPy's scalars
        are numbers too (``np.int64`` from ``rng.integers``, ``np.float32`` from a float32 array),
        taken as the ``int`` or ``float`` they hold; a float for an int control stays an error."""
        if self.choices is None and type(value) not in (int, float) and not isinstance(value, bool):
            if self.kind is int and isinstance(value, numbers.Integral):
                value = int(value)
            elif self.kind is float and isinstance(value, numbers.Real):
                value = float(value)
        self.check(value)
        return value

    def check(self, value: object) -> None:
        """Raises :class:`InvalidParameterError` naming the control, the accepted range and the
        meaning when ``value`` is not acceptable."""
        if value is None and self.optional:
            return
        if self.choices is not None:
            if not isinstance(value, str) or value.lower() not in self.choices:
                shown = (
                    repr(value) if isinstance(value, str) else f"{type(value).__name__} {value!r}"
                )
                raise InvalidParameterError(
                    f"{self.name} must be one of {', '.join(self.choices)} ({self.meaning}), "
                    f"got {shown}"
                )
            return
        expected = "an int" if self.kind is int else "a number"
        wrong_type = isinstance(value, bool) or not isinstance(value, int | float)
        if self.kind is int and isinstance(value, float):
            wrong_type = True
        if wrong_type:
            raise InvalidParameterError(
                f"{self.name} must be {expected} in {self.interval} ({self.meaning}), got "
                f"{type(value).__name__} {value!r}"
            )
        assert isinstance(value, int | float)
        inside = math.isfinite(value) and value <= self.high
        inside = inside and (value > self.low if self.low_open else value >= self.low)
        if not inside:
            raise InvalidParameterError(
                f"{self.name} must be in {self.interval} ({self.meaning}), got {value!r}"
            )


def _sampling_control(name: str) -> Control:
    limit: ControlLimit = SAMPLING_LIMITS[name]
    default = getattr(T3SamplingParams(), name)
    return Control(name, float, default, limit.low, limit.high, limit.meaning, limit.low_open)


CONTROLS: dict[str, Control] = {
    control.name: control
    for control in (
        _sampling_control("exaggeration"),
        _sampling_control("cfg_weight"),
        _sampling_control("temperature"),
        _sampling_control("top_p"),
        Control(
            "top_k",
            int,
            T3SamplingParams().top_k,
            0,
            # T3 takes any k >= 0; past the speech vocabulary (8,194 tokens English, 6,563
            # Turbo) a k keeps every token, so a finite bound loses nothing.
            100_000,
            "keep only the k most likely speech tokens; 0 disables it",
        ),
        _sampling_control("min_p"),
        _sampling_control("repetition_penalty"),
        Control(
            "language",
            str,
            None,
            math.nan,
            math.nan,
            "language id of the text (the multilingual model speaks these 23, the English "
            "model only en; unset: en)",
            optional=True,
            choices=tuple(SUPPORTED_LANGUAGES),
        ),
        Control(
            "seed",
            int,
            None,
            0,
            MAX_SEED,
            "makes the output reproducible (T3 sampling and S3Gen noise; chunk i uses seed+i)",
            optional=True,
        ),
        Control(
            "max_new_tokens",
            int,
            None,
            1,
            MAX_NEW_TOKENS_LIMIT,
            "speech-token budget per chunk (25 tokens per second of audio)",
            optional=True,
        ),
        Control(
            "max_tokens_per_expected_second",
            float,
            None,
            1.0,
            1000.0,
            "caps each chunk at this many speech tokens per second its text is expected to "
            "take (characters / 15); a guard against run-away generations",
            optional=True,
        ),
        Control(
            "speed",
            float,
            1.0,
            0.25,
            4.0,
            "playback speed (OpenAI's range): the audio is time-stretched, its pitch unchanged; "
            "2 is twice as fast, 1 leaves it untouched",
        ),
    )
}
"""Every per-request control, in the order ``--help`` and the server schema list them."""

MODEL_DEFAULTS: dict[ModelKind, dict[str, float]] = {
    "english": {},
    "multilingual": {
        "exaggeration": 0.5,
        "cfg_weight": 0.5,
        "temperature": 0.8,
        "repetition_penalty": 2.0,
        "min_p": 0.05,
        "top_p": 1.0,
    },
    # ChatterboxTurboTTS.generate's defaults; Turbo has no CFG, exaggeration or min-p.
    "turbo": {
        "exaggeration": 0.0,
        "cfg_weight": 0.0,
        "temperature": 0.8,
        "repetition_penalty": 1.2,
        "min_p": 0.0,
        "top_p": 0.95,
        "top_k": 1000,
    },
}
"""Per-model defaults where they differ from :attr:`Control.default` (the English model's):
chatterbox-tts 0.1.7's ``ChatterboxMultilingualTTS.generate`` and ``ChatterboxTurboTTS.generate``
defaults. They apply only to controls a caller leaves unset."""

IGNORED_CONTROLS: dict[ModelKind, tuple[str, ...]] = {
    "turbo": ("cfg_weight", "exaggeration", "min_p"),
}
"""Controls a model does not have (Turbo: no guidance pair, no emotion input, no min-p). A
non-zero value given for one is logged as a warning and replaced by the model's default (0), as
chatterbox-tts's ``ChatterboxTurboTTS.generate`` does: a warning rather than an error, so a
request written for the standard model (a script, an OpenAI client sending the server's shared
schema) runs unchanged on Turbo; 0 is Turbo's own value and passes silently."""

for _model, _table in MODEL_DEFAULTS.items():
    for _name, _value in _table.items():
        CONTROLS[_name].check(_value)  # a per-model default is an accepted value


class ControlKwargs(TypedDict, total=False):
    """The controls as keyword arguments of ``generate`` / ``stream`` (``None``: the default)."""

    exaggeration: float | None
    cfg_weight: float | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None
    language: str | None
    seed: int | None
    max_new_tokens: int | None
    max_tokens_per_expected_second: float | None
    speed: float | None


assert list(ControlKwargs.__annotations__) == list(CONTROLS), "one keyword per control"


def _default(name: str) -> Any:
    return field(default=CONTROLS[name].default)


@dataclass(frozen=True)
class GenerationParams:
    """The controls of one request (see :data:`CONTROLS` for ranges and meanings); defaults are
    chatterbox-tts 0.1.2's (the English model's): build params for the multilingual model with
    :meth:`for_model` / :meth:`from_controls` ``(model="multilingual")``, which take the unset
    controls from :data:`MODEL_DEFAULTS`. Invalid values raise :class:`InvalidParameterError` on
    construction; ``language`` is stored lower-case."""

    exaggeration: float = _default("exaggeration")
    cfg_weight: float = _default("cfg_weight")
    temperature: float = _default("temperature")
    top_p: float = _default("top_p")
    top_k: int = _default("top_k")
    min_p: float = _default("min_p")
    repetition_penalty: float = _default("repetition_penalty")
    language: str | None = _default("language")
    seed: int | None = _default("seed")
    max_new_tokens: int | None = _default("max_new_tokens")
    max_tokens_per_expected_second: float | None = _default("max_tokens_per_expected_second")
    speed: float = _default("speed")

    def __post_init__(self) -> None:
        for name, control in CONTROLS.items():
            object.__setattr__(self, name, control.accept(getattr(self, name)))
        from chatterbox_vllm.speed import require_time_stretch

        require_time_stretch(self.speed)
        if self.language is not None and self.language != self.language.lower():
            object.__setattr__(self, "language", self.language.lower())

    @classmethod
    def from_controls(
        cls,
        controls: Mapping[str, Any] | None = None,
        *,
        model: ModelKind = "english",
        **more: Any,
    ) -> GenerationParams:
        """Builds params from control names (``None`` values mean "the default": ``model``'s,
        see :data:`MODEL_DEFAULTS`); an unknown name is an error listing the known ones, and a
        ``language`` the model does not speak is an error saying which model does."""
        given = {**(controls or {}), **more}
        unknown = sorted(set(given) - set(CONTROLS))
        if unknown:
            raise InvalidParameterError(
                f"unknown generation control(s) {', '.join(unknown)}; the controls are "
                f"{', '.join(CONTROLS)}"
            )
        model = check_model_kind(model)
        values = {name: value for name, value in given.items() if value is not None}
        ignored = {
            name: values.pop(name) for name in IGNORED_CONTROLS.get(model, ()) if name in values
        }
        for name, value in ignored.items():
            CONTROLS[name].accept(value)  # out of range is an error on every model
        if any(value != 0 for value in ignored.values()):
            logger.warning(
                "the %s model has no %s: ignoring %s (as chatterbox-tts does)",
                model,
                ", ".join(IGNORED_CONTROLS[model]),
                ", ".join(f"{name}={value}" for name, value in ignored.items() if value != 0),
            )
        for name, value in MODEL_DEFAULTS[model].items():
            values.setdefault(name, value)
        params = cls(**values)
        params.check_model(model)
        return params

    @classmethod
    def for_model(cls, model: ModelKind, **controls: Any) -> GenerationParams:
        """Params for ``model``: the given controls, the model's defaults for the rest."""
        return cls.from_controls(controls, model=model)

    def check_model(self, model: ModelKind) -> None:
        """Raises :class:`InvalidParameterError` when ``model`` cannot honour these params (a
        language other than ``en`` on the English model)."""
        check_language_for_model(self.language, check_model_kind(model))

    def with_controls(self, **controls: Any) -> GenerationParams:
        """A copy with some controls changed (``None`` leaves a control as it is)."""
        self.from_controls(controls)  # names and values checked
        return replace(self, **{k: v for k, v in controls.items() if v is not None})

    def chunk_seed(self, chunk_index: int) -> int | None:
        return None if self.seed is None else (self.seed + chunk_index) % (MAX_SEED + 1)

    def t3_sampling(self, *, max_tokens: int, seed: int | None) -> T3SamplingParams:
        """T3's sampling parameters for one chunk allowed ``max_tokens`` new tokens."""
        return T3SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            cfg_weight=self.cfg_weight,
            exaggeration=self.exaggeration,
            max_new_tokens=max_tokens,
            seed=seed,
        )


assert [f.name for f in fields(GenerationParams)] == list(CONTROLS), "one field per control"


def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per control (``--cfg-weight`` ...), with its range and default in ``--help``.
    Flags default to ``None`` so only the controls a user sets override the contract's defaults."""
    group = parser.add_argument_group(
        "generation controls (defaults: chatterbox-tts 0.1.2's; on the multilingual model, "
        "0.1.7's where noted)"
    )
    for control in CONTROLS.values():
        group.add_argument(
            control.flag,
            dest=control.name,
            type=control.kind,
            default=None,
            metavar="ID" if control.choices is not None else control.kind.__name__.upper(),
            help=control.describe(),
        )


def controls_from_namespace(args: argparse.Namespace) -> dict[str, Any]:
    """The controls a user set on the command line (by name), for :meth:`GenerationParams.from_controls`."""
    return {name: getattr(args, name) for name in CONTROLS if getattr(args, name, None) is not None}
