"""Text front end: punctuation normalisation and the English tokenizer.

Both reproduce chatterbox-tts 0.1.2 (``punc_norm`` in ``tts.py`` and ``EnTokenizer``) exactly; the one
deliberate difference is that characters the tokenizer cannot represent are rejected by default
(:class:`~chatterbox_t3.errors.UnsupportedCharactersError` names them) instead of silently becoming
``[UNK]``, which the model was not trained to speak. ``EnglishTokenizer(path, unknown="unk")`` keeps
the reference behaviour. Text that is not valid Unicode (a lone surrogate) is rejected by both with
:class:`~chatterbox_t3.errors.MalformedTextError` naming the position and code point (the Rust
tokenizer would raise a bare ``TypeError``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

from tokenizers import Tokenizer

from chatterbox_t3.errors import (
    CheckpointError,
    ConfigurationError,
    MalformedTextError,
    MissingCheckpointFileError,
    UnsupportedCharactersError,
    UnsupportedLanguageError,
)

logger = logging.getLogger(__name__)

START_TEXT = "[START]"
STOP_TEXT = "[STOP]"
UNKNOWN = "[UNK]"
SPACE = "[SPACE]"

EMPTY_TEXT_REPLACEMENT = "You need to add some text for me to talk."
"""What the reference speaks for an empty string (the engine rejects empty text instead)."""

# Applied in this order, as in the reference; "..." and ";" can leave double spaces on purpose.
_PUNCTUATION_REPLACEMENTS = (
    ("...", ", "),
    ("…", ", "),
    (":", ","),
    (" - ", ", "),
    (";", ", "),
    ("—", "-"),
    ("–", "-"),
    (" ,", ","),
    ("“", '"'),
    ("”", '"'),
    ("‘", "'"),
    ("’", "'"),
)
SENTENCE_ENDINGS = (".", "!", "?", "-", ",")
"""Characters after which English ``punc_norm`` adds no full stop."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(text: str) -> None:
    """Raise :class:`MalformedTextError` at the first lone surrogate of ``text``. A Python ``str``
    never holds a valid surrogate pair (those decode to one code point), so any surrogate is one."""
    match = _SURROGATE.search(text)
    if match is not None:
        raise MalformedTextError(match.start(), match.group())


SILENT_CHARACTERS = {
    "\ufeff": "byte-order mark / zero-width no-break space",
    "\u200b": "zero-width space",
    "\u2060": "word joiner",
    "\u00ad": "soft hyphen",
}
"""Invisible characters that pasted text carries and that have no sound: removed before
anything else (neither tokenizer has a token for them). Other format characters (e.g. the
zero-width joiners some scripts spell with) are kept, and refused by name if unrepresentable."""
_SILENT = str.maketrans(dict.fromkeys(SILENT_CHARACTERS, None))


def strip_silent_characters(text: str) -> str:
    """``text`` without :data:`SILENT_CHARACTERS`."""
    return text.translate(_SILENT)


def normalize_punctuation(
    text: str,
    sentence_endings: tuple[str, ...],
    *,
    replacements: tuple[tuple[str, str], ...] = _PUNCTUATION_REPLACEMENTS,
    strip_silent: bool = True,
) -> str:
    """The reference's ``punc_norm``, step for step; English and multilingual differ only in which
    characters already end a sentence (the multilingual one adds CJK punctuation), Turbo in its
    ``replacements`` (it keeps ``...``, `` - `` and ``;``) and in keeping the silent characters
    (``strip_silent=False``: its byte-level BPE spells them, as its reference does)."""
    # Checked on the raw text so the reported position is the caller's.
    check_unicode(text)
    if strip_silent:
        text = strip_silent_characters(text)
    if len(text) == 0:
        return EMPTY_TEXT_REPLACEMENT
    # Checked before whitespace is collapsed, so a leading space prevents capitalisation.
    if text[0].islower():
        text = text[0].upper() + text[1:]
    text = " ".join(text.split())
    for old, new in replacements:
        text = text.replace(old, new)
    text = text.rstrip(" ")
    if not text.endswith(sentence_endings):
        text += "."
    return text


def normalize_text(text: str) -> str:
    """Clean punctuation the way the reference's English ``punc_norm`` does, step for step."""
    return normalize_punctuation(text, SENTENCE_ENDINGS)


SPECIAL_TOKENS = (START_TEXT, STOP_TEXT, UNKNOWN, SPACE)


class TextEncoder(Protocol):
    """What the engine needs of a text front end, English or multilingual: the text's ids (without
    the start/stop tokens, which the engine adds), those two ids, and for word timings the space
    id and a decoder."""

    start_id: int
    stop_id: int
    space_id: int
    """``[SPACE]``: what separates words (word timings group the tokens between them)."""

    def encode_text(self, text: str, language: str | None = None) -> list[int]:
        """Normalise ``text`` and return its ids for ``language`` (None: the checkpoint's
        default)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` as the model spells it (after normalisation)."""
        ...


def control_pattern(controls: Iterable[str]) -> re.Pattern[str]:
    """A pattern of the control tokens' spellings (longest first), to find them in user text."""
    alternatives = sorted(set(controls), key=len, reverse=True)
    return re.compile("|".join(re.escape(c) for c in alternatives) or r"(?!)")


def encode_spaced(
    tokenizer: Tokenizer,
    spaced: str,
    text: str,
    unknown: str,
    unknown_id: int,
    *,
    controls: re.Pattern[str] | None = None,
    prefix: str = "",
) -> list[int]:
    """Ids of ``prefix`` + ``spaced`` (``text`` prepared for the tokenizer: spaces as
    ``[SPACE]``); with ``unknown="error"`` the characters that became ``[UNK]`` raise
    :class:`UnsupportedCharactersError` (naming them in ``text``), with ``"unk"`` they stay.

    A control token written in ``spaced`` (a match of ``controls``: e.g. ``[START]``) is
    spelled out, its brackets and name encoded apart, so that no user text can put a start,
    stop or language token into the prompt; ``prefix`` (the language token) is encoded as is."""
    ids: list[int] = list(tokenizer.encode(prefix).ids) if prefix else []
    offsets: list[tuple[int, int]] = [(0, 0)] * len(ids)
    pieces: list[tuple[int, str]] = []
    last = 0
    for match in (controls or _NO_CONTROLS).finditer(spaced):
        pieces.append((last, spaced[last : match.start()]))
        name = match.group()
        pieces += [(match.start(), "["), (match.start() + 1, name[1:-1]), (match.end() - 1, "]")]
        last = match.end()
    pieces.append((last, spaced[last:]))
    for start, piece in pieces:
        if not piece:
            continue
        encoding = tokenizer.encode(piece)
        ids += encoding.ids
        offsets += [(start + a, start + b) for a, b in encoding.offsets]
    if unknown == "error" and unknown_id in ids:
        characters = unrepresentable_characters(spaced, ids, offsets, unknown_id)
        if characters:
            raise UnsupportedCharactersError(characters, text)
    return ids


_NO_CONTROLS = re.compile(r"(?!)")
CONTROL_TOKENS = ("[START]", "[STOP]", "[UNK]", "[PAD]", "[SEP]", "[CLS]", "[MASK]")
"""Tokens that frame or pad a prompt. Written in user text they are spelled out, never encoded
as the token: the English reference (chatterbox-tts 0.1.2) encodes them, so a "[STOP]" in a text
put a stop token in the middle of its prompt. ``[SPACE]`` is not one: every space becomes it."""
ENGLISH_CONTROLS = control_pattern(CONTROL_TOKENS)


def unrepresentable_characters(
    spaced: str, ids: list[int], offsets: list[tuple[int, int]], unknown_id: int
) -> list[str]:
    """The distinct pieces of ``spaced`` (the exact string given to the tokenizer) that became
    ``[UNK]``. A literal "[UNK]" in the text is a deliberate token, so it is not reported."""
    pieces = [
        spaced[start:end]
        for token_id, (start, end) in zip(ids, offsets)
        if token_id == unknown_id and spaced[start:end] != UNKNOWN
    ]
    return list(dict.fromkeys(pieces))


def decode_ids(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The reference tokenizers' ``decode``: drops the BPE's spaces, turns ``[SPACE]`` back into
    spaces and removes ``[STOP]`` and ``[UNK]``."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return text.replace(" ", "").replace(SPACE, " ").replace(STOP_TEXT, "").replace(UNKNOWN, "")


class EnglishTokenizer:
    """Chatterbox's English BPE tokenizer (``tokenizer.json``): spaces become ``[SPACE]``.

    ``encode`` returns the text's ids only; the engine adds the start/stop text tokens.
    """

    def __init__(
        self,
        tokenizer_file: str | Path,
        *,
        unknown: Literal["error", "unk"] = "error",
        text_vocab_size: int | None = None,
    ) -> None:
        """``text_vocab_size``: T3's text-embedding rows (``T3Config.text_tokens_dict_size``);
        a tokenizer with ids beyond them belongs to another model and is rejected here, not as
        an index error inside the engine."""
        if unknown not in ("error", "unk"):
            raise ConfigurationError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        path = Path(tokenizer_file)
        if not path.is_file():
            raise MissingCheckpointFileError(f"tokenizer file not found: {path}")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for any unreadable file
            raise CheckpointError(
                f"{path} is not a tokenizer file the tokenizers library can read ({error}); "
                f"expected Chatterbox's tokenizer.json (a BPE with {', '.join(SPECIAL_TOKENS)})"
            ) from None
        self.unknown = unknown
        vocab = self._tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise CheckpointError(
                f"{path} lacks the special tokens {missing}: it is not Chatterbox's English "
                f"tokenizer.json (which has {', '.join(SPECIAL_TOKENS)})"
            )
        largest = max(vocab.values())
        if text_vocab_size is not None and largest >= text_vocab_size:
            raise CheckpointError(
                f"{path} has token ids up to {largest}, but T3 has {text_vocab_size} text "
                "tokens: the tokenizer belongs to another model; use the checkpoint's own"
            )
        self.start_id = vocab[START_TEXT]
        self.stop_id = vocab[STOP_TEXT]
        self.unknown_id = vocab[UNKNOWN]
        self.space_id = vocab[SPACE]
        self.vocab_size = self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (already normalised); raises on unrepresentable characters."""
        check_unicode(text)
        return encode_spaced(
            self._tokenizer,
            text.replace(" ", SPACE),
            text,
            self.unknown,
            self.unknown_id,
            controls=ENGLISH_CONTROLS,
        )

    def encode_text(self, text: str, language: str | None = None) -> list[int]:
        """:class:`TextEncoder`: ``normalize_text`` then :meth:`encode`. English is this
        checkpoint's only language, so ``language`` must be None or "en" (any case); another
        language is rejected rather than read with English spelling rules."""
        if language is not None and (not isinstance(language, str) or language.lower() != "en"):
            raise UnsupportedLanguageError(
                language,
                ("en",),
                "this checkpoint is English-only (tokenizer.json); other languages need the "
                "Chatterbox Multilingual checkpoint (t3_mtl23ls_v2.safetensors with "
                "grapheme_mtl_merged_expanded_v1.json)",
            )
        return self.encode(normalize_text(text))

    def decode(self, ids: list[int]) -> str:
        """Inverse of :meth:`encode` for representable text (the reference's ``decode``)."""
        return decode_ids(self._tokenizer, ids)
