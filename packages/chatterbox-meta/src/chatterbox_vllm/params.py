"""Per-request generation controls, validated before any engine work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from chatterbox_vllm.errors import InvalidParameterError

# (low, high, low inclusive, high inclusive, what the control does)
_RANGES: dict[str, tuple[float, float, bool, bool, str]] = {
    "exaggeration": (0.0, 2.0, True, True, "emotion intensity; 0.5 is neutral"),
    "cfg_weight": (0.0, 3.0, True, True, "classifier-free guidance; 0 disables it"),
    "temperature": (0.0, 5.0, False, True, "sampling temperature"),
    "top_p": (0.0, 1.0, False, True, "nucleus sampling; 1 disables it"),
    "min_p": (0.0, 1.0, True, True, "min-p filter; 0 disables it"),
    "repetition_penalty": (1.0, 10.0, True, True, "1 disables it"),
    "max_tokens_per_expected_second": (
        1.0,
        1000.0,
        True,
        True,
        "speech-token cap per second of expected speech",
    ),
}
MAX_NEW_TOKENS_LIMIT = 4096
"""T3 has learned speech positions for 4096 tokens (plus start/stop)."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and style controls of one request; defaults are chatterbox-tts 0.1.2's ``generate``.

    ``max_new_tokens`` caps each chunk's speech tokens (25 per second of audio). With
    ``max_tokens_per_expected_second`` set, each chunk is further capped at that many tokens per
    second of speech its text is expected to take (characters / 15): a guard against run-away
    generations, used by ``bench`` because random weights never emit the stop token.
    ``seed`` makes a request reproducible (T3 sampling and S3Gen noise); chunk ``i`` uses
    ``seed + i``.
    """

    exaggeration: float = 0.5
    cfg_weight: float = 0.5
    temperature: float = 0.8
    top_p: float = 1.0
    min_p: float = 0.05
    repetition_penalty: float = 1.2
    max_new_tokens: int = 1000
    seed: int | None = None
    max_tokens_per_expected_second: float | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in _RANGES:
                if value is None and field.name == "max_tokens_per_expected_second":
                    continue
                _check_range(field.name, value)
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)

    def chunk_seed(self, chunk_index: int) -> int | None:
        return None if self.seed is None else self.seed + chunk_index


def _check_range(name: str, value: object) -> None:
    low, high, low_inclusive, high_inclusive, meaning = _RANGES[name]
    interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameterError(
            f"{name} must be a number in {interval} ({meaning}), got {type(value).__name__}"
        )
    ok = math.isfinite(value) and (value >= low if low_inclusive else value > low)
    ok = ok and (value <= high if high_inclusive else value < high)
    if not ok:
        raise InvalidParameterError(f"{name} must be in {interval} ({meaning}), got {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise InvalidParameterError(f"{name} must be in [{low}, {high}], got {value}")
