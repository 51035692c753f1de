"""The languages of the multilingual model (chatterbox-tts 0.1.7's ``SUPPORTED_LANGUAGES``).

The ids come from T3's multilingual text front end (``chatterbox_t3.multilingual_text``), which
encodes them; the ``language`` control (:mod:`chatterbox_vllm.controls`) accepts exactly these.
"""

from __future__ import annotations

from chatterbox_t3.multilingual_text import SUPPORTED_LANGUAGES
from chatterbox_vllm.errors import InvalidParameterError

__all__ = ["SUPPORTED_LANGUAGES", "check_language_for_model", "language_listing"]

ENGLISH_MODEL_LANGUAGES = frozenset({"en"})
"""What the English model speaks (``language=None`` means the same)."""


def language_listing() -> str:
    """``ar (Arabic), da (Danish), ...`` for error messages and ``--help``."""
    return ", ".join(f"{code} ({name})" for code, name in SUPPORTED_LANGUAGES.items())


def check_language_for_model(language: str | None, model: str) -> None:
    """A language the model can speak: any of the 23 on the multilingual model, only ``en`` (or
    ``None``) on the English one; else :class:`InvalidParameterError` saying what to do."""
    if language is None or model == "multilingual" or language in ENGLISH_MODEL_LANGUAGES:
        return
    name = SUPPORTED_LANGUAGES.get(language, language)
    raise InvalidParameterError(
        f"language {language!r} ({name}) needs the multilingual model, but the loaded checkpoint "
        f"is the {model} model (it speaks only 'en'); load the multilingual checkpoint "
        "(--model multilingual, ChatterboxTTS.from_pretrained(model='multilingual'), or a "
        "directory with t3_mtl23ls_v2.safetensors) or leave language unset"
    )
