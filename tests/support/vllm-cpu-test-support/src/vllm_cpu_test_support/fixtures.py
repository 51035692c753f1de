"""The shared pytest fixtures of every test folder (a ``pytest11`` plugin: active wherever this
package is installed, no conftest import needed).

Checkpoints (session-scoped, written once, random weights in the real layout, each by its own
component's writer; a fixture needs only the component it names):

* ``t3_checkpoint``: T3's files (chatterbox_t3);
* ``s3gen_checkpoint``: S3Gen's files (chatterbox_s3gen);
* ``chatterbox_checkpoint``: the whole product checkpoint (chatterbox_vllm).

Multilingual text (:mod:`.multilingual`): ``mtl_text_files`` (a directory with the generated
``grapheme_mtl_merged_expanded_v1.json`` and ``Cangjie5_TC.json``) and ``pkuseg_home`` (a tiny
stand-in for spacy-pkuseg's downloaded model, installed where ``pkuseg()`` finds it).

Signals and settings: ``voice_files`` (``{"low": 24 kHz wav, "high": 16 kHz flac}``), ``voice_wav``
(22.05 kHz wav), ``tone`` / ``speech_tokens`` / ``make_t3_voice`` (the generators of
:mod:`.signals` and :mod:`.checkpoints`), ``hub_cache`` (:func:`.hub.populate_hub_cache`),
``t3_engine_options`` / ``chatterbox_engine_options`` / ``cli_engine_args`` (copies of
:mod:`.settings`). Folders whose tests say ``tiny_checkpoint`` alias it to one of the three in
their conftest.

Every session also gets a private derived-model cache (``CHATTERBOX_VLLM_CACHE``), so tests never
write to ``~/.cache``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Derived vLLM model directories go to a temporary cache, never to ~/.cache."""
    path = tmp_path_factory.mktemp("chatterbox-vllm-cache")
    previous = os.environ.get("CHATTERBOX_VLLM_CACHE")
    os.environ["CHATTERBOX_VLLM_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("CHATTERBOX_VLLM_CACHE", None)
    else:
        os.environ["CHATTERBOX_VLLM_CACHE"] = previous


# ------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="session")
def t3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllm_cpu_test_support.checkpoints import write_t3_checkpoint

    return write_t3_checkpoint(tmp_path_factory.mktemp("t3-tiny"))


@pytest.fixture(scope="session")
def s3gen_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllm_cpu_test_support.checkpoints import write_s3gen_checkpoint

    return write_s3gen_checkpoint(tmp_path_factory.mktemp("s3gen-tiny"))


@pytest.fixture(scope="session")
def chatterbox_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllm_cpu_test_support.checkpoints import write_chatterbox_checkpoint

    return write_chatterbox_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


# ------------------------------------------------------------------------------ signals
@pytest.fixture(scope="session")
def mtl_text_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllm_cpu_test_support.multilingual import write_multilingual_text_files

    return write_multilingual_text_files(tmp_path_factory.mktemp("mtl-text")).parent


@pytest.fixture(scope="session")
def pkuseg_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("spacy_pkuseg", reason="spacy-pkuseg (the multilingual extra) missing")
    from vllm_cpu_test_support.multilingual import install_pkuseg_model

    home = tmp_path_factory.mktemp("pkuseg")
    install_pkuseg_model(home)
    return home


@pytest.fixture(scope="session")
def voice_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference recordings: ``low`` (3 s, 24 kHz wav), ``high`` (4 s, 16 kHz flac)."""
    from vllm_cpu_test_support.signals import write_voice_files

    return write_voice_files(tmp_path_factory.mktemp("voices"))


@pytest.fixture(scope="session")
def voice_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s voice-like recording at 22.05 kHz (resampled by the product)."""
    from vllm_cpu_test_support.signals import write_voice_wav

    return write_voice_wav(tmp_path_factory.mktemp("voice") / "voice.wav")


@pytest.fixture(scope="session")
def tone() -> Callable[..., Any]:
    """``tone(seconds, sample_rate=24000, freqs=(220, 440), noise=0.01, seed=0)`` -> float32 wav."""
    from vllm_cpu_test_support.signals import tone

    return tone


@pytest.fixture(scope="session")
def speech_tokens() -> Callable[[int, int], list[int]]:
    """``speech_tokens(count, seed)`` -> seeded speech-token ids in [0, 6561)."""
    from vllm_cpu_test_support.signals import random_speech_tokens

    return random_speech_tokens


@pytest.fixture(scope="session")
def make_t3_voice() -> Callable[..., Any]:
    """``make_t3_voice(seed, num_prompt_tokens=150)`` -> a random ``chatterbox_t3.T3Voice``."""
    from vllm_cpu_test_support.checkpoints import random_t3_voice

    return random_t3_voice


@pytest.fixture(scope="session")
def hub_cache() -> Callable[..., Path]:
    """:func:`vllm_cpu_test_support.hub.populate_hub_cache`, as a fixture."""
    from vllm_cpu_test_support.hub import populate_hub_cache

    return populate_hub_cache


# ------------------------------------------------------------------------------ settings
@pytest.fixture(scope="session")
def t3_engine_options() -> dict[str, Any]:
    from vllm_cpu_test_support.settings import T3_ENGINE

    return dict(T3_ENGINE)


@pytest.fixture(scope="session")
def chatterbox_engine_options() -> dict[str, Any]:
    from vllm_cpu_test_support.settings import CHATTERBOX_ENGINE

    return dict(CHATTERBOX_ENGINE)


@pytest.fixture(scope="session")
def cli_engine_args() -> list[str]:
    from vllm_cpu_test_support.settings import CLI_ENGINE_ARGS

    return list(CLI_ENGINE_ARGS)
