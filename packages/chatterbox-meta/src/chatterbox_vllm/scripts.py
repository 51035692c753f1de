"""Which of the multilingual model's languages write with a given script: the advice of the error
for characters a tokenizer lacks (kept apart from :mod:`chatterbox_vllm.languages`, which raises
this package's errors, so that :mod:`chatterbox_vllm.errors` can use it)."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["SCRIPT_LANGUAGES", "languages_writing"]

SCRIPT_LANGUAGES: dict[str, tuple[str, ...]] = {
    "CJK": ("zh", "ja"),
    "HIRAGANA": ("ja",),
    "KATAKANA": ("ja",),
    "HANGUL": ("ko",),
    "CYRILLIC": ("ru",),
    "ARABIC": ("ar",),
    "HEBREW": ("he",),
    "DEVANAGARI": ("hi",),
    "GREEK": ("el",),
}
"""The multilingual model's languages that write with a script other than Latin, by the first
word of the Unicode names of that script's characters."""


def languages_writing(characters: Iterable[str]) -> tuple[str, ...]:
    """The multilingual model's languages whose script every one of ``characters`` belongs to
    (``你``: zh, ja; ``你`` and ``の``: ja), or ``()`` (Latin, symbols, mixed scripts)."""
    common: tuple[str, ...] | None = None
    for character in characters:
        script = unicodedata.name(character, "").split(" ", 1)[0]
        languages = SCRIPT_LANGUAGES.get(script, ())
        common = languages if common is None else tuple(c for c in common if c in languages)
        if not common:
            return ()
    return common or ()
