"""Fixtures shared by the Chatterbox Turbo parity tests (reference chatterbox-tts 0.1.7).

``turbo_tiny_dir``: a tiny random Turbo checkpoint (2-layer 256-wide GPT-2, a generated GPT-2 BPE
tokenizer with the paralinguistic tags) in the real file layout; ``reference_turbo_tokenizer``:
the tokenizer as the reference loads it (``AutoTokenizer`` on the directory, pad = eos);
``reference_tiny_gpt2``: the reference's name for the tiny backbone (registered in its
``LLAMA_CONFIGS``); ``meanflow_s3gen_file``: a full-size random ``s3gen_meanflow.safetensors``
(the reference's S3Gen has one size); ``voice_recording``: a voice-like test signal at any rate; ``reference_meanflow_capture``: hooks on a reference S3Gen
that capture the flow's start noise and seed its vocoder, so our model can be given the same.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REFERENCE_VERSION = "0.1.7"
TURBO_SEED = 2323
MEANFLOW_SEED = 2024
TINY_GPT2 = "GPT2_tiny_turbo_parity"


def _reference_installed() -> bool:
    try:
        return version("chatterbox-tts") == REFERENCE_VERSION
    except PackageNotFoundError:
        return False


if not _reference_installed():
    pytest.skip(
        f"the reference chatterbox-tts {REFERENCE_VERSION} is not installed (nox -s parity_turbo)",
        allow_module_level=True,
    )


@pytest.fixture(scope="session")
def turbo_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatterbox_t3.checkpoint import write_random_t3_checkpoint

    return write_random_t3_checkpoint(
        tmp_path_factory.mktemp("t3-turbo-tiny"), "tiny", seed=TURBO_SEED, model="turbo"
    )


@pytest.fixture(scope="session")
def reference_turbo_tokenizer(turbo_tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    # chatterbox-tts 0.1.7 ChatterboxTurboTTS.from_local's loading, line for line.
    tokenizer = AutoTokenizer.from_pretrained(turbo_tiny_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def turbo_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private derived-model cache (``CHATTERBOX_VLLM_CACHE``) for the session's engines."""
    path = tmp_path_factory.mktemp("vllm-model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHATTERBOX_VLLM_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def reference_tiny_gpt2(turbo_tiny_dir: Path) -> str:
    """The reference's ``GPT2_medium`` backbone config shrunk to the tiny checkpoint's layers and
    width, registered in its ``LLAMA_CONFIGS`` under the returned name."""
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS

    from chatterbox_t3.config import TurboT3Config, load_t3_config

    config = load_t3_config(turbo_tiny_dir)
    assert isinstance(config, TurboT3Config)
    LLAMA_CONFIGS[TINY_GPT2] = {
        **LLAMA_CONFIGS["GPT2_medium"],
        "n_embd": config.hidden_size,
        "hidden_size": config.hidden_size,
        "n_layer": config.num_hidden_layers,
        "n_head": config.num_attention_heads,
        "vocab_size": config.backbone_vocab_size,
    }
    return TINY_GPT2


@pytest.fixture(scope="session")
def meanflow_s3gen_file() -> Iterator[Path]:
    """A full-size random ``s3gen_meanflow.safetensors`` (1 GB), shared by the session's tests."""
    from chatterbox_s3gen import write_random_s3gen_checkpoint

    # RAM-backed /dev/shm when the machine has it (disk writes are the slow part).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="meanflow-parity-", dir=shm) as directory:
        yield Path(
            write_random_s3gen_checkpoint(
                directory, size="full", seed=MEANFLOW_SEED, file_format="meanflow"
            )
        )


MeanflowCapture = Callable[[Any, int], contextlib.AbstractContextManager[dict[str, torch.Tensor]]]


@pytest.fixture(scope="session")
def reference_meanflow_capture() -> MeanflowCapture:
    """``capture(reference_s3gen, vocoder_seed)``: a context in which the reference S3Gen's
    ``inference`` records its speech tokens (``tokens``), the start state its Euler solver receives
    (``x0``: prompt part and generated part, what our ``S3Gen.flow_noise`` takes), its time steps
    (``steps``) and the vocoder's input mel (``mel``), and its vocoder draws start from
    ``torch.manual_seed(vocoder_seed)`` (what our ``seeds=[vocoder_seed]`` reproduces)."""

    @contextlib.contextmanager
    def capture(reference: Any, vocoder_seed: int) -> Iterator[dict[str, torch.Tensor]]:
        captured: dict[str, torch.Tensor] = {}
        decoder = reference.flow.decoder
        inference, basic_euler, vocoder = (
            reference.inference,
            decoder.basic_euler,
            reference.mel2wav.inference,
        )

        def inference_spy(*args: Any, **kwargs: Any) -> Any:
            captured["tokens"] = kwargs["speech_tokens"].clone()
            return inference(*args, **kwargs)

        def euler_spy(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            captured["x0"] = x.clone()
            captured["steps"] = kwargs["t_span"].clone()
            return basic_euler(x, **kwargs)

        def vocoder_spy(speech_feat: torch.Tensor, cache_source: torch.Tensor) -> Any:
            captured["mel"] = speech_feat.clone()
            torch.manual_seed(vocoder_seed)
            return vocoder(speech_feat=speech_feat, cache_source=cache_source)

        reference.inference = inference_spy
        decoder.basic_euler, reference.mel2wav.inference = euler_spy, vocoder_spy
        try:
            yield captured
        finally:
            del reference.inference, decoder.basic_euler, reference.mel2wav.inference

    return capture


@pytest.fixture(scope="session")
def voice_recording() -> Callable[[float, int, int], torch.Tensor]:
    """``voice_recording(seconds, sample_rate, seed)``: a 140 -> 420 Hz chirp with two partials,
    3 Hz amplitude modulation and seeded noise (float32, peak about 0.4)."""

    def recording(seconds: float, sample_rate: int, seed: int) -> torch.Tensor:
        t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
        phase = 2 * math.pi * (140 * t + (420 - 140) / (2 * seconds) * t**2)
        envelope = 0.3 * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        return (envelope * (torch.sin(phase) + 0.3 * torch.sin(3 * phase)) + 0.02 * noise).float()

    return recording
