"""A Hugging Face Hub cache entry laid out by hand, so the Hub code path runs offline."""

from __future__ import annotations

import shutil
from pathlib import Path


def populate_hub_cache(
    cache_dir: Path, repo_id: str, revision: str, files: dict[str, Path | bytes], ref: str = "main"
) -> Path:
    """Writes ``models--{org}--{name}/{blobs,refs,snapshots}`` as huggingface_hub does (snapshot
    entries are symbolic links into blobs, ``refs/{ref}`` names the revision); returns the
    snapshot directory. ``files`` maps names to a file to copy or the bytes to write."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    for folder in (repo_dir / "blobs", repo_dir / "refs", snapshot):
        folder.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(revision)
    for index, (name, content) in enumerate(files.items()):
        blob = repo_dir / "blobs" / f"{index:040x}"
        if isinstance(content, bytes):
            blob.write_bytes(content)
        else:
            shutil.copyfile(content, blob)
        (snapshot / name).symlink_to(blob)
    return snapshot
