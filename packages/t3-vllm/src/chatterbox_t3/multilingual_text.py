"""Multilingual text front end: Chatterbox Multilingual's 23 languages.

Reproduces chatterbox-tts 0.1.7 (``punc_norm`` in ``mtl_tts.py`` and ``MTLTokenizer``): the text is
punctuation-normalised (:func:`normalize_multilingual_text`), lowercased, NFKD-decomposed, passed
through its language's step, prefixed with the language token ``[xx]``, its spaces become
``[SPACE]``, and the grapheme BPE (``grapheme_mtl_merged_expanded_v1.json``) encodes it. The
language steps:

- ``zh``: word segmentation with spacy-pkuseg (its words are joined with spaces, which become
  ``[SPACE]``), then every Chinese glyph becomes its Cangjie code from the checkpoint's
  ``Cangjie5_TC.json``, spelled ``[cj_x]...[cj_.]`` (a glyph sharing its code with earlier glyphs
  of the table gets their count as a suffix digit). Needs the ``multilingual`` extra.
- ``ja``: kanji become their hiragana reading (pykakasi 2.3.0; a reading that starts with は or へ
  gets a space before it), then NFKD again. Needs the ``multilingual`` extra.
- ``ko``: Hangul syllables are decomposed into conjoining jamo (standard library; NFKD has already
  done it, as in the reference) and the text is stripped.
- ``ru``: stress marks from ``russian_text_stresser``, which is not published on PyPI, so it cannot
  be part of the extra: without it Russian raises :class:`MissingLanguageDependencyError` unless the
  caller chooses ``missing_dependency="skip"`` (unstressed Russian, what the reference produces
  without it).
- ``he``: encoded as written. The reference calls ``dicta_onnx.Dicta()`` without the model path
  that every published dicta-onnx requires (the model itself is a separate download), so its
  diacritisation always fails and it encodes the text as written too; pointed text (niqqud) is
  kept as given.

Where the reference logs a warning and skips a step whose package is missing (a silent quality
drop), this module raises :class:`MissingLanguageDependencyError` naming the package and the extra;
``missing_dependency="skip"`` keeps the reference behaviour. :func:`check_language` validates a
language id and its dependency without loading anything, for a preflight.

Tags are read as the reference reads them: the whole text is lowercased first, so ``[laughter]``
and ``[sigh]`` in any case are the tag tokens while ``[UH]`` and ``[UM]`` (whose tokens are
capitalised) become the letters "[uh]", and Chinese word segmentation splits a tag like any other
word. Deliberate differences from the reference, both about text it would damage:

- ``language=None`` means English: the text gets the ``[en]`` token (the reference would encode
  it with no language token at all, an input the model never saw in training).
- No user text produces a control token. The framing tokens (``[START]``, ``[STOP]``, ``[UNK]``,
  ``[PAD]``...) are capitalised, so lowercasing already spells them out, as in the reference; a
  language token written in the text (``[fr]``) is spelled out too, where the reference encodes
  it as the language token in the middle of the prompt.

Characters the tokenizer has no token for raise :class:`UnsupportedCharactersError` by default,
as in :class:`~chatterbox_t3.text.EnglishTokenizer`; ``unknown="unk"`` maps them to ``[UNK]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from tokenizers import Tokenizer

from chatterbox_t3.errors import (
    CheckpointError,
    ConfigurationError,
    MissingCheckpointFileError,
    MissingLanguageDependencyError,
    UnsupportedLanguageError,
)
from chatterbox_t3.text import (
    CONTROL_TOKENS,
    SENTENCE_ENDINGS,
    SPACE,
    SPECIAL_TOKENS,
    START_TEXT,
    STOP_TEXT,
    UNKNOWN,
    check_unicode,
    control_pattern,
    decode_ids,
    encode_spaced,
    normalize_punctuation,
)
from chatterbox_t3.tokenizer_builder import CANGJIE_FILE, MULTILINGUAL_TOKENIZER_FILE

logger = logging.getLogger(__name__)

SUPPORTED_LANGUAGES: Mapping[str, str] = MappingProxyType(
    {
        "ar": "Arabic",
        "da": "Danish",
        "de": "German",
        "el": "Greek",
        "en": "English",
        "es": "Spanish",
        "fi": "Finnish",
        "fr": "French",
        "he": "Hebrew",
        "hi": "Hindi",
        "it": "Italian",
        "ja": "Japanese",
        "ko": "Korean",
        "ms": "Malay",
        "nl": "Dutch",
        "no": "Norwegian",
        "pl": "Polish",
        "pt": "Portuguese",
        "ru": "Russian",
        "sv": "Swedish",
        "sw": "Swahili",
        "tr": "Turkish",
        "zh": "Chinese",
    }
)
"""Chatterbox Multilingual's language ids and names (the reference's ``SUPPORTED_LANGUAGES``)."""

DEFAULT_LANGUAGE = "en"
"""The language of ``language=None``."""

MULTILINGUAL_EXTRA = "chatterbox-t3-vllm[multilingual]"
INSTALL_EXTRA = f"pip install '{MULTILINGUAL_EXTRA}'"

MULTILINGUAL_SENTENCE_ENDINGS = (*SENTENCE_ENDINGS, "、", "，", "。", "？", "！")
"""Characters after which the multilingual ``punc_norm`` adds no full stop (CJK ones included)."""

MissingDependencyPolicy = Literal["error", "skip"]


@dataclass(frozen=True)
class LanguageDependency:
    """An optional package one language's front end needs."""

    module: str
    package: str
    purpose: str
    on_pypi: bool


LANGUAGE_DEPENDENCIES: Mapping[str, LanguageDependency] = MappingProxyType(
    {
        "zh": LanguageDependency("spacy_pkuseg", "spacy-pkuseg", "word segmentation", True),
        "ja": LanguageDependency("pykakasi", "pykakasi", "kanji readings", True),
        "ru": LanguageDependency(
            "russian_text_stresser", "russian-text-stresser", "stress marks", False
        ),
    }
)

_CANGJIE_END = "[cj_.]"
MULTILINGUAL_CONTROLS = control_pattern(
    [*CONTROL_TOKENS, *(f"[{code}]" for code in SUPPORTED_LANGUAGES)]
)
"""Control tokens spelled out where user text writes them: the framing ones (which lowercasing
already keeps from matching) and the 23 language tokens (after lowercasing, "[fr]" in a text
would be the French token in the middle of the prompt)."""


# ------------------------------------------------------------------------- languages and policy


def normalize_multilingual_text(text: str) -> str:
    """The reference's multilingual ``punc_norm``, step for step: English's, except that text
    ending in 、，。？！ gets no extra full stop."""
    return normalize_punctuation(text, MULTILINGUAL_SENTENCE_ENDINGS)


def _check_policy(missing_dependency: str) -> None:
    if missing_dependency not in ("error", "skip"):
        raise ConfigurationError(
            f"missing_dependency must be 'error' or 'skip', got {missing_dependency!r}"
        )


def _missing_dependency_error(
    language: str, detail: str = "", *, problem: str | None = None, remedy: str | None = None
) -> MissingLanguageDependencyError:
    """The error for a language whose package (or its data: ``problem``) is absent, with how to
    get it (``remedy``, by default installing the package) or opt out."""
    dependency = LANGUAGE_DEPENDENCIES[language]
    name = SUPPORTED_LANGUAGES[language]
    if remedy is None and dependency.on_pypi:
        remedy = f"install it with {INSTALL_EXTRA}"
    elif remedy is None:
        remedy = (
            f"it is not published on PyPI (so {MULTILINGUAL_EXTRA} cannot include it); "
            "install it from its source"
        )
    opt_out = (
        f"or pass missing_dependency='skip' (chatterbox-vllm: --missing-language-dependency "
        f"skip) to encode {name} without {dependency.purpose} (what the reference does when "
        "the package is missing, at a cost in quality)"
    )
    remedy = f"{remedy}, {opt_out}" + (f" ({detail})" if detail else "")
    return MissingLanguageDependencyError(language, dependency.package, remedy, problem=problem)


def _importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (a preflight stays cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_language(
    language: str | None, *, missing_dependency: MissingDependencyPolicy = "error"
) -> str:
    """The normalised language id (lowercase, as the reference compares it; None is
    :data:`DEFAULT_LANGUAGE`), after checking it is one of the 23 and, unless
    ``missing_dependency="skip"``, that its optional package is installed. Loads nothing, so a
    product can call it before any model starts."""
    _check_policy(missing_dependency)
    if language is None:
        return DEFAULT_LANGUAGE
    if not isinstance(language, str) or language.lower() not in SUPPORTED_LANGUAGES:
        raise UnsupportedLanguageError(language, SUPPORTED_LANGUAGES)
    language = language.lower()
    dependency = LANGUAGE_DEPENDENCIES.get(language)
    if missing_dependency == "error" and dependency and not _importable(dependency.module):
        raise _missing_dependency_error(language)
    return language


def _import_dependency(language: str, policy: MissingDependencyPolicy) -> Any | None:
    """The language's package module, or None (with a warning) when it is missing and the policy
    is "skip"; an installed package that fails to import counts as missing."""
    dependency = LANGUAGE_DEPENDENCIES[language]
    try:
        return importlib.import_module(dependency.module)
    except ImportError as error:
        if policy == "error":
            raise _missing_dependency_error(language, f"import failed: {error}") from error
        logger.warning(
            "%s not available: %s text is encoded without %s",
            dependency.package,
            SUPPORTED_LANGUAGES[language],
            dependency.purpose,
        )
        return None


# ----------------------------------------------------------------------------- language steps


def _is_kanji(char: str) -> bool:
    """CJK Unified Ideographs (U+4E00..U+9FFF), the reference's kanji test."""
    return 0x4E00 <= ord(char) <= 0x9FFF


def decompose_hangul(text: str) -> str:
    """Hangul syllables as conjoining jamo (initial, medial, optional final), by the Unicode
    composition formula, then stripped (the reference's Korean step)."""
    out = []
    for char in text:
        # The reference's range runs to U+D7AF, past the last syllable (U+D7A3).
        if not 0xAC00 <= ord(char) <= 0xD7AF:
            out.append(char)
            continue
        offset = ord(char) - 0xAC00
        out.append(chr(0x1100 + offset // (21 * 28)))
        out.append(chr(0x1161 + offset % (21 * 28) // 28))
        if offset % 28:
            out.append(chr(0x11A7 + offset % 28))
    return "".join(out).strip()


class JapaneseReading:
    """Kanji -> hiragana with pykakasi; kana and everything else are kept."""

    def __init__(self, pykakasi: Any) -> None:
        self._kakasi = pykakasi.kakasi()

    def __call__(self, text: str) -> str:
        out = []
        for part in self._kakasi.convert(text):
            original, reading = part["orig"], part["hira"]
            if any(_is_kanji(c) for c in original):
                # The reference separates the particles は/へ (read "wa"/"e") with a space.
                out.append(" " + reading if reading[:1] in ("は", "へ") else reading)
            else:
                out.append(original)
        return unicodedata.normalize("NFKD", "".join(out))


class CangjieTable:
    """``Cangjie5_TC.json``: a JSON list of ``"glyph\\tcode[\\t...]"`` strings."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise MissingCheckpointFileError(f"Cangjie table not found: {path}")
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            pairs = [entry.split("\t")[:2] for entry in entries]
            self._code_of = {glyph: code for glyph, code in pairs}
        except (ValueError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"{path} is not a Cangjie table ({error}); expected {CANGJIE_FILE}, a JSON list "
                'of "glyph<TAB>code" strings'
            ) from None
        # Glyphs sharing a code, in file order: a glyph's position among them is its suffix.
        self._glyphs_of: dict[str, list[str]] = {}
        for glyph, code in pairs:
            self._glyphs_of.setdefault(code, []).append(glyph)

    def __len__(self) -> int:
        return len(self._code_of)

    def code(self, glyph: str) -> str | None:
        """The glyph's code, with the index suffix when earlier glyphs share it; None if absent."""
        code = self._code_of.get(glyph)
        if code is None:
            return None
        index = self._glyphs_of[code].index(glyph)
        return code + str(index) if index > 0 else code

    def spell(self, text: str) -> str:
        """Every glyph of category Lo with a code becomes ``[cj_c]...[cj_.]``; the rest stays."""
        out = []
        for char in text:
            code = self.code(char) if unicodedata.category(char) == "Lo" else None
            out.append(char if code is None else "".join(f"[cj_{c}]" for c in code) + _CANGJIE_END)
        return "".join(out)


class ChineseCangjie:
    """Segment with pkuseg (words joined by spaces), then spell glyphs in Cangjie codes."""

    def __init__(self, table: CangjieTable, segmenter: Any | None) -> None:
        self._table = table
        self._segmenter = segmenter

    def __call__(self, text: str) -> str:
        if self._segmenter is not None and text:
            text = " ".join(self._segmenter.cut(text))
        return self._table.spell(text)


def _pkuseg_segmenter(module: Any, policy: MissingDependencyPolicy) -> Any | None:
    """spacy-pkuseg's default model (``spacy_ontonotes``, the reference's ``pkuseg()``), which
    pkuseg downloads from GitHub into ``PKUSEG_HOME`` (``~/.pkuseg``) on first use."""
    try:
        return module.pkuseg()
    except Exception as error:  # a failed download surfaces as any network/IO error
        home = getattr(getattr(module, "config", None), "pkuseg_home", "~/.pkuseg")
        problem = (
            f"needs spacy-pkuseg's segmentation model 'spacy_ontonotes', which is not in "
            f"PKUSEG_HOME ({home}) and could not be downloaded ({type(error).__name__}: "
            f"{str(error)[:200]})"
        )
        remedy = (
            "put spacy_ontonotes.zip and its unpacked folder spacy_ontonotes/ there (or point "
            "PKUSEG_HOME at a directory holding them; the README's 'Chinese without internet "
            "access' says how to ship them)"
        )
        if policy == "error":
            raise _missing_dependency_error("zh", problem=problem, remedy=remedy) from None
        logger.warning("Chinese is encoded without word segmentation: it %s", problem)
        return None


class RussianStress:
    """Stress marks with ``russian_text_stresser`` (the reference's call)."""

    def __init__(self, module: Any) -> None:
        stresser_module = importlib.import_module(f"{module.__name__}.text_stresser")
        self._stresser = stresser_module.RussianTextStresser()

    def __call__(self, text: str) -> str:
        return str(self._stresser.stress_text(text))


def _identity(text: str) -> str:
    return text


# ---------------------------------------------------------------------------------- tokenizer


class MultilingualTokenizer:
    """Chatterbox Multilingual's grapheme tokenizer with its per-language front end.

    ``cangjie_file``: Chinese's code table; None looks for ``Cangjie5_TC.json`` next to
    ``tokenizer_file`` (as the checkpoint lays them out). ``text_vocab_size``: T3's text-embedding
    rows; a tokenizer with ids beyond them belongs to another model. ``unknown``: "error" (raise
    :class:`UnsupportedCharactersError`) or "unk" (the reference's ``[UNK]``).
    ``missing_dependency``: "error" (raise :class:`MissingLanguageDependencyError`) or "skip" (the
    reference: warn and encode without the step). Language steps load on first use of their
    language.
    """

    def __init__(
        self,
        tokenizer_file: str | Path,
        cangjie_file: str | Path | None = None,
        *,
        unknown: Literal["error", "unk"] = "error",
        text_vocab_size: int | None = None,
        missing_dependency: MissingDependencyPolicy = "error",
    ) -> None:
        if unknown not in ("error", "unk"):
            raise ConfigurationError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        _check_policy(missing_dependency)
        self.unknown = unknown
        self.missing_dependency: MissingDependencyPolicy = missing_dependency
        path = Path(tokenizer_file)
        self._tokenizer = _load_tokenizer(path)
        vocab = self._tokenizer.get_vocab()
        _check_vocabulary(path, vocab, text_vocab_size)
        self.start_id = vocab[START_TEXT]
        self.stop_id = vocab[STOP_TEXT]
        self.unknown_id = vocab[UNKNOWN]
        self.space_id = vocab[SPACE]
        self.vocab_size = self._tokenizer.get_vocab_size()
        self._cangjie_file = Path(cangjie_file) if cangjie_file else path.parent / CANGJIE_FILE
        if cangjie_file is not None and not self._cangjie_file.is_file():
            raise MissingCheckpointFileError(f"Cangjie table not found: {self._cangjie_file}")
        self._steps: dict[str, Callable[[str], str]] = {}
        self._failed_steps: dict[str, MissingLanguageDependencyError] = {}
        self._steps_lock = threading.Lock()

    # -- the pipeline

    def encode_text(self, text: str, language: str | None = None) -> list[int]:
        """:class:`~chatterbox_t3.text.TextEncoder`: :func:`normalize_multilingual_text`, then
        :meth:`encode`. Ids without the start/stop tokens (the engine adds them)."""
        language = check_language(language, missing_dependency=self.missing_dependency)
        return self.encode(normalize_multilingual_text(text), language)

    def encode(self, text: str, language: str | None = None) -> list[int]:
        """Ids of already-normalised ``text`` in ``language`` (the reference's ``encode``; a
        language token written in the text is spelled out, see the module docstring)."""
        check_unicode(text)
        language = check_language(language, missing_dependency=self.missing_dependency)
        spaced = self.preprocess(text, language).replace(" ", SPACE)
        return encode_spaced(
            self._tokenizer,
            spaced,
            text,
            self.unknown,
            self.unknown_id,
            controls=MULTILINGUAL_CONTROLS,
            prefix=f"[{language}]",
        )

    def preprocess(self, text: str, language: str) -> str:
        """Lowercase, NFKD, then the language step, on the whole text (the reference's order:
        a tag is lowercased and, in Chinese, segmented like any other word)."""
        return self._step(language)(unicodedata.normalize("NFKD", text.lower()))

    def decode(self, ids: list[int]) -> str:
        """The reference's ``decode`` (language steps are not undone)."""
        return decode_ids(self._tokenizer, ids)

    # -- language steps

    def _step(self, language: str) -> Callable[[str], str]:
        """The language's step, built once (pykakasi and pkuseg load dictionaries/models)."""
        with self._steps_lock:
            if language in self._failed_steps:
                raise self._failed_steps[language]  # tried once (a download is not retried)
            if language not in self._steps:
                try:
                    self._steps[language] = self._build_step(language)
                except MissingLanguageDependencyError as error:
                    self._failed_steps[language] = error
                    raise
            return self._steps[language]

    def _build_step(self, language: str) -> Callable[[str], str]:
        if language == "ko":
            return decompose_hangul
        if language not in LANGUAGE_DEPENDENCIES:
            return _identity
        if language == "zh":
            return self._chinese_step()
        module = _import_dependency(language, self.missing_dependency)
        if module is None:
            return _identity
        if language == "ja":
            return JapaneseReading(module)
        return RussianStress(module)

    def _chinese_step(self) -> Callable[[str], str]:
        if not self._cangjie_file.is_file():
            raise MissingCheckpointFileError(
                f"Chinese needs the checkpoint's Cangjie table {CANGJIE_FILE}, not found at "
                f"{self._cangjie_file} (pass cangjie_file=...)"
            )
        table = CangjieTable(self._cangjie_file)
        module = _import_dependency("zh", self.missing_dependency)
        segmenter = None if module is None else _pkuseg_segmenter(module, self.missing_dependency)
        return ChineseCangjie(table, segmenter)


def _load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise MissingCheckpointFileError(f"multilingual tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for any unreadable file
        raise CheckpointError(
            f"{path} is not a tokenizer file the tokenizers library can read ({error}); expected "
            f"Chatterbox Multilingual's {MULTILINGUAL_TOKENIZER_FILE}"
        ) from None


def _check_vocabulary(path: Path, vocab: dict[str, int], text_vocab_size: int | None) -> None:
    """The special and language tokens are there (an English ``tokenizer.json`` has no language
    tokens and would encode "[fr]" as letters) and every id fits T3's text embedding."""
    required = [*SPECIAL_TOKENS, *(f"[{code}]" for code in SUPPORTED_LANGUAGES)]
    missing = [t for t in required if t not in vocab]
    if missing:
        raise CheckpointError(
            f"{path} lacks the tokens {missing}: it is not Chatterbox Multilingual's "
            f"{MULTILINGUAL_TOKENIZER_FILE} (which has {', '.join(SPECIAL_TOKENS)} and a "
            "language token [xx] for each of the 23 languages)"
        )
    largest = max(vocab.values())
    if text_vocab_size is not None and largest >= text_vocab_size:
        raise CheckpointError(
            f"{path} has token ids up to {largest}, but T3 has {text_vocab_size} text tokens: "
            "the tokenizer belongs to another model; use the checkpoint's own"
        )
