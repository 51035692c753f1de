"""Starting a real ``chatterbox-vllm serve`` process on 127.0.0.1 (tiny random checkpoint, CPU)
for the server tests. Each test module starts at most one, module-scoped."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vllm_cpu_test_support.settings import CLI_ENGINE_ARGS, CPU_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_args(max_new_tokens: int = 120) -> list[str]:
    args = list(CLI_ENGINE_ARGS)
    args[args.index("--max-new-tokens") + 1] = str(max_new_tokens)
    return args


@contextlib.contextmanager
def running_server(
    checkpoint: Path, log_path: Path, *extra: str, api_key: str, max_new_tokens: int = 120
) -> Iterator[dict]:
    """Starts ``serve`` on a free port and waits until ``/health`` answers 200; stops it
    afterwards (unless a test already did). Yields ``base``, ``process``, ``log``, ``port``."""
    port = free_port()
    command = [
        sys.executable, "-m", "chatterbox_vllm.cli", "serve",
        "--model-dir", str(checkpoint), "--port", str(port), "--api-key", api_key,
        *extra, *engine_args(max_new_tokens),
    ]  # fmt: skip
    log = log_path.open("w+")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CPU_ENV}
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"server exited with {process.returncode}:\n{log.read()[-4000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("server did not become healthy in 600 s")
    try:
        yield {"base": base, "process": process, "log": log, "port": port}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def launch_server():
    """:func:`running_server`: ``with launch_server(checkpoint, log_path, *flags, api_key=...)``."""
    return running_server
