"""Shared fixtures of the chatterbox-vllm tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def populate_hub_cache(
    cache_dir: Path, repo_id: str, revision: str, files: dict[str, Path | bytes], ref: str = "main"
) -> Path:
    """Writes ``models--{org}--{name}/{blobs,refs,snapshots}`` as huggingface_hub does (snapshot
    entries are symlinks into blobs); returns the snapshot directory."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(revision)
    for index, (name, content) in enumerate(files.items()):
        blob = repo_dir / "blobs" / f"{index:040x}"
        if isinstance(content, bytes):
            blob.write_bytes(content)
        else:
            shutil.copyfile(content, blob)
        (snapshot / name).symlink_to(blob)
    return snapshot


@pytest.fixture
def hub_cache() -> Callable[..., Path]:
    """:func:`populate_hub_cache`, as a fixture (test modules are not importable by name)."""
    return populate_hub_cache


# --------------------------------------------------------------------------- end-to-end fixtures

# Small engine settings for the CPU test support: a short token budget keeps every chunk cheap
# (random weights never emit the stop token, so each chunk runs to its cap).
TEST_ENGINE = {
    "device": "cpu",
    "dtype": "float32",
    "enforce_eager": True,
    "num_gpu_blocks_override": 128,
    "max_num_seqs": 8,
    "max_new_tokens": 200,
    "max_chunk_chars": 60,
    "cfm_steps": 4,
    "s3gen_batch_size": 4,
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint written once per session by the product's own composer."""
    from chatterbox_vllm.checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tts(tiny_checkpoint: Path):
    """One ChatterboxTTS (real vLLM engine on the CPU test support) shared by the session."""
    from chatterbox_vllm import ChatterboxTTS

    engine = ChatterboxTTS.from_local(tiny_checkpoint, watermark=False, **TEST_ENGINE)
    yield engine
    engine.close()


def voice_signal(seconds: float, rate: int, pitch: float, seed: int):
    """A voice-like test recording: a harmonic stack with a pitch wobble, syllable-rate envelope
    and a little noise (numpy float32)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = pitch * (1 + 0.04 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(0.25 / k * np.sin(k * phase) for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None)
    return (voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def voice_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference recordings written with soundfile: a 24 kHz mono wav and a 16 kHz mono flac."""
    import soundfile

    directory = tmp_path_factory.mktemp("voices")
    low = directory / "low.wav"
    soundfile.write(low, voice_signal(3.0, 24_000, 120.0, seed=1), 24_000)
    high = directory / "high.flac"
    soundfile.write(high, voice_signal(4.0, 16_000, 230.0, seed=2), 16_000)
    return {"low": low, "high": high}
