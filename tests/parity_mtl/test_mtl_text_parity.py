"""The multilingual text front end vs the reference chatterbox-tts 0.1.7, one sentence per language.

Ours: ``MultilingualTokenizer.encode_text(text, language)``. The reference, as
``ChatterboxMultilingualTTS.generate`` calls it: ``MTLTokenizer.text_to_tokens(punc_norm(text),
language_id)``. Same generated tokenizer and Cangjie table, same pkuseg model, pykakasi installed.
Russian is compared with ``missing_dependency="skip"`` (russian-text-stresser is not on PyPI, so the
reference also runs without it); Hebrew needs nothing on either side (see multilingual_text).

Run: ``nox -s parity_mtl``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatterbox_t3.multilingual_text import SUPPORTED_LANGUAGES, MultilingualTokenizer
from chatterbox_t3.tokenizer_builder import MULTILINGUAL_TOKENIZER_FILE

SENTENCES = {
    "ar": "مرحبا، كيف حالك اليوم؟ الطقس جميل جدا.",
    "da": "Hej, hvordan har du det i dag? Jeg har det godt.",
    "de": "Guten Morgen! Wie geht es Ihnen heute? Schöne Grüße aus München.",
    "el": "Καλημέρα σας, τι κάνετε σήμερα; Ο καιρός είναι υπέροχος.",
    "en": "hello there [laughter], how are you doing today... fine: thanks!",
    "es": "¿Dónde está la biblioteca? Está cerca de la plaza, señor.",
    "fi": "Hyvää huomenta, mitä kuuluu tänään? Sää on kaunis.",
    "fr": "Bonjour à tous, ça va très bien aujourd’hui [sigh]",
    "he": "שלום, מה שלומך היום? מזג האוויר יפה מאוד.",
    "hi": "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है।",
    "it": "Buongiorno, come stai? Perché non vieni più spesso?",
    "ja": "今日はとても良い天気ですね。東京へ行きましょう！",
    "ko": "안녕하세요, 오늘 날씨가 정말 좋네요.",
    "ms": "Selamat pagi, apa khabar anda hari ini?",
    "nl": "Goedemorgen, hoe gaat het met je vandaag? Het weer is prachtig.",
    "no": "God morgen, hvordan går det med deg i dag? Blåbærsyltetøy er godt.",
    "pl": "Dzień dobry, jak się masz? Zażółć gęślą jaźń.",
    "pt": "Olá, tudo bem com você? O coração não mente.",
    "ru": "Привет, как у тебя дела сегодня? Всё хорошо — спасибо",
    "sv": "God morgon, hur mår du idag? Så länge, vi ses.",
    "sw": "Habari ya asubuhi, habari yako leo? Karibu sana.",
    "tr": "Günaydın, bugün nasılsın? İstanbul çok güzel.",
    "zh": "今天天气很好，我们一起去公园散步吧。",
}
CANGJIE_IDS = set(range(733, 762)) | set(range(2052, 2054)) | set(range(2059, 2065))
SPACE = 2


def test_every_language_has_a_sentence() -> None:
    assert sorted(SENTENCES) == sorted(SUPPORTED_LANGUAGES)


@pytest.fixture(scope="module")
def ours(mtl_model_dir: Path) -> dict[str, MultilingualTokenizer]:
    path = mtl_model_dir / MULTILINGUAL_TOKENIZER_FILE
    return {
        "strict": MultilingualTokenizer(path),
        "skip": MultilingualTokenizer(path, missing_dependency="skip"),
    }


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_ids_match_the_reference(
    language: str,
    ours: dict[str, MultilingualTokenizer],
    reference_mtl_tokenizer: Any,
    reference_punc_norm: Callable[[str], str],
) -> None:
    text = SENTENCES[language]
    tokenizer = ours["skip" if language == "ru" else "strict"]
    ids = tokenizer.encode_text(text, language)  # unknown="error": no [UNK] either
    expected = reference_mtl_tokenizer.text_to_tokens(reference_punc_norm(text), language)
    assert ids == expected.squeeze(0).tolist()
    if language == "zh":
        assert CANGJIE_IDS & set(ids), "Chinese was not spelled in Cangjie codes"
        assert SPACE in ids, "Chinese was not segmented"
