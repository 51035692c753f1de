"""Fixtures of the whole-product end-to-end tests: the ``chatterbox-vllm`` command run as a user
runs it. The voice recording (``voice_wav``), the Hub cache layout (``hub_cache``) and the CPU
engine flags come from the shared test-support plugin (``vllm_cpu_test_support.fixtures``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vllm_cpu_test_support.settings import CPU_ENV


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


run_cli.argv_prefix = [sys.executable, "-m", "chatterbox_vllm.cli"]  # type: ignore[attr-defined]
run_cli.environment = {**os.environ, **CPU_ENV}  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``chatterbox-vllm`` (``.argv_prefix`` / ``.environment`` for byte-level runs)."""
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
def small_engine(cli_engine_args: list[str]) -> list[str]:
    """``speak`` flags for a short CPU run."""
    return cli_engine_args
