"""Word timings from the multilingual analyzer's aligned text positions.

The alignment guard (:mod:`chatterbox_t3.alignment`) decides, at every step, which text token the
speech token being sampled is aligned to: the reference analyzer's ``text_position`` (the argmax
of three heads' attention over the text, accepted only within (-4, 7) tokens of the previous
one). The engine returns it per speech token (:attr:`~chatterbox_t3.engine.T3Output.text_positions`,
an index into ``[start, text..., stop]``). Here the text's tokens are grouped into words and each
word gets the speech frames (25 per second of audio) it was spoken in.

Words are the model's: the text's tokens between ``[SPACE]`` tokens (the start, stop and
language tokens are not words). A word starts at the first frame whose alignment has reached its
first token and ends at the first frame whose alignment has moved past its last token (the
running maximum of the positions, so a glance back never reorders words). Frames aligned to a
``[SPACE]`` fall between words (pauses). A word the alignment never reached starts and ends at
the end of the audio; one it jumped over in a single frame has zero length where it was passed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SPEECH_TOKENS_PER_SECOND = 25
"""S3 speech tokens per second of audio (S3Gen renders 960 samples at 24 kHz per token)."""


@dataclass(frozen=True)
class TextWord:
    """One word of a request's text: its spelling and its tokens' text positions (indices into
    ``[start, text..., stop]``, inclusive)."""

    text: str
    first: int
    last: int


@dataclass(frozen=True)
class WordFrames:
    """One word and the speech frames ``[start, end)`` it was spoken in (frame ``k`` is the
    ``k``-th valid speech token, ``k / 25`` seconds into the chunk's audio)."""

    text: str
    start: int
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SPEECH_TOKENS_PER_SECOND

    @property
    def end_s(self) -> float:
        return self.end / SPEECH_TOKENS_PER_SECOND


def text_words(
    text_ids: Sequence[int],
    *,
    space_id: int,
    decode: Callable[[list[int]], str],
    leading_tags: int = 0,
    spellings: Sequence[str] | None = None,
) -> tuple[TextWord, ...]:
    """The words of framed text ids ``[start, *ids, stop]``: runs of tokens between ``[SPACE]``.

    ``leading_tags``: tokens after the start token that are not text (the multilingual language
    token). ``decode`` spells a word's ids (the tokenizer's decode; NFC-composed here, since the
    multilingual front end decomposes to NFKD). ``spellings``: the caller's words (its text split
    on whitespace); used instead of the decoded spelling when there are exactly as many, which is
    the case unless normalisation split or joined words (Chinese segmentation, "a...b")."""
    words: list[tuple[int, int]] = []
    begin: int | None = None
    body = range(1 + leading_tags, len(text_ids) - 1)  # without start, tags and stop
    for position in body:
        if text_ids[position] == space_id:
            if begin is not None:
                words.append((begin, position - 1))
                begin = None
        elif begin is None:
            begin = position
    if begin is not None:
        words.append((begin, body.stop - 1))
    if spellings is not None and len(spellings) == len(words):
        names = list(spellings)
    else:
        names = [unicodedata.normalize("NFC", decode(list(text_ids[a : b + 1]))) for a, b in words]
    return tuple(TextWord(name, a, b) for name, (a, b) in zip(names, words, strict=True))


def align_words(words: Sequence[TextWord], positions: Sequence[int]) -> tuple[WordFrames, ...]:
    """Each word's frames from the aligned text position of every frame (``positions[k]`` for
    frame ``k``; ``-1`` where the analyzer took no step). Monotonic, inside ``[0, len(positions)]``,
    one entry per word (see the module docstring for the rule)."""
    frames = len(positions)
    reached: list[int] = []
    highest = -1
    for position in positions:
        highest = max(highest, position)
        reached.append(highest)

    def first_frame(threshold: int) -> int:
        """The first frame whose running maximum is >= ``threshold`` (``frames`` if none)."""
        low, high = 0, frames
        while low < high:
            middle = (low + high) // 2
            if reached[middle] >= threshold:
                high = middle
            else:
                low = middle + 1
        return low

    return tuple(
        WordFrames(word.text, first_frame(word.first), first_frame(word.last + 1)) for word in words
    )
