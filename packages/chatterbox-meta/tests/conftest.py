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
