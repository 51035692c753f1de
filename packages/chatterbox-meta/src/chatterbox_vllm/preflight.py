"""Checks that need no model, made before one loads (loading takes a minute; a typo should cost a
second): the machine can run the engine, the checkpoint is complete, the text is speakable by the
checkpoint's tokenizer, the voice is usable, and the output can be written."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from chatterbox_vllm.audio import AudioInput, output_format
from chatterbox_vllm.errors import (
    ChatterboxError,
    InvalidParameterError,
    OutputPathError,
    from_component_error,
)
from chatterbox_vllm.hub import inspect_checkpoint_dir
from chatterbox_vllm.languages import check_language_for_model
from chatterbox_vllm.models import ModelKind
from chatterbox_vllm.paths import check_not_directory, check_writable
from chatterbox_vllm.text import split_text, validate_text
from chatterbox_vllm.voices import Voice, load_voice_audio_for

if TYPE_CHECKING:
    from chatterbox_t3.text import EnglishTokenizer

logger = logging.getLogger(__name__)

CPU_TRY_OUT = (
    "to try the product on a CPU anyway (slow: for trying out, not for serving), install the "
    "CPU platform the tests use with `uv sync --all-packages --group test` in a clone of the "
    "repository and pass --device cpu (device='cpu' in Python)"
)


def cpu_platform_installed() -> bool:
    """Whether a vLLM platform plugin that runs the engine on the CPU is installed (the test
    support package registers one)."""
    return any(ep.name == "cpu_test_support" for ep in entry_points(group="vllm.platform_plugins"))


def check_device(device: str | None) -> str:
    """The device to run on, or a :class:`ChatterboxError` saying what the machine lacks.

    vLLM 0.9.2 runs T3 on NVIDIA GPUs (CUDA); without one it fails deep inside with
    ``libcuda.so.1: cannot open shared object file``, so this is checked first. ``device`` is
    an :class:`~chatterbox_vllm.config.EngineConfig`'s, whose spelling that class validates."""
    cuda = torch.cuda.is_available()
    if device is None:
        device = "cuda" if cuda else "cpu"
        if not cuda and not cpu_platform_installed():
            raise ChatterboxError(
                "no NVIDIA GPU with a working CUDA driver was found: vLLM 0.9.2 needs one to run "
                f"T3; {CPU_TRY_OUT}"
            )
    if device.startswith("cuda") and not cuda:
        raise ChatterboxError(
            f"device {device!r}: no NVIDIA GPU with a working CUDA driver on this machine "
            f"(torch.cuda.is_available() is False); {CPU_TRY_OUT}"
        )
    if device == "cpu" and not cuda and not cpu_platform_installed():
        raise ChatterboxError(
            f"device 'cpu': vLLM 0.9.2 has no CPU engine for T3 here; {CPU_TRY_OUT}"
        )
    return device


def check_vocoder(name: str, what: str = "--vocoder") -> str:
    """``name`` (``what``: the flag or argument that gave it) is a registered vocoder backend
    (checked before a model loads)."""
    from chatterbox_s3gen import available_vocoders

    known = available_vocoders()
    if name not in known:
        raise InvalidParameterError(
            f"{what} {name!r} is not available; use one of {', '.join(known)}"
        )
    return name


def check_checkpoint(directory: str | os.PathLike, *, needs_default_voice: bool) -> Path:
    """The checkpoint directory, complete for the model it holds (and with ``conds.pt`` when the
    built-in voice is going to be used)."""
    path, model = inspect_checkpoint_dir(directory)
    if needs_default_voice and not (path / "conds.pt").is_file():
        raise ChatterboxError(
            f"no voice given and {path} has no conds.pt (the built-in voice); pass --voice "
            "<recording | saved voice .pt>"
        )
    if model == "english":
        checkpoint_tokenizer(path)
    check_t3_files(path, model)
    return path


def check_t3_files(path: Path, model: ModelKind) -> None:
    """T3's weights against its configuration (the file's header only) and the voice encoder's
    small file read whole, so that a checkpoint of other dimensions or a corrupt ``ve.pt`` is
    named before a minute of loading."""
    from chatterbox_t3.checkpoint import check_t3_checkpoint, load_voice_encoder_state_dict
    from chatterbox_t3.config import CHECKPOINT_FILES
    from chatterbox_t3.errors import T3Error

    voice_encoder = CHECKPOINT_FILES[model].voice_encoder
    try:
        check_t3_checkpoint(path)
        load_voice_encoder_state_dict(path / voice_encoder)
    except T3Error as error:
        raise from_component_error(error) or ChatterboxError(str(error)) from None


def check_language(
    language: str | None, model: ModelKind, *, missing_dependency: str = "error"
) -> str | None:
    """A ``language`` ``model`` speaks and, on the multilingual model, whose text front end is
    installed (T3's ``check_language``: e.g. ``ja`` needs pykakasi); raises the product error
    (:class:`~chatterbox_vllm.errors.InvalidParameterError` / ``InvalidTextError``) before any
    model loads."""
    check_language_for_model(language, model)
    if language is None or model != "multilingual":
        return language
    try:
        from chatterbox_t3.multilingual_text import check_language as t3_check_language
    except ImportError:  # T3 without the multilingual front end: the engine will say so
        logger.debug("chatterbox_t3.multilingual_text is not available; skipping its check")
        return language
    try:
        return str(t3_check_language(language, missing_dependency=missing_dependency))  # type: ignore[arg-type]
    except ValueError as error:
        raise from_component_error(error) or ChatterboxError(str(error)) from None


def checkpoint_tokenizer(checkpoint: Path) -> EnglishTokenizer:
    """The checkpoint's ``tokenizer.json``, read and checked against T3's text vocabulary (a
    file that is not JSON, ``{}``, or another model's tokenizer is named here, with what is
    wrong, instead of failing inside the engine)."""
    from chatterbox_t3 import T3Config
    from chatterbox_t3.errors import T3Error
    from chatterbox_t3.text import EnglishTokenizer

    try:
        vocab = T3Config.from_checkpoint_dir(checkpoint).text_tokens_dict_size
        return EnglishTokenizer(checkpoint / "tokenizer.json", text_vocab_size=vocab)
    except T3Error as error:
        raise from_component_error(error) or ChatterboxError(str(error)) from None


def check_text(
    text: str,
    checkpoint: Path,
    chunk_chars: int,
    *,
    language: str | None = None,
    model: ModelKind = "english",
    model_len: int | None = None,
    missing_dependency: str = "error",
    voice: AudioInput | None = None,
) -> str:
    """Validates ``text`` and runs the checkpoint's tokenizer (the multilingual one with
    ``language``'s front end) over every chunk it will be split into, so unsupported characters
    are named before the model loads; with ``model_len`` (the ``max_model_len`` the engine will
    load with, :attr:`~chatterbox_vllm.config.EngineConfig.model_len`) each chunk is also held
    to T3's text capacity (:meth:`chatterbox_t3.T3Config.check_text_fits`, the check the engine
    makes), e.g. a word too long for it, which no split can shorten. Turbo's prompt holds its
    voice's prompt tokens too: ``voice`` (None: the checkpoint's ``conds.pt``) says how many
    (see :func:`turbo_prompt_tokens`)."""
    from chatterbox_t3 import T3Config
    from chatterbox_t3.errors import T3Error
    from chatterbox_t3.text import TextEncoder

    validate_text(text)
    check_language(language, model, missing_dependency=missing_dependency)
    if model == "turbo":
        # Turbo's byte-level GPT-2 BPE spells every character (tags included); only a chunk too
        # long for its positions can fail.
        _check_turbo_text(text, checkpoint, chunk_chars, model_len, voice)
        return text
    try:
        config = T3Config.from_checkpoint_dir(checkpoint)
        tokenizer: TextEncoder
        if model == "english":
            tokenizer = checkpoint_tokenizer(checkpoint)
        else:
            from chatterbox_t3.multilingual_text import MultilingualTokenizer
            from chatterbox_t3.tokenizer_builder import MULTILINGUAL_TOKENIZER_FILE

            tokenizer = MultilingualTokenizer(
                checkpoint / MULTILINGUAL_TOKENIZER_FILE,
                missing_dependency=missing_dependency,  # type: ignore[arg-type]
            )
        for chunk in split_text(text, chunk_chars, fold=model == "english"):
            ids = tokenizer.encode_text(chunk, language if model != "english" else None)
            if model_len is not None:
                config.check_text_fits(len(ids) + 2, model_len)  # + the start and stop tokens
    except T3Error as error:
        raise from_component_error(error) or ChatterboxError(str(error)) from None
    return text


def _check_turbo_text(
    text: str,
    checkpoint: Path,
    chunk_chars: int,
    model_len: int | None,
    voice: AudioInput | None,
) -> None:
    """Turbo's tokenizer over every chunk, each held to Turbo's text positions and, with
    ``model_len``, to the whole prompt with ``voice``'s prompt tokens (the engine's check)."""
    from chatterbox_t3.config import TurboT3Config, load_t3_config
    from chatterbox_t3.errors import T3Error
    from chatterbox_t3.turbo_text import TurboTokenizer

    try:
        config = load_t3_config(checkpoint)
        assert isinstance(config, TurboT3Config)
        tokenizer = TurboTokenizer(checkpoint, text_vocab_size=config.text_tokens_dict_size)
        prompt_tokens = None if model_len is None else turbo_prompt_tokens(voice, checkpoint)
        for chunk in split_text(text, chunk_chars, fold=False):
            ids = tokenizer.encode_text(chunk)
            config.check_text_fits(len(ids), model_len, prompt_tokens)
    except T3Error as error:
        raise from_component_error(error) or ChatterboxError(str(error)) from None


def turbo_prompt_tokens(voice: AudioInput | None, checkpoint: Path) -> int:
    """How many voice prompt tokens a Turbo prompt with ``voice`` holds, known without the
    model: a saved voice's (None: the checkpoint's ``conds.pt``) exactly; for a recording, the
    fewest any accepted one gives (one just over Turbo's 5 s), so that no text a voice could
    speak is refused here; the engine checks the prepared voice's exact prompt."""
    from chatterbox_vllm.interfaces import SPEECH_TOKEN_RATE_HZ
    from chatterbox_vllm.voices import VOICE_RECIPES

    if voice is None:
        voice = checkpoint / "conds.pt"
    if isinstance(voice, str | os.PathLike) and Path(voice).suffix.lower() == ".pt":
        return int(Voice.load(voice).t3.prompt_tokens.numel())
    return int(VOICE_RECIPES["turbo"].longer_than_seconds * SPEECH_TOKEN_RATE_HZ)


def check_voice(voice: AudioInput, model: ModelKind = "english") -> None:
    """Decodes and validates a voice file for ``model`` (Turbo needs more than 5 s), or loads a
    saved ``.pt`` voice, without loading the model."""
    if isinstance(voice, str | os.PathLike) and Path(voice).suffix.lower() == ".pt":
        Voice.load(voice)
        return
    load_voice_audio_for(voice, model)


def check_output(path: str | os.PathLike, voice: AudioInput | None = None) -> None:
    """Checks that audio of ``path``'s format can be written there (``"-"``: standard output)
    without changing what is there (see :func:`chatterbox_vllm.paths.check_writable`), and that
    it is not the ``voice`` recording (the speech would replace it)."""
    if os.fspath(path) == "-":
        if sys.stdout is not None and sys.stdout.isatty():
            # Binary audio on a terminal is noise that can leave it in a garbled state.
            raise OutputPathError(
                "--out - writes WAV audio to standard output, which is a terminal here: pipe it "
                "to a player (| aplay) or redirect it to a file (> speech.wav), or give --out "
                "a file name"
            )
        return
    if (
        isinstance(voice, str | os.PathLike)
        and os.path.exists(path)
        and os.path.exists(voice)
        and os.path.samefile(path, voice)
    ):
        raise OutputPathError(
            f"--out {os.fspath(path)} is the --voice recording: the speech would replace it; "
            "choose another --out"
        )
    check_not_directory(path, "--out", "speech.wav")
    output_format(path)
    check_writable(path, "--out", "speech.wav")
