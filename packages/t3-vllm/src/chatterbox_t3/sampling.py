"""Sampling semantics: the reference's knobs, how they map onto vLLM, and output clean-up.

Reference decode step (``T3.inference``, facts §7.8-7.12), and where each piece happens here:

1. ``l = cond + w * (cond - uncond)``              -> ``compute_logits`` (:mod:`chatterbox_t3.cfg`)
2. ``l / temperature``                             -> vLLM sampler (temperature)
3. repetition penalty over {BOS} + generated ids   -> vLLM ``repetition_penalty``
4. min-p, then top-p, then softmax + multinomial   -> vLLM ``min_p`` / ``top_p`` / sampler
5. stop when 6562 is sampled                       -> ``stop_token_ids=[6562]``

Equivalences that make the mapping exact:

* vLLM applies the penalty before the temperature, the reference after; dividing by a positive
  temperature keeps every logit's sign, so the two orders give the same values.
* vLLM's repetition penalty covers prompt *and* output ids. The prompt holds the conditioning
  placeholder, text ids and BOS: placeholder/text logits are ``-inf`` (penalised ``-inf`` stays
  ``-inf``) and BOS (6561) is in the reference's set too, so the penalised set is the same.
* ``ignore_eos=True``: the derived tokenizer has no EOS, and id 0 is an ordinary speech code; the
  stop token is only ``stop_token_ids``. ``detokenize=False``: outputs are ids.
* ``temperature=0`` is accepted and means greedy (the reference divides by it, so it has no 0);
  ``seed`` gives a request its own generator (the reference uses the global RNG, so seeded runs are
  reproducible here but not bit-identical to the reference's random draws).

Chatterbox Turbo (``T3.inference_turbo``, HF logits processors in this order):

1. ``l / temperature``; 2. top-k (``top_k=1000``); 3. top-p (0.95); 4. repetition penalty over
{BOS} at the first step and the generated ids after it; 5. softmax + multinomial; stop on 6562.

vLLM runs the penalty *first*, then temperature, then top-k and top-p. Penalty and temperature
commute (as above), but top-k / top-p do not: the reference chooses its top-k / nucleus set from
the *unpenalised* logits and then penalises inside that set, vLLM chooses the set from the
penalised logits. So a repeated token near the cut can be in one set and not in the other, and
the probabilities renormalised over the nucleus differ; with ``top_k=1`` (or a tiny ``top_p``)
the reference ignores the penalty entirely while vLLM keeps it. Both are the same distribution
family and the same greedy choice without truncation (``temperature=0`` here is the argmax of the
penalised logits, which is what the reference's processors give with ``top_k=0, top_p=1`` and an
argmax in place of its multinomial draw). vLLM's penalised set also keeps BOS (it is in the
prompt) after the first step, where the reference drops it: only the never-trained logit of the
start-of-speech id differs. ``cfg_weight``, ``exaggeration`` and ``min_p`` are not inputs of Turbo:
its requests have one row and no emotion input, and :meth:`T3SamplingParams.to_vllm` passes
``min_p=0`` for it; whether setting them is an error or a warning is the caller's rule.

Output clean-up (:func:`valid_speech_tokens`) follows the reference's ``drop_invalid_tokens`` and
``tokens < 6561`` filter. The reference crashes when the model emits the start-of-speech id twice;
here everything up to and including the *last* start-of-speech id is dropped (the single-id rule
applied repeatedly), so ids >= 6561 never reach the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatterbox_t3.cfg import CFG_WEIGHT_KEY, DEFAULT_CFG_WEIGHT
from chatterbox_t3.config import AnyT3Config, ModelKind, TurboT3Config
from chatterbox_t3.errors import InvalidSamplingParameterError

if TYPE_CHECKING:
    from vllm import SamplingParams


@dataclass(frozen=True)
class ControlLimit:
    """The accepted range of one sampling control and what it does (the single rule for it:
    the product's controls contract and its CLI/server schema are generated from these)."""

    low: float
    high: float
    meaning: str
    low_open: bool = False

    @property
    def interval(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, name: str, value: object) -> None:
        """Raises :class:`InvalidSamplingParameterError` naming ``name``, the accepted interval
        and what the control does."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidSamplingParameterError(
                f"{name} must be a number in {self.interval} ({self.meaning}), got "
                f"{type(value).__name__} {value!r}"
            )
        if not math.isfinite(value):
            raise InvalidSamplingParameterError(
                f"{name} must be finite, in {self.interval} ({self.meaning}), got {value!r}"
            )
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high:
            raise InvalidSamplingParameterError(
                f"{name} must lie in {self.interval} ({self.meaning}), got {value!r}"
            )


SAMPLING_LIMITS: dict[str, ControlLimit] = {
    # 0 is greedy (the reference divides by it and so has no 0); beyond 5 sampling is noise.
    "temperature": ControlLimit(0.0, 5.0, "sampling temperature; 0 is greedy"),
    "top_p": ControlLimit(0.0, 1.0, "nucleus sampling; 1 disables it", low_open=True),
    "min_p": ControlLimit(0.0, 1.0, "min-p filter; 0 disables it"),
    # Below 1 a "penalty" would reward repetition, which only ever loops an utterance.
    "repetition_penalty": ControlLimit(
        1.0, 10.0, "penalty on repeated speech tokens; 1 disables it"
    ),
    # Guidance extrapolates cond - uncond; past 3 the logits leave the trained distribution.
    "cfg_weight": ControlLimit(0.0, 3.0, "classifier-free guidance weight; 0 disables it"),
    "exaggeration": ControlLimit(0.0, 2.0, "emotion intensity; 0.5 is neutral"),
}
"""Accepted range of each float control of :class:`T3SamplingParams`."""


@dataclass(frozen=True)
class T3SamplingParams:
    """Per-request generation settings; defaults are ``ChatterboxTTS.generate``'s."""

    temperature: float = 0.8
    """> 0 scales logits like the reference; 0 means greedy."""
    top_p: float = 1.0
    min_p: float = 0.05
    repetition_penalty: float = 1.2
    cfg_weight: float = DEFAULT_CFG_WEIGHT
    """Classifier-free guidance weight; 0 disables CFG (one start-of-speech token, cond logits)."""
    exaggeration: float = 0.5
    """Emotion exaggeration fed to the conditioning encoder (0.5 = neutral)."""
    max_new_tokens: int = 1000
    seed: int | None = None
    top_k: int = 0
    """Keep the ``top_k`` most likely tokens (0: all; the English and multilingual references
    have no top-k, Turbo's default is 1000)."""

    def __post_init__(self) -> None:
        for name, limit in SAMPLING_LIMITS.items():
            limit.check(name, getattr(self, name))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidSamplingParameterError(
                f"top_k must be an int >= 0 (keeps the k most likely speech tokens; 0 disables "
                f"it), got {self.top_k!r}"
            )
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InvalidSamplingParameterError(
                f"max_new_tokens must be an int, got {self.max_new_tokens!r}"
            )
        if self.max_new_tokens < 1:
            raise InvalidSamplingParameterError(
                f"max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise InvalidSamplingParameterError(f"seed must be an int or None, got {self.seed!r}")

    @classmethod
    def for_model(cls, model: ModelKind, **overrides: object) -> T3SamplingParams:
        """The reference's defaults for ``model`` (``ChatterboxTTS.generate``,
        ``ChatterboxMultilingualTTS.generate`` or ``ChatterboxTurboTTS.generate``), with
        ``overrides``."""
        defaults = MODEL_SAMPLING_DEFAULTS.get(model)
        if defaults is None:
            raise InvalidSamplingParameterError(
                f"model must be one of {sorted(MODEL_SAMPLING_DEFAULTS)}, got {model!r}"
            )
        return cls(**{**defaults, **overrides})  # type: ignore[arg-type]

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_weight > 0.0

    def check_against(self, config: AnyT3Config) -> None:
        """Limits that depend on the model (speech position table)."""
        if self.max_new_tokens > config.max_speech_tokens:
            raise InvalidSamplingParameterError(
                f"max_new_tokens must be <= {config.max_speech_tokens} (the model's speech "
                f"positions), got {self.max_new_tokens}"
            )

    def to_vllm(self, config: AnyT3Config, max_tokens: int) -> SamplingParams:
        """vLLM parameters for one request allowed ``max_tokens`` new tokens (Turbo: no CFG
        weight and no min-p, which it does not use)."""
        from vllm import SamplingParams

        turbo = isinstance(config, TurboT3Config)
        return SamplingParams(
            n=1,
            temperature=float(self.temperature),
            top_k=self.top_k if self.top_k > 0 else -1,
            top_p=float(self.top_p),
            min_p=0.0 if turbo else float(self.min_p),
            repetition_penalty=float(self.repetition_penalty),
            max_tokens=max_tokens,
            seed=self.seed,
            stop_token_ids=[config.stop_speech_token],
            ignore_eos=True,
            detokenize=False,
            skip_special_tokens=False,
            extra_args=None if turbo else {CFG_WEIGHT_KEY: float(self.cfg_weight)},
        )


MODEL_SAMPLING_DEFAULTS: dict[str, dict[str, float | int]] = {
    "english": {},
    "multilingual": {
        "temperature": 0.8,
        "top_p": 1.0,
        "min_p": 0.05,
        "repetition_penalty": 2.0,
        "cfg_weight": 0.5,
        "exaggeration": 0.5,
    },
    "turbo": {
        "temperature": 0.8,
        "top_k": 1000,
        "top_p": 0.95,
        "min_p": 0.0,
        "repetition_penalty": 1.2,
        "cfg_weight": 0.0,
        "exaggeration": 0.0,
    },
}
"""The reference ``generate`` defaults of each model kind (fields of :class:`T3SamplingParams`)."""


def valid_speech_tokens(raw_token_ids: Sequence[int], config: AnyT3Config) -> tuple[int, ...]:
    """Speech codes the decoder can use, from T3's raw output (reference post-processing)."""
    return tuple(raw_token_ids[i] for i in valid_speech_indices(raw_token_ids, config))


def valid_speech_indices(raw_token_ids: Sequence[int], config: AnyT3Config) -> tuple[int, ...]:
    """Indices into ``raw_token_ids`` of the codes :func:`valid_speech_tokens` keeps."""
    ids = list(raw_token_ids)
    start = 0
    starts = [i for i, t in enumerate(ids) if t == config.start_speech_token]
    if starts:
        start = starts[-1] + 1
    end = len(ids)
    if config.stop_speech_token in ids:
        end = ids.index(config.stop_speech_token)
    return tuple(i for i in range(start, end) if ids[i] < config.num_valid_speech_tokens)
