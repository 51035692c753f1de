"""The ``chatterbox-vllm`` command end to end on CPU (tiny random checkpoint, real vLLM engine),
run in a subprocess as a user runs it."""

from __future__ import annotations

import re
from pathlib import Path

import soundfile

from chatterbox_vllm.hub import CHECKPOINT_FILES, DEFAULT_REPO_ID, DEFAULT_REVISION

SAMPLES_PER_TOKEN = 960  # 25 tokens/s at 24 kHz


def _check_wav(path: Path, printed: str, max_tokens: int) -> None:
    info = soundfile.info(str(path))
    assert info.samplerate == 24_000 and info.channels == 1
    assert 0 < info.frames <= max_tokens * SAMPLES_PER_TOKEN
    assert info.frames % 480 == 0  # whole mel frames
    seconds = float(re.search(r"\(([\d.]+) s, 24000 Hz", printed).group(1))
    assert abs(seconds - info.frames / 24_000) < 0.01


def test_make_random_checkpoint_writes_the_five_files(tiny_checkpoint_from_cli: Path) -> None:
    for name in CHECKPOINT_FILES:
        assert (tiny_checkpoint_from_cli / name).is_file(), name


def test_speak_with_a_local_checkpoint_writes_a_24k_wav(
    cli, tiny_checkpoint_from_cli: Path, voice_wav: Path, small_engine: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "hello.wav"
    result = cli(
        "speak",
        "Hello from the command line.",
        "--model-dir",
        str(tiny_checkpoint_from_cli),
        "--voice",
        str(voice_wav),
        "--out",
        str(out),
        "--seed",
        "1",
        "--quiet",
        *small_engine,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "1 chunk(s)" in result.stdout
    _check_wav(out, result.stdout, max_tokens=40)


def test_speak_from_stdin_through_the_hub_cache(
    cli, tiny_checkpoint_from_cli: Path, small_engine: list[str], tmp_path: Path, hub_cache
) -> None:
    """No --model-dir: the Hub path, answered from a pre-populated cache with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf-cache"
    hub_cache(
        cache,
        DEFAULT_REPO_ID,
        DEFAULT_REVISION,
        {name: tiny_checkpoint_from_cli / name for name in CHECKPOINT_FILES},
    )
    # The tiny configs travel with the snapshot too (a real snapshot has none).
    for extra in ("t3_config.json", "s3gen_config.json"):
        (
            cache / "models--ResembleAI--chatterbox" / "snapshots" / DEFAULT_REVISION / extra
        ).write_bytes((tiny_checkpoint_from_cli / extra).read_bytes())
    out = tmp_path / "piped.flac"
    text = "First sentence from a pipe. A second sentence follows it here."
    result = cli(
        "speak",
        "--out",
        str(out),
        "--quiet",
        *small_engine,
        stdin=text,
        env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "2 chunk(s)" in result.stdout
    info = soundfile.info(str(out))
    assert info.samplerate == 24_000 and info.frames > 0


def test_bench_reports_every_figure(
    cli, tiny_checkpoint_from_cli: Path, voice_wav: Path, small_engine: list[str], tmp_path: Path
) -> None:
    text_file = tmp_path / "text.txt"
    text_file.write_text("One sentence to start. " * 3 + "Then a longer one, with a clause. " * 2)
    result = cli(
        "bench",
        "--text-file",
        str(text_file),
        "--voice",
        str(voice_wav),
        "--model-dir",
        str(tiny_checkpoint_from_cli),
        "--seed",
        "4",
        *small_engine,
    )
    assert result.returncode == 0, result.stderr
    for row in (
        "chunks",
        "token cap",
        "audio duration",
        "model load",
        "T3 (first request",
        "S3Gen (busy)",
        "S3Gen overlapping T3",
        "real-time factor",
        "T3 speech tokens",
        "peak GPU memory",
    ):
        assert row in result.stdout, row
    assert "random weights never emit the stop token" in result.stdout
    chunks = int(re.search(r"^chunks\s+(\d+)", result.stdout, re.MULTILINE).group(1))
    assert chunks >= 3
