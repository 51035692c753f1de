"""The README's commands work exactly as written.

* Blocks marked ``<!-- readme-test: cpu -->`` are run line by line, as a user would on a machine
  without a GPU (this is the slow part: it sets up the project environment with uv).
* Every ``chatterbox-vllm ...`` command anywhere in the README parses with the real CLI parser, so
  no README line names a flag or command that does not exist.
* Every Python snippet compiles, and a snippet that starts an engine has the ``__main__`` guard that
  vLLM's spawned engine process needs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from chatterbox_vllm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:<!-- readme-test: (\w+) -->\n)?```(\w+)\n(.*?)```", re.S)


def _blocks(language: str) -> list[tuple[str | None, str]]:
    return [(mark, body) for mark, lang, body in BLOCK.findall(README) if lang == language]


def _commands(body: str) -> list[str]:
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_has_the_two_commands_and_a_cpu_block() -> None:
    lines = [line for _, body in _blocks("bash") for line in _commands(body)]
    assert 'python3 -m pip install -q "uv>=0.5,<1" "nox>=2024.10" && nox' in lines
    assert any("uv run --package chatterbox-vllm chatterbox-vllm speak" in line for line in lines)
    assert any(mark == "cpu" for mark, _ in _blocks("bash"))


def test_every_chatterbox_command_in_the_readme_parses() -> None:
    seen = 0
    for _, body in _blocks("bash"):
        for line in _commands(body):
            for command in line.split("&&"):
                words = shlex.split(command)
                if "chatterbox-vllm" not in words:
                    continue
                # The program is the last "chatterbox-vllm" (uv run --package names it first).
                start = len(words) - words[::-1].index("chatterbox-vllm")
                args = words[start:]
                args = ["VALUE" if a.startswith("$") else a for a in args]  # shell variables
                build_parser().parse_args(args)  # SystemExit (exit 2) on a stale flag
                seen += 1
    assert seen >= 4


def test_python_snippets_compile_and_engine_scripts_are_guarded() -> None:
    snippets = [body for _, body in _blocks("python")]
    assert snippets
    for body in snippets:
        compile(body, "README snippet", "exec")
        if "ChatterboxTTS." in body:
            assert 'if __name__ == "__main__":' in body


@pytest.mark.timeout(1500)
def test_the_cpu_block_runs_exactly_as_written() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VIRTUAL_ENV", None)  # as in a user's shell: uv picks the project environment
    for mark, body in _blocks("bash"):
        if mark != "cpu":
            continue
        for line in _commands(body):
            result = subprocess.run(
                line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
            )
            assert (
                result.returncode == 0
            ), f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    import soundfile

    audio, rate = soundfile.read("/tmp/hello.wav")
    assert rate == 24_000 and 0 < len(audio) <= 50 * 960
