"""Checkpoint-directory checks and the Hub download path, against a hand-made offline cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest

from chatterbox_vllm.errors import CheckpointError
from chatterbox_vllm.hub import (
    CHECKPOINT_FILES,
    DEFAULT_REPO_ID,
    DEFAULT_REVISION,
    check_checkpoint_dir,
    download_checkpoint,
)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_pinned_revision_is_a_full_commit_hash() -> None:
    assert len(DEFAULT_REVISION) == 40 and int(DEFAULT_REVISION, 16) >= 0
    assert DEFAULT_REPO_ID == "ResembleAI/chatterbox"


def test_cached_snapshot_is_found_offline(
    tmp_path: Path, offline: None, hub_cache: Callable[..., Path]
) -> None:
    files = {name: name.encode() for name in CHECKPOINT_FILES}
    snapshot = hub_cache(tmp_path, DEFAULT_REPO_ID, DEFAULT_REVISION, files)
    found = download_checkpoint(cache_dir=tmp_path)
    assert found == snapshot
    assert (found / "t3_cfg.safetensors").read_bytes() == b"t3_cfg.safetensors"
    # A branch name resolves through refs/ as huggingface_hub does.
    assert download_checkpoint(revision="main", cache_dir=tmp_path) == snapshot


def test_uncached_revision_offline_says_how_to_fix(
    tmp_path: Path, offline: None, hub_cache: Callable[..., Path]
) -> None:
    with pytest.raises(CheckpointError, match=r"not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        download_checkpoint(revision="0" * 40, cache_dir=tmp_path)


def test_snapshot_missing_a_file_names_it(
    tmp_path: Path, offline: None, hub_cache: Callable[..., Path]
) -> None:
    files = {name: b"x" for name in CHECKPOINT_FILES if name != "s3gen.safetensors"}
    hub_cache(tmp_path, DEFAULT_REPO_ID, DEFAULT_REVISION, files)
    with pytest.raises(CheckpointError, match=r"missing s3gen\.safetensors: S3Gen weights"):
        download_checkpoint(cache_dir=tmp_path, local_files_only=True)


def test_local_directory_checks(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint_dir(tmp_path / "nope")
    for name in CHECKPOINT_FILES:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "conds.pt").unlink()
    assert check_checkpoint_dir(tmp_path) == tmp_path  # conds.pt is optional locally
    with pytest.raises(CheckpointError, match=r"missing conds\.pt: built-in default voice"):
        check_checkpoint_dir(tmp_path, require_conds=True)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "ve.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing ve\.safetensors: .*; tokenizer\.json: "):
        check_checkpoint_dir(tmp_path)
