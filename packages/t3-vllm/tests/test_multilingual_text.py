"""The multilingual text front end on the generated tokenizer (CPU, no model).

Expected ids are spelled out from the generated vocabulary and the rules of the reference
(chatterbox-tts 0.1.7 ``punc_norm`` and ``MTLTokenizer``), never taken from the code under test.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from chatterbox_t3.errors import (
    CheckpointError,
    MissingCheckpointFileError,
    MissingLanguageDependencyError,
    UnsupportedCharactersError,
    UnsupportedLanguageError,
)
from chatterbox_t3.multilingual_text import (
    SUPPORTED_LANGUAGES,
    MultilingualTokenizer,
    check_language,
    normalize_multilingual_text,
)
from chatterbox_t3.text import EMPTY_TEXT_REPLACEMENT, EnglishTokenizer, normalize_text
from chatterbox_t3.tokenizer_builder import (
    CANGJIE_FILE,
    MULTILINGUAL_TOKENIZER_FILE,
    build_english_tokenizer,
)

LANGUAGE_IDS = "ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv sw tr zh".split()
# The real file's ids (grapheme_mtl_merged_expanded_v1.json).
EN, FR, ES, KO, JA, ZH, HE, RU = 708, 634, 635, 724, 723, 725, 2110, 716
START, STOP, UNK, SPACE, LAUGHTER, SIGH, UH, CJ_END = 255, 0, 1, 2, 607, 611, 604, 2064


@pytest.fixture(scope="module")
def vocab(mtl_text_files: Path) -> dict[str, int]:
    return Tokenizer.from_file(str(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)).get_vocab()


@pytest.fixture(scope="module")
def tokenizer(mtl_text_files: Path) -> MultilingualTokenizer:
    return MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)


def spell(vocab: dict[str, int], text: str) -> list[int]:
    """Ids of ``text`` one character at a time (spaces are [SPACE]); text without English
    letter pairs, so no BPE merge applies."""
    return [SPACE if c == " " else vocab[c] for c in text]


# ------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("你好。", "你好。"),  # 。 ends a sentence: no full stop added
        ("你好", "你好."),
        ("谢谢！", "谢谢！"),
        ("好吗？", "好吗？"),
        ("一，", "一，"),
        ("一、", "一、"),
        ("bonjour", "Bonjour."),  # capitalised, full stop added
        # Capitalised only when the first character is lowercase: not after a leading space.
        ("  hola   amigo  ", "hola amigo."),
        # "..." and ";" become ", " after whitespace was collapsed: the double space stays.
        ("wait... what", "Wait,  what."),
        ("a: b; c — d", "A, b,  c - d."),
        ("“quoted” ‘x’", "\"quoted\" 'x'."),
        ("", EMPTY_TEXT_REPLACEMENT),
    ],
)
def test_normalisation_follows_the_reference_punc_norm(raw: str, normalised: str) -> None:
    assert normalize_multilingual_text(raw) == normalised


def test_english_and_multilingual_normalisation_differ_only_in_cjk_endings() -> None:
    assert normalize_text("你好。") == "你好。."
    assert normalize_multilingual_text("hello world") == normalize_text("hello world")


# ----------------------------------------------------------------------- languages and tokens


def test_supported_languages_are_the_reference_23() -> None:
    assert sorted(SUPPORTED_LANGUAGES) == LANGUAGE_IDS
    assert SUPPORTED_LANGUAGES["zh"] == "Chinese" and SUPPORTED_LANGUAGES["no"] == "Norwegian"


@pytest.mark.parametrize(
    ("language", "token"), [(None, EN), ("en", EN), ("fr", FR), ("ES", ES), ("Ko", KO)]
)
def test_language_token_prefix(
    tokenizer: MultilingualTokenizer, language: str | None, token: int
) -> None:
    assert tokenizer.encode_text("x", language)[0] == token


def test_french_accents_arrive_decomposed(
    tokenizer: MultilingualTokenizer, vocab: dict[str, int]
) -> None:
    # lowercase + NFKD: "É" -> "e" + COMBINING ACUTE ACCENT (U+0301); "ç" -> "c" + U+0327.
    assert tokenizer.encode("Éç", "fr") == [
        FR,
        vocab["e"],
        vocab["\u0301"],
        vocab["c"],
        vocab["\u0327"],
    ]


def test_korean_syllables_become_jamo(
    tokenizer: MultilingualTokenizer, vocab: dict[str, int]
) -> None:
    # 한 (U+D55C) = HIEUH U+1112 + A U+1161 + final NIEUN U+11AB; 가 (U+AC00) has no final.
    assert tokenizer.encode("한 가", "ko") == [
        KO,
        *spell(vocab, "\u1112\u1161\u11ab \u1100\u1161"),
    ]


def test_japanese_kanji_become_hiragana(
    tokenizer: MultilingualTokenizer, vocab: dict[str, int]
) -> None:
    pytest.importorskip("pykakasi", reason="pykakasi (the multilingual extra) missing")
    # 東京 reads とうきょう; katakana stays, its voiced ビ decomposed to ヒ + U+3099.
    assert tokenizer.encode("東京のテレビ", "ja") == [
        JA,
        *spell(vocab, "とうきょうのテレヒ\u3099"),
    ]


def test_chinese_is_segmented_and_spelled_in_cangjie(
    mtl_text_files: Path, vocab: dict[str, int], pkuseg_home: Path
) -> None:
    entries = [e.split("\t") for e in json.loads((mtl_text_files / CANGJIE_FILE).read_text())]
    code = dict(entries)

    def cangjie(glyph: str) -> list[int]:
        # The reference: the glyph's code, then its position among the table's glyphs of that
        # code when it is not the first, then the end mark.
        index = [g for g, c in entries if c == code[glyph]].index(glyph)
        spelled = code[glyph] + (str(index) if index else "")
        return [vocab[f"[cj_{c}]"] for c in spelled] + [CJ_END]

    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    # The stand-in segmenter splits 我们今天去学校 into 我们 / 今天 / 去 / 学校; words are
    # separated by [SPACE], glyphs become their codes, 。 stays.
    expected = [ZH]
    for word in ("我们", "今天", "去", "学校"):
        expected += [g for glyph in word for g in cangjie(glyph)] + [SPACE]
    expected.append(vocab["。"])
    assert tokenizer.encode("我们今天去学校。", "zh") == expected


def test_cangjie_codes_shared_by_several_glyphs_get_an_index_suffix(
    mtl_text_files: Path, vocab: dict[str, int], pkuseg_home: Path
) -> None:
    entries = [e.split("\t") for e in json.loads((mtl_text_files / CANGJIE_FILE).read_text())]
    # The generated table gives its 7th glyph the 6th glyph's code: the 7th is the second glyph
    # of that code, so its spelling ends in the digit 1.
    (first, code), (second, shared) = entries[5], entries[6]
    assert code == shared and first != second
    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    letters = [vocab[f"[cj_{c}]"] for c in code]
    assert tokenizer.encode(second, "zh") == [ZH, *letters, vocab["[cj_1]"], CJ_END]
    assert tokenizer.encode(first, "zh") == [ZH, *letters, CJ_END]


def test_hebrew_is_encoded_as_written(
    tokenizer: MultilingualTokenizer, vocab: dict[str, int]
) -> None:
    pointed = "שָׁלוֹם"
    assert tokenizer.encode(pointed, "he") == [
        HE,
        *spell(vocab, unicodedata.normalize("NFKD", pointed)),
    ]


def test_russian_without_its_stresser_fails_unless_skipped(
    mtl_text_files: Path, vocab: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "russian_text_stresser", None)  # not installed
    path = mtl_text_files / MULTILINGUAL_TOKENIZER_FILE
    with pytest.raises(MissingLanguageDependencyError) as error:
        MultilingualTokenizer(path).encode_text("Привет", "ru")
    message = str(error.value)
    assert "russian-text-stresser" in message and "not published on PyPI" in message
    assert "missing_dependency='skip'" in message
    # Skipped: unstressed, as the reference without it; ё arrives as е + U+0308.
    skipping = MultilingualTokenizer(path, missing_dependency="skip")
    assert skipping.encode("ёж", "ru") == [RU, *spell(vocab, "е\u0308ж")]


# ----------------------------------------------------------------------------------- tags


@pytest.mark.parametrize("language", ["en", "fr", "ja", "ko", "he", "ar"])
def test_tags_are_read_after_lowercasing_as_in_the_reference(
    mtl_text_files: Path, language: str
) -> None:
    if language == "ja":
        pytest.importorskip("pykakasi", reason="pykakasi (the multilingual extra) missing")
    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    ids = tokenizer.encode_text("[laughter] x [Sigh] [UH]", language)
    # The filler tags' tokens are capitalised: lowercased, "[UH]" is the letters "[uh]".
    assert [i for i in ids if i in (LAUGHTER, SIGH, UH)] == [LAUGHTER, SIGH]


def test_no_text_produces_a_control_token(mtl_text_files: Path) -> None:
    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    vocab = tokenizer._tokenizer.get_vocab()
    languages = {vocab[f"[{code}]"] for code in LANGUAGE_IDS}
    ids = tokenizer.encode_text("[fr] [START] [stop] [PAD] [UNK] [De] hi", "en")
    assert ids[0] == vocab["[en]"]
    assert not (languages | {START, STOP, UNK, vocab["[PAD]"]}) & set(ids[1:]), ids
    assert tokenizer.decode(ids[1:]).startswith("[fr] [start] [stop]")  # spelled out


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("language", ["xx", "english", "", 3])
def test_unknown_language_lists_the_23(language: object) -> None:
    with pytest.raises(UnsupportedLanguageError) as error:
        check_language(language)  # type: ignore[arg-type]
    for code in LANGUAGE_IDS:
        assert code in str(error.value)


def test_check_language_lowercases_and_defaults_to_english() -> None:
    assert check_language("FR") == "fr"
    assert check_language(None) == "en"


@pytest.mark.parametrize(("language", "module"), [("ja", "pykakasi"), ("zh", "spacy_pkuseg")])
def test_missing_dependency_names_the_extra(
    mtl_text_files: Path, monkeypatch: pytest.MonkeyPatch, language: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingLanguageDependencyError) as preflight:
        check_language(language)
    assert "pip install 'chatterbox-t3-vllm[multilingual]'" in str(preflight.value)
    assert preflight.value.package == module.replace("_", "-")
    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    with pytest.raises(MissingLanguageDependencyError, match=r"chatterbox-t3-vllm\[multilingual\]"):
        tokenizer.encode_text("日本" if language == "ja" else "中文", language)
    assert check_language(language, missing_dependency="skip") == language


def test_unrepresentable_characters_are_named(mtl_text_files: Path) -> None:
    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    with pytest.raises(UnsupportedCharactersError) as error:
        tokenizer.encode_text("Hello ☃ and ♫", "en")
    assert error.value.characters == ["☃", "♫"]
    lenient = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE, unknown="unk")
    assert UNK in lenient.encode_text("Hello ☃", "en")


def test_a_chinese_glyph_without_a_cangjie_code_is_named(
    mtl_text_files: Path, pkuseg_home: Path
) -> None:
    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    with pytest.raises(UnsupportedCharactersError) as error:
        tokenizer.encode("龘", "zh")  # not in the generated table
    assert error.value.characters == ["龘"]


def test_bad_tokenizer_files_are_rejected(tmp_path: Path, mtl_text_files: Path) -> None:
    with pytest.raises(MissingCheckpointFileError):
        MultilingualTokenizer(tmp_path / "absent.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a tokenizer file"):
        MultilingualTokenizer(garbage)
    english = tmp_path / "tokenizer.json"
    build_english_tokenizer().save(str(english))
    with pytest.raises(CheckpointError, match=r"lacks the tokens .*\[ar\]"):
        MultilingualTokenizer(english)
    with pytest.raises(CheckpointError, match="2453"):
        MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE, text_vocab_size=704)
    with pytest.raises(MissingCheckpointFileError):
        MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE, tmp_path / "no.json")


def test_chinese_without_a_cangjie_table_fails_clearly(
    tmp_path: Path, mtl_text_files: Path
) -> None:
    lonely = tmp_path / MULTILINGUAL_TOKENIZER_FILE
    lonely.write_bytes((mtl_text_files / MULTILINGUAL_TOKENIZER_FILE).read_bytes())
    tokenizer = MultilingualTokenizer(lonely, missing_dependency="skip")
    with pytest.raises(MissingCheckpointFileError, match=CANGJIE_FILE):
        tokenizer.encode("中文", "zh")


def test_start_and_stop_ids_are_the_real_ones(tokenizer: MultilingualTokenizer) -> None:
    assert (tokenizer.start_id, tokenizer.stop_id, tokenizer.vocab_size) == (START, STOP, 2454)
    assert START not in tokenizer.encode_text("Hola.", "es")


# ---------------------------------------------------------------------- English checkpoint


def test_english_tokenizer_accepts_only_english(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    build_english_tokenizer().save(str(path))
    english = EnglishTokenizer(path)
    expected = english.encode(normalize_text("hello world"))
    assert english.encode_text("hello world") == expected
    assert english.encode_text("hello world", "EN") == expected
    with pytest.raises(UnsupportedLanguageError, match="Multilingual") as error:
        english.encode_text("bonjour", "fr")
    assert error.value.supported == ("en",)


def test_chinese_without_its_segmentation_model_says_so_first_and_tries_once(
    mtl_text_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spacy_pkuseg = pytest.importorskip("spacy_pkuseg", reason="spacy-pkuseg (the extra) missing")
    attempts = []

    def offline() -> None:
        attempts.append(1)
        raise OSError("Failed to resolve 'github.com'")

    monkeypatch.setattr(spacy_pkuseg, "pkuseg", offline)
    tokenizer = MultilingualTokenizer(mtl_text_files / MULTILINGUAL_TOKENIZER_FILE)
    for _ in range(2):
        with pytest.raises(MissingLanguageDependencyError) as error:
            tokenizer.encode_text("今天天气很好。", "zh")
    message = str(error.value)
    assert message.startswith(
        "language 'zh' needs spacy-pkuseg's segmentation model 'spacy_ontonotes', which is not "
        "in PKUSEG_HOME"
    ), message
    assert "Failed to resolve" in message and "--missing-language-dependency skip" in message
    assert "is not available" not in message
    assert attempts == [1]  # the download is not retried on every request
