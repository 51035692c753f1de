"""Chatterbox Turbo's T3 side: model-kind detection and checkpoint files."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatterbox_t3.config import CHECKPOINT_FILES, TURBO_FILES, checkpoint_files, detect_model_kind
from chatterbox_t3.errors import CheckpointError, MissingCheckpointFileError


def _touch(directory: Path, names: tuple[str, ...]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"x")
    return directory


def test_turbo_is_detected_from_its_t3_file(tmp_path: Path) -> None:
    directory = _touch(tmp_path / "turbo", TURBO_FILES.required)
    assert detect_model_kind(directory) == "turbo"
    assert checkpoint_files(directory).t3 == "t3_turbo_v1.safetensors"
    # The reference loads the GPT-2 tokenizer directory with AutoTokenizer: BPE vocabulary,
    # merges and the tokenizer config are all needed.
    assert set(TURBO_FILES.required) == {
        "t3_turbo_v1.safetensors",
        "ve.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    }


def test_a_directory_with_two_t3_files_is_ambiguous(tmp_path: Path) -> None:
    directory = _touch(tmp_path, ("t3_cfg.safetensors", "t3_turbo_v1.safetensors"))
    with pytest.raises(CheckpointError, match="both t3_cfg.safetensors and t3_turbo_v1"):
        detect_model_kind(directory)


def test_no_t3_file_names_every_model_file(tmp_path: Path) -> None:
    with pytest.raises(MissingCheckpointFileError) as info:
        detect_model_kind(_touch(tmp_path, ("ve.safetensors",)))
    for files in CHECKPOINT_FILES.values():
        assert files.t3 in str(info.value)
