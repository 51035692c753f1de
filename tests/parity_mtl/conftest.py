"""Fixtures shared by the Chatterbox Multilingual parity tests (reference chatterbox-tts 0.1.7).

``mtl_model_dir``: a checkpoint directory holding the generated multilingual tokenizer and Cangjie
table, with the Cangjie table also laid out as a Hub cache entry of ``ResembleAI/chatterbox``: the
reference loads it with ``hf_hub_download(..., cache_dir=<tokenizer's directory>)``, which finds it
there offline. ``reference_mtl_tokenizer``: the reference's ``MTLTokenizer`` on those files (with
spacy-pkuseg's stand-in model installed, so both sides segment Chinese with the same model).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

# Before huggingface_hub is imported (it reads the variable once): no network attempts.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REFERENCE_VERSION = "0.1.7"
REFERENCE_REPO = "ResembleAI/chatterbox"
REVISION = "0" * 40


def _reference_installed() -> bool:
    try:
        return version("chatterbox-tts") == REFERENCE_VERSION
    except PackageNotFoundError:
        return False


if not _reference_installed():
    pytest.skip(
        f"the reference chatterbox-tts {REFERENCE_VERSION} is not installed (nox -s parity_mtl)",
        allow_module_level=True,
    )


@pytest.fixture(scope="session")
def mtl_model_dir(tmp_path_factory: pytest.TempPathFactory, pkuseg_home: Path) -> Path:
    from chatterbox_t3.tokenizer_builder import CANGJIE_FILE
    from vllm_cpu_test_support.hub import populate_hub_cache
    from vllm_cpu_test_support.multilingual import write_multilingual_text_files

    directory = tmp_path_factory.mktemp("mtl-checkpoint")
    write_multilingual_text_files(directory)
    populate_hub_cache(
        directory, REFERENCE_REPO, REVISION, {CANGJIE_FILE: directory / CANGJIE_FILE}
    )
    return directory


@pytest.fixture(scope="session")
def reference_mtl_tokenizer(mtl_model_dir: Path) -> Any:
    import huggingface_hub.constants
    from chatterbox.models.tokenizers import MTLTokenizer

    from chatterbox_t3.tokenizer_builder import MULTILINGUAL_TOKENIZER_FILE

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    tokenizer = MTLTokenizer(str(mtl_model_dir / MULTILINGUAL_TOKENIZER_FILE))
    # The reference only warns when it cannot load the table; an empty mapping would make the
    # Chinese comparison vacuous.
    assert tokenizer.cangjie_converter.word2cj, "the reference did not load the Cangjie table"
    assert tokenizer.cangjie_converter.segmenter is not None, "the reference has no segmenter"
    return tokenizer


@pytest.fixture(scope="session")
def reference_punc_norm() -> Callable[[str], str]:
    from chatterbox.mtl_tts import punc_norm

    return punc_norm  # type: ignore[no-any-return]
