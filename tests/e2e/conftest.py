"""Fixtures of the whole-product end-to-end tests: checkpoints and recordings made here, the
``chatterbox-vllm`` command run as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

# The vLLM CPU test support wants one OpenMP thread per process and a small KV-cache reservation.
CPU_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Engine options that keep a CPU run short (random weights never stop: every chunk hits its cap).
SMALL_ENGINE = [
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--enforce-eager",
    "--num-gpu-blocks",
    "128",
    "--max-num-seqs",
    "8",
    "--max-new-tokens",
    "40",
    "--max-chunk-chars",
    "60",
    "--cfm-steps",
    "2",
    "--no-watermark",
]


def run_cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **CPU_ENV, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "chatterbox_vllm.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


@pytest.fixture(scope="session")
def tiny_checkpoint_from_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``chatterbox-vllm make-random-checkpoint DIR --size tiny`` run once per session."""
    directory = tmp_path_factory.mktemp("cli-tiny") / "checkpoint"
    result = run_cli("make-random-checkpoint", str(directory), "--size", "tiny", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert f"wrote a tiny random checkpoint to {directory}" in result.stdout
    return directory


@pytest.fixture(scope="session")
def voice_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s voice-like recording at 22.05 kHz (resampled by the product)."""
    rate = 22_050
    t = np.arange(4 * rate) / rate
    rng = np.random.default_rng(9)
    f0 = 140 * (1 + 0.05 * np.sin(2 * np.pi * 0.6 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6)) + 0.01 * rng.standard_normal(
        t.size
    )
    path = tmp_path_factory.mktemp("voice") / "voice.wav"
    soundfile.write(path, wave.astype(np.float32), rate)
    return path


@pytest.fixture(scope="session")
def small_engine() -> list[str]:
    return list(SMALL_ENGINE)


@pytest.fixture(scope="session")
def hub_cache() -> Callable[..., Path]:
    """Lays out a Hugging Face cache entry by hand (blobs, refs/main, snapshot symlinks), as
    huggingface_hub writes it, so the Hub code path runs offline."""

    def populate(cache_dir: Path, repo_id: str, revision: str, files: dict[str, Path]) -> Path:
        repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo_dir / "snapshots" / revision
        for folder in (repo_dir / "blobs", repo_dir / "refs", snapshot):
            folder.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision)
        for index, (name, source) in enumerate(files.items()):
            blob = repo_dir / "blobs" / f"{index:040x}"
            shutil.copyfile(source, blob)
            (snapshot / name).symlink_to(blob)
        return snapshot

    return populate
