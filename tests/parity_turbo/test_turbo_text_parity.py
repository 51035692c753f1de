"""Turbo's text front end vs chatterbox-tts 0.1.7 (``tts_turbo.punc_norm`` + the GPT-2 tokenizer as
``ChatterboxTurboTTS.generate`` calls it) on a generated tokenizer in the real file layout.

Run: ``nox -s parity_turbo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatterbox_t3.errors import TextTooLongError
from chatterbox_t3.turbo_text import TurboTokenizer, turbo_punc_norm

TEXTS = [
    "hello world",
    "Wait... what? No - really; yes.",
    "Ellipsis… and: colons — dashes – “quotes” ‘single’ ,comma",
    "  many   spaces\tand\nnewlines  ",
    "[laugh] That was funny [chuckle], right? [cough]",
    "Tags inside words: ha[laugh]ha and [clear throat] done",
    "Unicode: café, naïve, 東京, emoji 🙂, math ∑",
    "ends with a dash -",
    "",
    "a",
]


def reference_ids(tokenizer: Any, text: str) -> list[int]:
    from chatterbox.tts_turbo import punc_norm

    ids = tokenizer(punc_norm(text), return_tensors="pt", padding=True, truncation=True)
    return [int(i) for i in ids.input_ids[0]]


@pytest.fixture(scope="module")
def ours(turbo_tiny_dir: Path) -> TurboTokenizer:
    from chatterbox_t3.config import load_t3_config

    config = load_t3_config(turbo_tiny_dir)
    return TurboTokenizer(turbo_tiny_dir, text_vocab_size=config.text_tokens_dict_size)


@pytest.mark.parametrize("text", TEXTS)
def test_punc_norm_and_ids_match(ours, reference_turbo_tokenizer, text) -> None:
    from chatterbox.tts_turbo import punc_norm

    assert turbo_punc_norm(text) == punc_norm(text)
    assert ours.encode_text(text) == reference_ids(reference_turbo_tokenizer, text)


def test_tags_are_single_added_tokens(ours, reference_turbo_tokenizer) -> None:
    ids = ours.encode_text("[laugh]")
    assert ids == reference_ids(reference_turbo_tokenizer, "[laugh]")
    laugh = reference_turbo_tokenizer.convert_tokens_to_ids("[laugh]")
    assert laugh in reference_turbo_tokenizer.get_added_vocab().values()
    assert ids[0] == laugh


def test_long_input_up_to_the_limit_matches(ours, reference_turbo_tokenizer) -> None:
    sentence = "The quick brown fox jumps over the lazy dog, again and again. "
    text = sentence * 25
    ids = ours.encode_text(text)
    assert 300 < len(ids) <= ours.model_max_length
    assert ids == reference_ids(reference_turbo_tokenizer, text)


def test_text_beyond_the_limit_is_refused_where_the_reference_truncates(
    turbo_tiny_dir, reference_turbo_tokenizer, turbo_model_cache
) -> None:
    """The reference silently drops everything past ``model_max_length`` tokens; we say so."""
    from chatterbox_t3.config import load_t3_config
    from chatterbox_t3.engine import T3Frontend

    text = "The quick brown fox jumps over the lazy dog. " * 120
    truncated = reference_ids(reference_turbo_tokenizer, text)
    assert len(truncated) == reference_turbo_tokenizer.model_max_length
    frontend = T3Frontend(turbo_tiny_dir, load_t3_config(turbo_tiny_dir), max_model_len=8196)
    with pytest.raises(TextTooLongError, match="fit T3.s text positions; split it into shorter"):
        frontend.text_token_ids(text)
    # Without start/stop text tokens: the ids are the tokenizer's alone.
    assert frontend.text_token_ids("Hello [laugh].") == reference_ids(
        reference_turbo_tokenizer, "Hello [laugh]."
    )
