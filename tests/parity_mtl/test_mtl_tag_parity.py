"""Tags and bracketed words in multilingual text vs the reference chatterbox-tts 0.1.7 (issue #24):
the reference lowercases the whole text before anything else, so ``[UH]``/``[UM]`` and the
capitalised control tokens are spelled out, and Chinese segmentation splits a tag like any word.
The one deliberate difference: a language token written in the text is spelled out by us (the
reference encodes it as the language token in the middle of the prompt).

Run: ``nox -s parity_mtl``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatterbox_t3.multilingual_text import SUPPORTED_LANGUAGES, MultilingualTokenizer
from chatterbox_t3.tokenizer_builder import MULTILINGUAL_TOKENIZER_FILE

CASES = {
    "capital-filler-tags": ("[UH] well, [UM] I think so [Laughter].", "en"),
    "control-tokens": ("[START] [STOP] [SPACE] [UNK] [PAD] [SEP] hello", "fr"),
    "korean-space-before-tag": ("ㄱㄴㄷ 자모만 [sigh]", "ko"),
    "chinese-tag-inside-words": ("这是一个[laughter]好问题", "zh"),
}


@pytest.fixture(scope="module")
def ours(mtl_model_dir: Path) -> MultilingualTokenizer:
    return MultilingualTokenizer(mtl_model_dir / MULTILINGUAL_TOKENIZER_FILE, unknown="unk")


def _reference(tokenizer: Any, punc_norm: Callable[[str], str], text: str, language: str) -> list:
    return list(tokenizer.text_to_tokens(punc_norm(text), language).squeeze(0).tolist())


@pytest.mark.parametrize("case", sorted(CASES))
def test_tags_are_read_as_the_reference_reads_them(
    case: str,
    ours: MultilingualTokenizer,
    reference_mtl_tokenizer: Any,
    reference_punc_norm: Callable[[str], str],
) -> None:
    text, language = CASES[case]
    expected = _reference(reference_mtl_tokenizer, reference_punc_norm, text, language)
    assert ours.encode_text(text, language) == expected


def test_no_text_produces_a_control_token(
    ours: MultilingualTokenizer,
    reference_mtl_tokenizer: Any,
    reference_punc_norm: Callable[[str], str],
) -> None:
    vocab = reference_mtl_tokenizer.tokenizer.get_vocab()
    languages = {vocab[f"[{code}]"] for code in SUPPORTED_LANGUAGES}
    controls = {vocab[t] for t in ("[START]", "[STOP]", "[PAD]", "[SEP]", "[CLS]", "[MASK]")}
    text = "[fr] Bonjour [EN] [START] [stop] [de]"
    reference = _reference(reference_mtl_tokenizer, reference_punc_norm, text, "en")
    assert vocab["[fr]"] in reference[1:]  # the reference: French in the middle of the prompt
    ids = ours.encode_text(text, "en")
    assert ids[0] == vocab["[en]"]
    assert not (set(ids[1:]) & (languages | controls)), ids
    assert ours.decode(ids[1:]).startswith("[fr] bonjour [en]")  # spelled out, still readable
