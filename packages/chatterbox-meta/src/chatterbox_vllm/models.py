"""The Chatterbox models a checkpoint directory can hold, and how to tell them apart.

``english`` is chatterbox-tts 0.1.2's model (``t3_cfg.safetensors``, English only);
``multilingual`` is chatterbox-tts 0.1.7's ``ChatterboxMultilingualTTS`` (``t3_mtl23ls_v2.safetensors``,
23 languages). Both use the same voice encoder and the same S3Gen (stored as ``.safetensors`` in
the English release and as ``torch.save`` state dicts, ``.pt``, in the multilingual one), so
voices and the voice cache are shared between them. ``turbo`` is 0.1.7's ``ChatterboxTurboTTS``
(``t3_turbo_v1.safetensors``: a GPT-2 medium T3 without CFG, and a 2-step meanflow S3Gen in
``s3gen_meanflow.safetensors``). :data:`MODEL_FILES` lists each model's Hub
files (the ``allow_patterns`` of its download); :func:`detect_model` says which model a directory
holds from its T3 file, before anything loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

from chatterbox_t3.config import CHECKPOINT_FILES as T3_CHECKPOINT_FILES
from chatterbox_t3.config import ModelKind, detect_model_kind
from chatterbox_vllm.errors import CheckpointError, InvalidParameterError, from_component_error

__all__ = ["MODEL_FILES", "MODEL_KINDS", "ModelKind", "check_model_kind", "detect_model"]

MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)
"""``english`` (chatterbox-tts 0.1.2's model), ``multilingual`` and ``turbo`` (0.1.7's), T3's
:data:`chatterbox_t3.config.ModelKind`."""

ENGLISH_T3_FILE = T3_CHECKPOINT_FILES["english"].t3
MULTILINGUAL_T3_FILE = T3_CHECKPOINT_FILES["multilingual"].t3
TURBO_T3_FILE = T3_CHECKPOINT_FILES["turbo"].t3

MODEL_FILES: dict[ModelKind, dict[str, str]] = {
    "english": {
        "ve.safetensors": "voice encoder weights (3-layer LSTM speaker embedder, 16 tensors)",
        ENGLISH_T3_FILE: "T3 weights (Llama-520M backbone + conditioning encoder, 292 tensors)",
        "s3gen.safetensors": "S3Gen weights (S3 tokenizer, CAMPPlus, flow decoder, HiFT vocoder)",
        "tokenizer.json": "T3 text tokenizer (Hugging Face tokenizers BPE, 704 ids)",
        "conds.pt": "built-in default voice (torch.save of {'t3': ..., 'gen': ...} conditionals)",
    },
    "multilingual": {
        "ve.pt": "voice encoder weights (torch.save state dict, the English model's 16 tensors)",
        MULTILINGUAL_T3_FILE: "multilingual T3 weights (the English backbone with a 2454-id "
        "text embedding and head)",
        "s3gen.pt": "S3Gen weights (torch.save state dict, the English model's 2490 tensors)",
        "grapheme_mtl_merged_expanded_v1.json": "multilingual text tokenizer (2454 ids, with "
        "[xx] language tokens)",
        "Cangjie5_TC.json": "Cangjie codes of Chinese characters (the zh text front end)",
        "conds.pt": "built-in default voice (torch.save of {'t3': ..., 'gen': ...} conditionals)",
    },
    "turbo": {
        "ve.safetensors": "voice encoder weights (the English model's 16 tensors)",
        TURBO_T3_FILE: "Turbo T3 weights (GPT-2 medium backbone + speaker projection)",
        "s3gen_meanflow.safetensors": "S3Gen weights with the 2-step meanflow flow decoder",
        "vocab.json": "GPT-2 BPE vocabulary of the Turbo text tokenizer",
        "merges.txt": "GPT-2 BPE merges of the Turbo text tokenizer",
        "tokenizer_config.json": "Turbo text tokenizer settings and added tokens (50,276 ids "
        "with paralinguistic tags such as [laugh])",
        "conds.pt": "built-in default voice (torch.save of {'t3': ..., 'gen': ...} conditionals)",
    },
}
"""Each model's files in ``ResembleAI/chatterbox`` (Turbo: ``ResembleAI/chatterbox-turbo``) (what its download fetches), with what each
holds; the multilingual list is chatterbox-tts 0.1.7's ``ChatterboxMultilingualTTS.from_pretrained``
``allow_patterns``."""
S3GEN_SILENCE_TOKEN = 4299
"""The S3 code of silence (chatterbox-tts 0.1.7's ``S3GEN_SIL``)."""
TRAILING_SPEECH_TOKENS: dict[ModelKind, tuple[int, ...]] = {
    "english": (),
    "multilingual": (),
    "turbo": (S3GEN_SILENCE_TOKEN,) * 3,
}
"""Speech tokens S3Gen gets after T3's own at the end of every chunk: Turbo's reference appends
three silence tokens (its T3 stops without the standard model's trailing quiet)."""
OPTIONAL_FILES = frozenset({"conds.pt"})
"""Files a local checkpoint may omit: without ``conds.pt`` every request must name a voice."""

MODEL_DESCRIPTIONS: dict[ModelKind, str] = {
    "english": "Chatterbox English (chatterbox-tts 0.1.2)",
    "multilingual": "Chatterbox Multilingual, 23 languages (chatterbox-tts 0.1.7)",
    "turbo": "Chatterbox Turbo, English, GPT-2 medium T3 (chatterbox-tts 0.1.7)",
}


def check_model_kind(model: object, *, argument: str = "model") -> ModelKind:
    """``model`` if it names a model kind, else :class:`InvalidParameterError` listing them."""
    if model not in MODEL_KINDS:
        raise InvalidParameterError(
            f"{argument} must be one of {', '.join(MODEL_KINDS)} (English: chatterbox-tts "
            f"0.1.2's model; multilingual: 0.1.7's 23-language model; turbo: 0.1.7's Turbo), got {model!r}"
        )
    return model  # type: ignore[return-value]


def detect_model(directory: str | os.PathLike) -> ModelKind:
    """Which model the checkpoint directory holds, from its T3 file (T3's
    :func:`~chatterbox_t3.config.detect_model_kind`; nothing is read or loaded).

    Raises :class:`CheckpointError` when the directory holds neither T3 file (naming both) or
    both (it is then ambiguous which model to load: keep one per directory)."""
    from chatterbox_t3.errors import T3Error

    try:
        return detect_model_kind(Path(directory))
    except T3Error as error:
        raise from_component_error(error) or CheckpointError(str(error)) from None
