"""Failure modes, round three (issue #24), through the real CLI: a word too long for the engine
the flags describe is refused before the model loads, and ``make-random-checkpoint`` never
replaces another model's checkpoint without ``--force``."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatterbox_vllm.errors import CheckpointError

LOADING = "chatterbox_vllm.tts: loading"


def test_a_word_too_long_for_the_engine_fails_before_loading(
    cli, tiny_checkpoint_from_cli: Path, small_engine, tmp_path: Path
) -> None:
    # --max-new-tokens 40 and --max-chunk-chars 60 derive max_model_len=144: far fewer text
    # positions than T3's 2,048, and a word has nowhere to be split.
    result = cli(
        "speak", "a" * 3000, "--out", str(tmp_path / "x.wav"),
        "--model-dir", str(tiny_checkpoint_from_cli), *small_engine,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "text needs 3001 tokens after normalisation, at most" in result.stderr
    assert "max_model_len=144 positions" in result.stderr
    assert LOADING not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.wav").exists()


def _english_lookalike(directory: Path) -> dict[str, bytes]:
    directory.mkdir()
    files = {"t3_cfg.safetensors": b"english T3", "s3gen.safetensors": b"english S3Gen"}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def test_make_random_checkpoint_keeps_another_models_files(tmp_path: Path) -> None:
    from chatterbox_vllm.checkpoint import make_random_checkpoint

    directory = tmp_path / "english"
    files = _english_lookalike(directory)
    message = r"holds another model's checkpoint files \(t3_cfg.safetensors, s3gen.safetensors\)"
    with pytest.raises(CheckpointError, match=message):
        make_random_checkpoint(directory, model="multilingual")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files  # nothing touched
