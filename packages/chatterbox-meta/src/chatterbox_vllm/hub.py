"""Checkpoint files: what a Chatterbox checkpoint directory holds and how to get one from the Hub."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from chatterbox_vllm.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = "ResembleAI/chatterbox"
DEFAULT_REVISION = "1b475dffa71fb191cb6d5901215eb6f55635a9b6"
"""Hub commit of ``ResembleAI/chatterbox`` pinned for the English 0.1.2-era weights: the revision that
public ports of chatterbox-tts 0.1.2 (e.g. randombk/chatterbox-vllm's ``from_pretrained``) download
these five files from. Not verifiable offline; pass ``revision="main"`` to follow the branch."""

CHECKPOINT_FILES: dict[str, str] = {
    "ve.safetensors": "voice encoder weights (3-layer LSTM speaker embedder, 16 tensors)",
    "t3_cfg.safetensors": "T3 weights (Llama-520M backbone + conditioning encoder, 292 tensors)",
    "s3gen.safetensors": "S3Gen weights (S3 tokenizer, CAMPPlus, flow decoder, HiFT vocoder)",
    "tokenizer.json": "T3 text tokenizer (Hugging Face tokenizers BPE, 704 ids)",
    "conds.pt": "built-in default voice (torch.save of {'t3': ..., 'gen': ...} conditionals)",
}
"""The five files of ``ResembleAI/chatterbox`` used by the English model, with what each holds."""
OPTIONAL_FILES = frozenset({"conds.pt"})
"""Files a local checkpoint may omit: without ``conds.pt`` every request must name a voice."""


def check_checkpoint_dir(directory: str | os.PathLike, *, require_conds: bool = False) -> Path:
    """Returns ``directory`` as a Path after checking that every checkpoint file is there.

    Raises :class:`CheckpointError` naming each missing file and what it should contain.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise CheckpointError(
            f"checkpoint directory {path} is not a directory (it is a file); pass the directory "
            f"that holds {', '.join(CHECKPOINT_FILES)}"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint directory {path} does not exist (expected a directory with "
            f"{', '.join(CHECKPOINT_FILES)})"
        )
    required = [name for name in CHECKPOINT_FILES if require_conds or name not in OPTIONAL_FILES]
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        details = "; ".join(f"{name}: {CHECKPOINT_FILES[name]}" for name in missing)
        raise CheckpointError(f"checkpoint directory {path} is missing {details}")
    return path


def download_checkpoint(
    repo_id: str = DEFAULT_REPO_ID,
    revision: str | None = DEFAULT_REVISION,
    *,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Downloads (or finds in the Hugging Face cache) the five checkpoint files; returns their
    snapshot directory.

    Uses ``huggingface_hub.snapshot_download`` with ``allow_patterns`` so only those files are
    fetched. The usual cache rules apply (``HF_HOME``/``HF_HUB_CACHE`` or ``cache_dir``), and with
    ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) nothing is fetched: a cached snapshot of
    that revision is used, or a :class:`CheckpointError` says it is not cached.
    """
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = (
        bool(local_files_only)
        or hub_constants.HF_HUB_OFFLINE
        or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    )
    logger.info(
        "fetching %s@%s (%s)%s",
        repo_id,
        revision or "main",
        ", ".join(CHECKPOINT_FILES),
        " from the local cache only" if offline else "",
    )
    try:
        snapshot = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            allow_patterns=list(CHECKPOINT_FILES),
            token=token,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as error:
        raise CheckpointError(
            f"{repo_id}@{revision or 'main'} is not in the Hugging Face cache "
            f"({cache_dir or hub_constants.HF_HUB_CACHE}) and downloading is "
            f"{'disabled (HF_HUB_OFFLINE=1 or local_files_only)' if offline else 'impossible'}: "
            f"{error}. Download it once with network access, or use a local directory "
            "(ChatterboxTTS.from_local / --model-dir)"
        ) from error
    return check_checkpoint_dir(snapshot, require_conds=True)
