"""Checkpoint files: what a Chatterbox checkpoint directory holds and how to get one from the Hub."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from chatterbox_vllm.errors import CheckpointError
from chatterbox_vllm.models import (
    ENGLISH_T3_FILE,
    MODEL_DESCRIPTIONS,
    MODEL_FILES,
    MODEL_KINDS,
    MULTILINGUAL_T3_FILE,
    OPTIONAL_FILES,
    ModelKind,
    check_model_kind,
    detect_model,
)

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = "ResembleAI/chatterbox"
DEFAULT_REVISION = "1b475dffa71fb191cb6d5901215eb6f55635a9b6"
"""Hub commit of ``ResembleAI/chatterbox`` pinned for the English 0.1.2-era weights: the revision that
public ports of chatterbox-tts 0.1.2 (e.g. randombk/chatterbox-vllm's ``from_pretrained``) download
these five files from. Not verifiable offline; pass ``revision="main"`` to follow the branch."""

MULTILINGUAL_REVISION: str | None = "main"
"""Hub revision of ``ResembleAI/chatterbox`` for the multilingual files. chatterbox-tts 0.1.7
itself downloads ``main``, and no commit holding them could be verified offline, so this follows
the branch; pass ``revision=<commit>`` to pin a snapshot."""
TURBO_REPO_ID = "ResembleAI/chatterbox-turbo"
"""Hub repository of Chatterbox Turbo (chatterbox-tts 0.1.7's ``ChatterboxTurboTTS``)."""
TURBO_REVISION: str | None = "main"
"""Hub revision of :data:`TURBO_REPO_ID`: ``main``, as the reference downloads it (no commit could
be verified offline); pass ``revision=<commit>`` to pin a snapshot."""
DEFAULT_REVISIONS: dict[ModelKind, str | None] = {
    "english": DEFAULT_REVISION,
    "multilingual": MULTILINGUAL_REVISION,
    "turbo": TURBO_REVISION,
}
"""The revision each model's download uses when none is given."""
DEFAULT_REPO_IDS: dict[ModelKind, str] = {
    "english": DEFAULT_REPO_ID,
    "multilingual": DEFAULT_REPO_ID,
    "turbo": TURBO_REPO_ID,
}
"""The repository each model's download uses when the default one is given."""

CHECKPOINT_FILES: dict[str, str] = MODEL_FILES["english"]
"""The five files of ``ResembleAI/chatterbox`` used by the English model, with what each holds
(:data:`chatterbox_vllm.models.MODEL_FILES` has every model's)."""


def inspect_checkpoint_dir(
    directory: str | os.PathLike, *, require_conds: bool = False
) -> tuple[Path, ModelKind]:
    """``(directory, the model it holds)`` after checking that every file of that model is there.

    Raises :class:`CheckpointError` naming each missing file and what it should contain."""
    path = Path(directory)
    every_model = "; ".join(f"{kind}: {', '.join(MODEL_FILES[kind])}" for kind in MODEL_KINDS)
    if path.exists() and not path.is_dir():
        raise CheckpointError(
            f"checkpoint directory {path} is not a directory (it is a file); pass the directory "
            f"that holds one model's files ({every_model})"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint directory {path} does not exist (expected a directory with one "
            f"model's files: {every_model})"
        )
    model = _model_of(path)
    files = MODEL_FILES[model]
    required = [name for name in files if require_conds or name not in OPTIONAL_FILES]
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        details = "; ".join(f"{name}: {files[name]}" for name in missing)
        raise CheckpointError(f"checkpoint directory {path} ({model} model) is missing {details}")
    return path, model


def _model_of(path: Path) -> ModelKind:
    """The model ``path`` holds; without a T3 file, the model whose other files are there (so
    the error names the missing T3 file like any other missing file)."""
    try:
        return detect_model(path)
    except CheckpointError:
        if (path / ENGLISH_T3_FILE).is_file() and (path / MULTILINGUAL_T3_FILE).is_file():
            raise  # both T3 files: which model to load would be a guess
        for model in MODEL_KINDS:
            own = set(MODEL_FILES[model]) - OPTIONAL_FILES
            others = {name for kind in MODEL_KINDS if kind != model for name in MODEL_FILES[kind]}
            if any((path / name).is_file() for name in own - others):
                return model
        raise


def check_checkpoint_dir(directory: str | os.PathLike, *, require_conds: bool = False) -> Path:
    """Returns ``directory`` as a Path after checking that every file of the model it holds
    (:func:`inspect_checkpoint_dir`) is there."""
    return inspect_checkpoint_dir(directory, require_conds=require_conds)[0]


def describe_model(model: ModelKind) -> str:
    """One line naming the model, for logs and reports."""
    return f"{model} ({MODEL_DESCRIPTIONS[model]})"


def download_checkpoint(
    repo_id: str = DEFAULT_REPO_ID,
    revision: str | None = DEFAULT_REVISION,
    *,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
    model: ModelKind = "english",
) -> Path:
    """Downloads (or finds in the Hugging Face cache) the files of ``model``
    (:data:`~chatterbox_vllm.models.MODEL_FILES`); returns their snapshot directory.

    ``revision`` defaults to the English pin; for ``model="multilingual"`` that default means
    :data:`MULTILINGUAL_REVISION` (the English pin predates the multilingual files), and for
    ``model="turbo"`` :data:`TURBO_REVISION` of :data:`TURBO_REPO_ID` (the default ``repo_id``
    then means Turbo's own repository). Uses
    ``huggingface_hub.snapshot_download`` with ``allow_patterns`` so only those files are
    fetched. The usual cache rules apply (``HF_HOME``/``HF_HUB_CACHE`` or ``cache_dir``), and with
    ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) nothing is fetched: a cached snapshot of
    that revision is used, or a :class:`CheckpointError` says it is not cached.
    """
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    model = check_model_kind(model)
    if model != "english" and revision == DEFAULT_REVISION:
        revision = DEFAULT_REVISIONS[model]
    if repo_id == DEFAULT_REPO_ID:
        repo_id = DEFAULT_REPO_IDS[model]  # Turbo lives in its own repository
    files = MODEL_FILES[model]
    offline = (
        bool(local_files_only)
        or hub_constants.HF_HUB_OFFLINE
        or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    )
    logger.info(
        "fetching %s@%s (%s)%s",
        repo_id,
        revision or "main",
        ", ".join(files),
        " from the local cache only" if offline else "",
    )
    try:
        snapshot = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            allow_patterns=list(files),
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
    path, found = inspect_checkpoint_dir(snapshot, require_conds=True)
    if found != model:
        raise CheckpointError(
            f"{repo_id}@{revision or 'main'} gave the {found} model's files, not the {model} "
            f"model's ({', '.join(files)})"
        )
    return path
