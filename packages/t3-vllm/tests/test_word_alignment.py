"""Words of a framed text and the frames they are spoken in (chatterbox_t3.word_alignment):
hand-worked cases; the engine's positions are compared with the reference analyzer's in
tests/parity_mtl."""

from __future__ import annotations

from chatterbox_t3.word_alignment import TextWord, WordFrames, align_words, text_words

START, STOP, LANG, SPACE = 255, 0, 700, 2


def spell(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i - 10) for i in ids)


def test_words_are_the_runs_between_spaces_after_the_language_token() -> None:
    #            0      1     2   3   4     5    6   7    8     9
    text_ids = [START, LANG, 10, 11, SPACE, 12, SPACE, SPACE, 13, STOP]
    words = text_words(text_ids, space_id=SPACE, decode=spell, leading_tags=1)
    assert words == (TextWord("ab", 2, 3), TextWord("c", 5, 5), TextWord("d", 8, 8))
    # The caller's spelling is used when it has as many words (normalisation kept them).
    named = text_words(
        text_ids, space_id=SPACE, decode=spell, leading_tags=1, spellings=["Ab,", "C", "D."]
    )
    assert [w.text for w in named] == ["Ab,", "C", "D."]
    # ...and the model's when it has not.
    unnamed = text_words(text_ids, space_id=SPACE, decode=spell, leading_tags=1, spellings=["x"])
    assert [w.text for w in unnamed] == ["ab", "c", "d"]


def test_frames_follow_the_highest_position_reached() -> None:
    words = (TextWord("ab", 2, 3), TextWord("c", 5, 5), TextWord("d", 8, 8))
    # Frames 0-1 on the start/language tokens, a glance back at frame 5, the space at 4.
    positions = [0, 1, 2, 3, 4, 2, 5, 5, 6, 9]
    assert align_words(words, positions) == (
        WordFrames("ab", 2, 4),  # reaches 2 at frame 2, passes 3 at frame 4
        WordFrames("c", 6, 8),  # the glance back to 2 does not end or reorder anything
        WordFrames("d", 9, 9),  # jumped over to 9 (the stop) at frame 9: zero length there
    )
    assert WordFrames("ab", 2, 4).start_s == 0.08 and WordFrames("ab", 2, 4).end_s == 0.16


def test_words_never_reached_sit_at_the_end_of_the_audio() -> None:
    words = (TextWord("ab", 2, 3), TextWord("c", 5, 5))
    assert align_words(words, [0, 1, 2, -1]) == (WordFrames("ab", 2, 4), WordFrames("c", 4, 4))
    assert align_words(words, []) == (WordFrames("ab", 0, 0), WordFrames("c", 0, 0))
