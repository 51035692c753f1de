"""Text front end: the reference's punctuation rules and the English tokenizer's behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatterbox_t3.checkpoint import TOKENIZER_FILE
from chatterbox_t3.errors import UnsupportedCharactersError
from chatterbox_t3.text import EMPTY_TEXT_REPLACEMENT, EnglishTokenizer, normalize_text
from chatterbox_t3.tokenizer_builder import build_english_tokenizer


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("", EMPTY_TEXT_REPLACEMENT),
        ("hello world", "Hello world."),
        # Capitalisation is checked before whitespace is collapsed.
        (" hello   there ", "hello there."),
        ("Wait... what", "Wait,  what."),  # "..." -> ", " keeps the following space: two spaces
        ("Well…", "Well,"),
        ("Note: this", "Note, this."),
        ("one - two", "One, two."),
        ("a; b", "A,  b."),
        ("em—dash and en–dash", "Em-dash and en-dash."),
        ("x , y", "X, y."),
        ("“Quoted” ‘single’", "\"Quoted\" 'single'."),
        ("Done!", "Done!"),
        ("Really?", "Really?"),
        ("trailing-", "Trailing-"),
        ("comma,", "Comma,"),
        ("Tabs\tand\nnewlines", "Tabs and newlines."),
    ],
)
def test_normalize_text_follows_the_reference_rules(raw: str, normalised: str) -> None:
    assert normalize_text(raw) == normalised


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> EnglishTokenizer:
    return EnglishTokenizer(tiny_checkpoint / TOKENIZER_FILE)


def test_spaces_become_the_space_token(tokenizer: EnglishTokenizer) -> None:
    ids = tokenizer.encode("Hi there, friend.")
    assert ids.count(tokenizer.space_id) == 2
    assert tokenizer.decode(ids) == "Hi there, friend."


def test_special_ids_match_the_real_layout(tokenizer: EnglishTokenizer) -> None:
    assert (tokenizer.stop_id, tokenizer.unknown_id, tokenizer.space_id, tokenizer.start_id) == (
        0,
        1,
        2,
        255,
    )
    assert tokenizer.vocab_size == 704


def test_unrepresentable_characters_are_named(tokenizer: EnglishTokenizer) -> None:
    with pytest.raises(UnsupportedCharactersError) as error:
        tokenizer.encode("Price: 5€ or 5¥, ok € again")
    assert error.value.characters == ["€", "¥"]
    assert "U+20AC" in str(error.value) and "U+00A5" in str(error.value)


def test_unknown_mode_maps_to_unk_like_the_reference(tiny_checkpoint: Path) -> None:
    lenient = EnglishTokenizer(tiny_checkpoint / TOKENIZER_FILE, unknown="unk")
    ids = lenient.encode("a€b")
    assert ids[1] == lenient.unknown_id and len(ids) == 3


def test_explicit_tags_are_single_tokens(tokenizer: EnglishTokenizer) -> None:
    assert tokenizer.encode("[laughter]") == [607]


def test_no_text_produces_a_control_token(tokenizer: EnglishTokenizer) -> None:
    # The reference 0.1.2 encodes these as the tokens: "[STOP]" put a stop mid-prompt.
    ids = tokenizer.encode_text("[START] Hi [STOP] [UNK] [PAD] [laughter]")
    assert not {tokenizer.start_id, tokenizer.stop_id, tokenizer.unknown_id} & set(ids), ids
    assert 607 in ids  # tags are not control tokens
    assert tokenizer.decode(tokenizer.encode("[START] x")) == "[START] x"  # spelled out


def test_bad_unknown_mode_is_rejected(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="unknown must be"):
        EnglishTokenizer(tiny_checkpoint / TOKENIZER_FILE, unknown="drop")  # type: ignore[arg-type]


def test_built_tokenizer_has_the_real_structure(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    build_english_tokenizer().save(str(path))
    data = json.loads(path.read_text())
    model = data["model"]
    assert model["type"] == "BPE" and model["unk_token"] == "[UNK]"
    assert data["pre_tokenizer"] == {"type": "Whitespace"}
    assert data["normalizer"] is None
    vocab = model["vocab"]
    assert sorted(vocab.values()) == list(range(704))
    added = {token["content"]: token["id"] for token in data["added_tokens"]}
    assert {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[START]": 255}.items() <= added.items()
    assert added["[UH]"] == 604 and added["[end_of_label]"] == 639
    assert added["[PLACEHOLDER55]"] == 695 and added["[PLACEHOLDER63]"] == 703
    # Every merge joins two vocabulary entries into a third.
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    assert merges
    for left, right in merges:
        assert left in vocab and right in vocab and left + right in vocab
    # Same bytes on every build (random checkpoints are reproducible).
    again = tmp_path / "again.json"
    build_english_tokenizer().save(str(again))
    assert again.read_text() == path.read_text()


def test_invisible_characters_without_sound_are_dropped(tokenizer: EnglishTokenizer) -> None:
    pasted = "\ufeffHello\u200b there, soft\u00adware\u2060."
    assert tokenizer.encode_text(pasted) == tokenizer.encode_text("Hello there, software.")
    with pytest.raises(UnsupportedCharactersError, match=r"U\+200D"):  # not silent: named
        tokenizer.encode_text("Hello\u200dthere")
