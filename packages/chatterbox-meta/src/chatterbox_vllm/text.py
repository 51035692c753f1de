"""Long text: validation and splitting into chunks that fit T3's per-request budget.

T3 produces at most ``max_new_tokens`` speech tokens (25 per second of audio) per request, and
quality drops on long utterances, so long text is split at sentence boundaries into chunks of at
most ``max_chunk_chars`` characters, packing whole sentences greedily. A sentence longer than the
budget is split at clause punctuation (``, ; : — –``), and a clause still too long at spaces. Text
is never split inside a word: a single "word" longer than the budget (a URL, say) becomes a chunk of
its own. Each chunk is then normalised by T3's text front end exactly as a whole text would be.

The multilingual model's languages are split the same way, with their own punctuation: Chinese and
Japanese sentences end at ``。！？．`` (no space follows them) and their clauses at ``、，；：``;
Arabic's ``؟`` and Hindi's ``।`` end sentences too. Lengths are measured in *speech length*
(:func:`speech_length`), in which a CJK ideograph, kana or Hangul syllable counts as
:data:`WIDE_CHAR_WEIGHT` Latin characters (each takes about that much longer to say), so a chunk
of Chinese fits the same token budget as a chunk of English. A run of such characters with no
space in it may be cut between any two characters when nothing better is left; pieces are joined
without a space between two CJK characters. Accent folding (:func:`fold_accents`) is for the
English model only: it would strip the accents, dakuten and vowel signs the multilingual model
speaks.
"""

from __future__ import annotations

import logging
import re
import unicodedata

from chatterbox_vllm.errors import InvalidTextError

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 100_000
"""Longest text one ``generate`` call accepts (about 16k words, ~2 hours of speech). Longer texts
are rejected with :class:`~chatterbox_vllm.errors.InvalidTextError`: split them into several calls."""
SPEECH_CHARS_PER_SECOND = 15.0
"""Typical English speaking rate in characters per second (~170 words/min), used to size chunks."""
CHUNK_BUDGET_SAFETY = 0.5
"""Chunks are sized for half the token budget so slow speakers and pauses still fit."""
MIN_CHUNK_CHARS = 40

# Common abbreviations whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "fig",
        "no",
        "vol",
        "approx",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "gen",
        "gov",
        "sgt",
        "capt",
        "col",
        "lt",
        "rev",
        "hon",
        "est",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "a.m",
        "p.m",
        "u.s",
        "u.k",
    }
)
# Sentence end: terminal punctuation, optional closing quotes/brackets, then whitespace; or CJK
# terminal punctuation, which no space follows.
_SENTENCE_END = re.compile(r"""[.!?…؟।]+["'”’)\]»]*(?=\s+)|[。！？．]+[」』”’）)\]]*""")
# Clause boundary: punctuation after which a pause is natural.
_CLAUSE_END = re.compile(r"""[,;:—–،]["'”’)\]»]*(?=\s+)|\s[-—–]\s|[、，；：]+""")
_SPEAKABLE = re.compile(r"\w", re.UNICODE)
# Characters written without spaces between words, each about a syllable long: CJK ideographs,
# kana, Hangul syllables and jamo (and their compatibility / half-width forms).
_WIDE = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uffdc]"
)
# CJK punctuation and brackets: no space is needed next to them either.
_WIDE_PUNCTUATION = re.compile("[\u3000-\u303f\uff01-\uff0f\uff1a-\uff20]")
WIDE_CHAR_WEIGHT = 3
"""A CJK ideograph, kana or Hangul syllable counts as this many characters of speech length:
they are said at about 5 per second against about 15 Latin characters (see
:data:`SPEECH_CHARS_PER_SECOND`)."""


def speech_length(text: str) -> int:
    """``len(text)`` with every CJK ideograph, kana or Hangul syllable counted
    :data:`WIDE_CHAR_WEIGHT` times: the length that chunk sizes and speech-time estimates use."""
    return len(text) + (WIDE_CHAR_WEIGHT - 1) * len(_WIDE.findall(text))


def _joins_without_space(left: str, right: str) -> bool:
    """Two pieces of CJK text: no space between them (there was none in the text)."""
    if not left or not right:
        return False
    wide = (_WIDE.match(left[-1]) or _WIDE_PUNCTUATION.match(left[-1])) is not None
    return wide and (_WIDE.match(right[0]) or _WIDE_PUNCTUATION.match(right[0])) is not None


def _join(left: str, right: str) -> str:
    if not left:
        return right
    return left + right if _joins_without_space(left, right) else f"{left} {right}"


def chunk_chars_for_token_budget(max_new_tokens: int) -> int:
    """Characters of text whose speech fits comfortably in ``max_new_tokens`` speech tokens.

    ``max_new_tokens / 25`` seconds of audio, at :data:`SPEECH_CHARS_PER_SECOND`, times
    :data:`CHUNK_BUDGET_SAFETY`; 1000 tokens (the reference's budget) gives 300 characters.
    """
    seconds = max_new_tokens / 25
    return max(MIN_CHUNK_CHARS, int(seconds * SPEECH_CHARS_PER_SECOND * CHUNK_BUDGET_SAFETY))


def _cut_wide(word: str, max_chars: int) -> list[str]:
    """A space-less run longer than ``max_chars`` of speech length: CJK text is cut between
    characters into pieces that fit; anything else (a URL) stays whole."""
    if speech_length(word) <= max_chars or not _WIDE.search(word):
        return [word]
    pieces: list[str] = []
    current = ""
    for char in word:
        if current and speech_length(current + char) > max_chars:
            pieces.append(current)
            current = ""
        current += char
    if current:
        pieces.append(current)
    return pieces


def validate_text(text: object, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Returns ``text`` if it is speakable, else raises :class:`InvalidTextError` saying why."""
    if not isinstance(text, str):
        raise InvalidTextError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidTextError("text is empty (or only whitespace); pass something to say")
    for position, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            # A lone surrogate: not a character at all (text decoded with errors="surrogateescape"
            # or a broken UTF-16 pair); no tokenizer can encode it.
            raise InvalidTextError(
                f"text has an unpaired surrogate U+{ord(char):04X} at position {position}: it is "
                "not valid Unicode text; decode the input as UTF-8 (or remove that code point)"
            )
    if not _SPEAKABLE.search(text):
        raise InvalidTextError(
            f"text {text[:40]!r} has no letters or digits (only punctuation/symbols); "
            "there is nothing to say"
        )
    if len(text) > max_chars:
        raise InvalidTextError(
            f"text has {len(text):,} characters; at most {max_chars:,} are accepted per call "
            "(split it into several calls)"
        )
    return text


def fold_accents(text: str) -> str:
    """Spells accented Latin letters without their marks (``crûsh café`` -> ``crush cafe``) and
    replaces compatibility forms by their plain equivalents (ligatures, full-width letters,
    no-break spaces): Chatterbox's English tokenizer has no accented letters, and a book is better
    read with ``e`` for ``é`` than rejected. Characters with no plain form are left as they are, so
    T3's front end can still name them in its error."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def sentence_ends(text: str) -> list[int]:
    """Where each sentence of ``text`` ends (after its punctuation and closing quotes), for the
    sentences whose end is known: a period, say, counts once the whitespace after it has
    arrived (and it does not end an abbreviation or an initial)."""
    return [
        match.end()
        for match in _SENTENCE_END.finditer(text)
        if not _is_abbreviation(text, match.start())
    ]


def is_speakable(text: str) -> bool:
    """True when ``text`` has a letter or digit (a piece of only punctuation says nothing)."""
    return _SPEAKABLE.search(text) is not None


def clause_ends(text: str) -> list[int]:
    """Where each clause of ``text`` ends (``, ; : —`` and CJK clause marks), as
    :func:`sentence_ends` does for sentences."""
    return [match.end() for match in _CLAUSE_END.finditer(text)]


def split_sentences(text: str) -> list[str]:
    """Splits whitespace-normalised text into sentences, keeping their punctuation."""
    sentences = []
    start = 0
    for end in sentence_ends(text):
        sentence = text[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _is_abbreviation(text: str, period_index: int) -> bool:
    """True when the '.' at ``period_index`` ends an abbreviation or an initial ("J. Smith")."""
    if text[period_index] != "." or text[period_index : period_index + 2] == "..":
        return False
    word_start = period_index
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:period_index].lower().lstrip("\"'“‘([")
    if word in _ABBREVIATIONS:
        return True
    # A single capital letter, e.g. an initial; "I." ends a sentence often enough to exclude it.
    token = text[word_start:period_index].lstrip("\"'“‘([")
    return len(token) == 1 and token.isupper() and token != "I"


def _split_long(piece: str, max_chars: int, boundary: re.Pattern[str] | None) -> list[str]:
    """Splits one over-long piece at ``boundary`` matches (or at spaces when None), greedily
    packing the parts into pieces of at most ``max_chars`` (a single over-long word stays whole)."""
    if boundary is None:
        parts = [cut for word in piece.split(" ") for cut in _cut_wide(word, max_chars)]
    else:
        parts = []
        start = 0
        for match in boundary.finditer(piece):
            end = match.end()
            parts.append(piece[start:end].strip())
            start = end
        parts.append(piece[start:].strip())
        parts = [p for p in parts if p]
    packed: list[str] = []
    current = ""
    for part in parts:
        candidate = _join(current, part)
        if speech_length(candidate) <= max_chars:
            current = candidate
            continue
        if current:
            packed.append(current)
        current = part
    if current:
        packed.append(current)
    return packed


def split_text(text: str, max_chunk_chars: int, *, fold: bool = True) -> list[str]:
    """Splits ``text`` into chunks of at most ``max_chunk_chars`` of speech length
    (:func:`speech_length`: characters, CJK ones counted :data:`WIDE_CHAR_WEIGHT` times; see
    module docs).

    With ``fold`` (the English model), accents are folded first (:func:`fold_accents`; plain
    ASCII is untouched); the multilingual model passes ``fold=False``. Text that then fits is
    returned unchanged as the only chunk, so a short text reaches T3's front end byte-for-byte
    as the reference would see it.
    """
    if max_chunk_chars < MIN_CHUNK_CHARS:
        raise ValueError(f"max_chunk_chars must be >= {MIN_CHUNK_CHARS}, got {max_chunk_chars}")
    if fold:
        text = fold_accents(text)
    if speech_length(text) <= max_chunk_chars:
        return [text]
    normalised = " ".join(text.split())
    pieces: list[str] = []
    for sentence in split_sentences(normalised):
        if speech_length(sentence) <= max_chunk_chars:
            pieces.append(sentence)
            continue
        for clause in _split_long(sentence, max_chunk_chars, _CLAUSE_END):
            if speech_length(clause) <= max_chunk_chars:
                pieces.append(clause)
            else:
                pieces.extend(_split_long(clause, max_chunk_chars, None))
    chunks: list[str] = []
    current = ""
    # Pieces with nothing to say (a stray "..." or dash) carry no speech: drop them.
    for piece in filter(_SPEAKABLE.search, pieces):
        candidate = _join(current, piece)
        if speech_length(candidate) <= max_chunk_chars:
            current = candidate
            continue
        if current:
            chunks.append(current)
        current = piece
    if current:
        chunks.append(current)
    return chunks
