"""Multilingual text files for tests: the generated tokenizer and Cangjie table, a stand-in for
spacy-pkuseg's downloadable model, and the mixed-language batch of the GPU graph checks.

spacy-pkuseg downloads its default model (``spacy_ontonotes``) from GitHub on first use; tests run
without network, so :func:`install_pkuseg_model` trains a tiny model on :data:`SEGMENTED_CHINESE`
(seconds) and lays it out where ``pkuseg()`` looks for the download (``PKUSEG_HOME``), so both our
front end and the reference's call the unmodified library. The tiny model segments its training
sentences as written there; other text gets some segmentation, the same for both.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

# Segmented as a Chinese reader would; every glyph is in the generated Cangjie table.
SEGMENTED_CHINESE = (
    "我们 今天 去 学校 学习 中文 。",
    "他 喜欢 在 公园 里 散步 。",
    "这 是 一个 很 好 的 问题 。",
    "我 的 朋友 明天 要 去 北京 。",
    "天气 很 好 ， 我们 一起 出去 玩 吧 。",
)
PKUSEG_MODEL = "spacy_ontonotes"


def write_multilingual_text_files(directory: str | Path) -> Path:
    """``grapheme_mtl_merged_expanded_v1.json`` and ``Cangjie5_TC.json`` (generated) in
    ``directory``; returns the tokenizer's path."""
    from chatterbox_t3.tokenizer_builder import (
        MULTILINGUAL_TOKENIZER_FILE,
        build_multilingual_tokenizer,
        write_cangjie_table,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MULTILINGUAL_TOKENIZER_FILE
    build_multilingual_tokenizer().save(str(path))
    write_cangjie_table(directory)
    return path


def install_pkuseg_model(home: str | Path) -> Path:
    """Train the stand-in model into ``home/spacy_ontonotes`` with the marker file that makes
    pkuseg skip its download, and point spacy-pkuseg at ``home`` (``PKUSEG_HOME`` for new
    processes, its config object for this one, which read the variable at import)."""
    import spacy_pkuseg

    home = Path(home)
    model_dir = home / PKUSEG_MODEL
    if not (model_dir / "weights.npz").is_file():
        home.mkdir(parents=True, exist_ok=True)
        corpus = home / "segmented.txt"
        # pkuseg's optimiser needs at least 10 sentences (it updates every len // 10).
        corpus.write_text("\n".join(SEGMENTED_CHINESE * 4) + "\n", encoding="utf-8")
        with contextlib.redirect_stdout(io.StringIO()):  # pkuseg prints its training log
            spacy_pkuseg.train(str(corpus), str(corpus), str(model_dir), train_iter=10)
        (home / f"{PKUSEG_MODEL}.zip").write_bytes(b"")  # "already downloaded"
    os.environ["PKUSEG_HOME"] = str(home)
    spacy_pkuseg.config.pkuseg_home = str(home)
    return model_dir


MIXED_LANGUAGE_CASES = (
    ("en", "Hello world, this is a test."),
    ("fr", "Bonjour tout le monde, comment allez-vous?"),
    ("de", "Guten Morgen! Wie geht es dir heute?"),
    ("es", "¿Dónde está la biblioteca?"),
    ("ko", "안녕하세요, 만나서 반갑습니다."),
    ("el", "Καλημέρα σε όλους."),
    ("hi", "नमस्ते, आप कैसे हैं?"),
    ("ar", "مرحبا بكم في بيتنا."),
)
"""Languages whose front end needs no optional package (the device image has none)."""


def mixed_language_requests(count: int, max_new_tokens: int) -> list[Any]:
    """``count`` greedy multilingual ``T3Request``s cycling through
    :data:`MIXED_LANGUAGE_CASES`, with random voices of 150, 60 and 9 prompt tokens and mixed
    CFG weights: the batch tests/test_multilingual_gpu.py and bench/mtl_graph_diff.py run."""
    from chatterbox_t3 import T3Request, T3SamplingParams
    from vllm_cpu_test_support.checkpoints import random_t3_voice

    weights = (0.5, 0.0, 1.0, 0.3)
    cases = (MIXED_LANGUAGE_CASES * (count // len(MIXED_LANGUAGE_CASES) + 1))[:count]
    return [
        T3Request(
            text,
            random_t3_voice(300 + i, (150, 60, 9)[i % 3]),
            T3SamplingParams(
                temperature=0.0,
                # 1.2 rather than the multilingual 2.0: with random weights 2.0 rarely lets the
                # analyzer fire within the token budget, 1.2 makes it stop most requests early.
                repetition_penalty=1.2,
                cfg_weight=weights[i % len(weights)],
                max_new_tokens=max_new_tokens,
            ),
            language=language,
        )
        for i, (language, text) in enumerate(cases)
    ]
