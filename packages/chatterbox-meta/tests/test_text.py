"""Long-text validation and chunking."""

from __future__ import annotations

import re

import pytest

from chatterbox_vllm.errors import InvalidTextError
from chatterbox_vllm.text import (
    MAX_TEXT_CHARS,
    chunk_chars_for_token_budget,
    fold_accents,
    split_sentences,
    split_text,
    validate_text,
)

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. Dr. Smith arrived at 10 a.m. with Mr. J. Jones! "
    "Did anyone expect that? Nobody did, and yet, there they were, standing in the rain, soaked. "
    '"Well," said the fox, "that settles it." The end.'
)


def _words(text: str) -> list[str]:
    return text.split()


def test_short_text_is_passed_through_untouched() -> None:
    text = "  hello   there... how are you  "
    assert split_text(text, 300) == [text]


def test_sentences_split_at_terminal_punctuation_not_at_abbreviations_or_initials() -> None:
    sentences = split_sentences(" ".join(PARAGRAPH.split()))
    assert sentences == [
        "The quick brown fox jumps over the lazy dog.",
        "Dr. Smith arrived at 10 a.m. with Mr. J. Jones!",
        "Did anyone expect that?",
        "Nobody did, and yet, there they were, standing in the rain, soaked.",
        '"Well," said the fox, "that settles it."',
        "The end.",
    ]


def test_chunks_pack_whole_sentences_and_keep_every_word_in_order() -> None:
    text = " ".join([PARAGRAPH] * 6)
    chunks = split_text(text, 120)
    assert len(chunks) > 1
    assert all(len(chunk) <= 120 for chunk in chunks)
    assert _words(" ".join(chunks)) == _words(text)
    sentences = set(split_sentences(" ".join(text.split())))
    for chunk in chunks:
        # Every chunk that is made of whole sentences ends at a sentence end.
        assert chunk.endswith((".", "!", "?", '"')), chunk
        assert any(chunk.startswith(s) for s in sentences), chunk


def test_long_sentence_splits_at_clauses_then_spaces_never_inside_a_word() -> None:
    clause = "and the river kept rising through the valley"
    sentence = ", ".join([clause] * 12) + "."
    chunks = split_text(sentence, 100)
    assert len(chunks) > 2
    assert all(len(chunk) <= 100 for chunk in chunks)
    assert _words(" ".join(chunks)) == _words(sentence)
    assert all(chunk.endswith((",", ".")) for chunk in chunks)

    no_punctuation = " ".join(["word"] * 200)
    chunks = split_text(no_punctuation, 64)
    assert all(len(chunk) <= 64 for chunk in chunks)
    assert all(set(chunk.split()) == {"word"} for chunk in chunks)
    assert _words(" ".join(chunks)) == _words(no_punctuation)


def test_a_word_longer_than_the_budget_becomes_its_own_chunk() -> None:
    url = "https://example.com/" + "a" * 120
    chunks = split_text(f"Visit {url} today. Then rest, and come back tomorrow.", 60)
    assert url in chunks
    assert _words(" ".join(chunks)) == [
        "Visit",
        url,
        "today.",
        "Then",
        "rest,",
        "and",
        "come",
        "back",
        "tomorrow.",
    ]


def test_punctuation_only_pieces_are_dropped() -> None:
    chunks = split_text("First sentence here. ... ! Second sentence there. " * 5, 50)
    assert all(re.search(r"\w", chunk) for chunk in chunks)


def test_token_budget_gives_reference_sized_chunks() -> None:
    # 1000 tokens = 40 s; at 15 chars/s and a 0.5 safety factor: 300 characters.
    assert chunk_chars_for_token_budget(1000) == 300
    assert chunk_chars_for_token_budget(500) == 150
    assert chunk_chars_for_token_budget(10) == 40  # floor


@pytest.mark.timeout(20)  # a guard against quadratic behaviour; speed is measured by `bench`
def test_six_thousand_words_chunk_in_linear_time() -> None:
    text = " ".join([PARAGRAPH] * 150)
    assert len(text.split()) > 6000
    chunks = split_text(text, 300)
    assert all(len(chunk) <= 300 for chunk in chunks)
    assert _words(" ".join(chunks)) == _words(text)
    assert len(chunks) >= len(text) // 300


def test_hundred_thousand_characters_are_accepted_and_chunked_beyond_that_rejected() -> None:
    text = (PARAGRAPH + " ") * (MAX_TEXT_CHARS // (len(PARAGRAPH) + 1) + 1)
    text = text[:MAX_TEXT_CHARS]
    assert validate_text(text) is text
    chunks = split_text(text, 300)
    assert all(len(chunk) <= 300 for chunk in chunks)
    with pytest.raises(InvalidTextError, match=r"100,001 characters; at most 100,000"):
        validate_text(text + "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("... !? --", "no letters or digits"),
        (None, "must be a str"),
    ],
)
def test_unspeakable_text_is_rejected_with_a_reason(text: object, message: str) -> None:
    with pytest.raises(InvalidTextError, match=message):
        validate_text(text)


def test_accented_letters_are_spelled_plainly_so_book_text_is_speakable() -> None:
    # The English tokenizer has no accented letters; a book quoting "Barad-dûr" or "café" must
    # still be read (the T3 front end rejects characters it cannot represent).
    [chunk] = split_text("The fires of Barad-dûr lit the café\u00a0window.", 300)
    assert chunk == "The fires of Barad-dur lit the cafe window."
    assert fold_accents("plain ASCII stays, byte for byte.") == "plain ASCII stays, byte for byte."
    # Characters with no plain spelling are kept so the front end can name them in its error.
    assert fold_accents("price: 5€") == "price: 5€"


@pytest.mark.parametrize(
    ("characters", "advice"),
    [
        (
            "你好",
            ", or speak them with the multilingual model and language='zh' (Chinese) or "
            "language='ja' (Japanese)",
        ),
        ("你の", ", or speak them with the multilingual model and language='ja' (Japanese)"),
        ("Пр", ", or speak them with the multilingual model and language='ru' (Russian)"),
        ("안", ", or speak them with the multilingual model and language='ko' (Korean)"),
        ("\u2603", ""),  # a snowman: no language writes it
        ("П你", ""),  # two scripts: no one language
    ],
)
def test_characters_the_tokenizer_lacks_name_the_language_that_writes_them(
    characters: str, advice: str
) -> None:
    from chatterbox_t3.errors import UnsupportedCharactersError
    from chatterbox_vllm.errors import from_component_error

    text = f"Hello {characters}."
    error = from_component_error(UnsupportedCharactersError(list(characters), text))
    assert isinstance(error, InvalidTextError)
    assert str(error).endswith(f"in {text!r}; remove or transliterate them{advice}")
