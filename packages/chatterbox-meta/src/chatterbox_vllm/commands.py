"""What the commands (``speak``, ``bench``, ``serve``) share: reading text, the engine config
from flags, the checks made before loading, loading, and writing results."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from chatterbox_vllm.config import EngineConfig, engine_flags, engine_overrides_from_namespace
from chatterbox_vllm.errors import ChatterboxError, InvalidParameterError, naming_the_flag
from chatterbox_vllm.models import ModelKind, detect_model

logger = logging.getLogger(__name__)


def read_text(args: argparse.Namespace) -> str:
    if args.file is not None and args.text not in (None, "-"):
        raise ChatterboxError("give the text either as an argument or with --file, not both")
    if args.file is not None:
        return read_text_file(args.file, "--file")
    if args.text not in (None, "-"):
        return str(args.text)
    if sys.stdin is None or sys.stdin.isatty():
        raise ChatterboxError("no text: pass TEXT, --file FILE, or pipe text on standard input")
    return read_stdin_text()


def read_stdin_text() -> str:
    """Standard input as UTF-8 text, whatever the locale makes of it (a C locale's stdin turns
    bad bytes into lone surrogates, a UTF-8 one raises Python's bare codec error)."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # replaced by a text stream (a notebook, a test)
        return str(sys.stdin.read())
    data = raw.read()
    try:
        return str(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ChatterboxError(
            f"standard input is not UTF-8 text ({error}); convert it first (e.g. iconv -t UTF-8) "
            "or pass the text as an argument"
        ) from None


def read_text_file(path: Path, flag: str) -> str:
    if path.is_dir():
        raise ChatterboxError(f"{flag} {path} is a directory; give a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChatterboxError(f"{flag} {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise ChatterboxError(f"{flag} {path} is not UTF-8 text ({error})") from None
    except OSError as error:
        raise ChatterboxError(f"{flag} {path}: cannot read it ({error.strerror})") from None


def engine_config(args: argparse.Namespace, *, streams: bool = False) -> EngineConfig:
    """The engine the command loads: its flags, plus ``--max-new-tokens`` sizing the engine.
    ``streams``: the command streams (``serve``), so S3Gen's streaming graphs are captured at
    start-up; ``speak`` and ``bench`` only generate and skip them."""
    overrides = engine_overrides_from_namespace(args)
    if getattr(args, "max_new_tokens", None) is not None:
        overrides["max_new_tokens"] = args.max_new_tokens
    overrides["stream_graphs"] = streams
    try:
        return EngineConfig().with_overrides(overrides)
    except InvalidParameterError as error:
        flags = {**engine_flags(), "max_new_tokens": "--max-new-tokens"}
        raise naming_the_flag(error, flags) from None


def replicated(args: argparse.Namespace) -> bool:
    if args.replicas is not None and args.replicas < 1:
        raise ChatterboxError(f"--replicas must be >= 1, got {args.replicas}")
    return args.replicas is not None or args.ray_address is not None


def command_model(args: argparse.Namespace) -> ModelKind:
    """The model the command will load, known before it loads: the one ``--model-dir`` holds
    (``--model``, if also given, must agree), else ``--model`` (default ``english``)."""
    chosen: ModelKind | None = getattr(args, "model", None)
    if getattr(args, "model_dir", None) is None:
        return chosen or "english"
    from chatterbox_vllm.hub import check_checkpoint_dir

    found = detect_model(check_checkpoint_dir(args.model_dir))
    if chosen is not None and chosen != found:
        raise ChatterboxError(
            f"--model {chosen} but --model-dir {args.model_dir} holds the {found} model; drop "
            "--model (the directory's model is detected) or give a directory of the "
            f"{chosen} model"
        )
    return found


def check_controls(controls: dict[str, Any]) -> None:
    """Checks each control's value (range, type; a ``language`` among the 23) before anything
    else; whether the model speaks the language is checked by :func:`preflight`, once the
    checkpoint is known."""
    from chatterbox_vllm.controls import CONTROLS, GenerationParams

    given = {name: value for name, value in controls.items() if value is not None}
    try:
        GenerationParams(**given)
    except InvalidParameterError as error:
        raise naming_the_flag(error, {name: CONTROLS[name].flag for name in given}) from None


def check_controls_for_model(args: argparse.Namespace, model: ModelKind) -> str | None:
    """The command's controls against ``model`` (a ``language`` it does not speak, or whose
    text front end is not installed); returns the language."""
    from chatterbox_vllm.controls import GenerationParams, controls_from_namespace
    from chatterbox_vllm.preflight import check_language

    params = GenerationParams.from_controls(controls_from_namespace(args), model=model)
    policy = getattr(args, "missing_language_dependency", None) or "error"
    return check_language(params.language, model, missing_dependency=policy)


def hub_revision(args: argparse.Namespace) -> str | None:
    """``--revision``, or the pinned default of the model being downloaded."""
    from chatterbox_vllm.hub import DEFAULT_REVISIONS

    if args.revision is not None:
        return str(args.revision)
    return DEFAULT_REVISIONS[getattr(args, "model", None) or "english"]


def checkpoint_source(args: argparse.Namespace) -> Any:
    from chatterbox_vllm.distributed.replica import CheckpointSource

    if args.model_dir is not None:
        return CheckpointSource(model_dir=str(args.model_dir))
    return CheckpointSource(
        repo_id=args.repo_id,
        revision=hub_revision(args),
        cache_dir=None if args.cache_dir is None else str(args.cache_dir),
        model=getattr(args, "model", None) or "english",
    )


def preflight(args: argparse.Namespace, text: str, config: EngineConfig) -> EngineConfig:
    """Every check that needs no model; returns the config with the device made explicit."""
    from chatterbox_vllm import preflight as checks
    from chatterbox_vllm.text import validate_text

    validate_text(text)
    checks.check_vocoder(config.vocoder)
    if args.out is not None:
        checks.check_output(args.out, voice=args.voice)
    if not replicated(args):
        config = config.with_overrides({"device": checks.check_device(config.device)})
    model = command_model(args)
    if args.voice is not None:
        checks.check_voice(args.voice, model)  # by the model's rule (Turbo: more than 5 s)
    language = check_controls_for_model(args, model)
    if args.model_dir is not None:
        path = checks.check_checkpoint(args.model_dir, needs_default_voice=args.voice is None)
        checks.check_text(
            text,
            path,
            config.chunk_chars,
            language=language,
            model=model,
            # The engine's positions (Turbo's sequences have room for its longer voice prompt).
            model_len=(config.for_turbo() if model == "turbo" else config).model_len,
            missing_dependency=config.missing_language_dependency,
            voice=args.voice,
        )
    if config.max_num_seqs is None and not replicated(args):
        config = size_for_text(config, text, model)
    return config


def size_for_text(config: EngineConfig, text: str, model: ModelKind = "english") -> EngineConfig:
    """A one-text command never decodes more sequences than the text has chunks: the engine's
    batch (and with it the KV cache the memory split reserves) is sized for the text."""
    from chatterbox_vllm.text import split_text

    chunks = len(split_text(text, config.chunk_chars, fold=model == "english"))
    card = config.resolve_here().max_num_seqs or 1
    sized = min(card, max(1, chunks))
    logger.info(
        "max_num_seqs=%d: the text has %d chunk(s), this machine takes up to %d",
        sized,
        chunks,
        card,
    )
    return config.with_overrides({"max_num_seqs": sized})


def load(args: argparse.Namespace, config: EngineConfig) -> Any:
    from chatterbox_vllm.tts import ChatterboxTTS

    watermark = False if args.no_watermark else None
    if replicated(args):
        from chatterbox_vllm.distributed.replicated import ReplicatedChatterboxTTS

        return ReplicatedChatterboxTTS(
            checkpoint_source(args),
            replicas=args.replicas,
            address=args.ray_address,
            watermark=watermark,
            config=config,
        )
    if args.model_dir is not None:
        return ChatterboxTTS.from_local(args.model_dir, watermark=watermark, config=config)
    return ChatterboxTTS.from_pretrained(
        args.repo_id,
        hub_revision(args),
        cache_dir=args.cache_dir,
        watermark=watermark,
        config=config,
        model=getattr(args, "model", None) or "english",
    )


def write_result(result: Any, out: str) -> str:
    """Writes the audio to ``out`` (``-``: WAV on stdout). If writing fails after generation,
    the audio is kept in a temporary WAV file and the error says where it is."""
    if out == "-":
        write_stdout_wav(result.waveform, result.sample_rate)
        return "standard output"
    try:
        return str(result.save(out))
    except (OSError, RuntimeError, ChatterboxError) as error:
        fd, rescue = tempfile.mkstemp(prefix="chatterbox-", suffix=".wav")
        os.close(fd)
        result.save(rescue)
        raise ChatterboxError(
            f"could not write {out} ({error}); the audio is kept in {rescue}"
        ) from None


def keep_partial_result(partial: Any, missing: tuple[str, ...], out: str) -> str | None:
    """Saves the chunks an interrupted ``speak`` finished (a
    :class:`~chatterbox_vllm.results.GenerationResult`, or None: none finished; ``missing``:
    the texts of the others) beside ``out`` as ``NAME.partial.SUFFIX`` (standard output, or a
    path that cannot take it: a temporary WAV file), says where and what is missing on stderr,
    and returns the path."""
    if partial is None:
        print("interrupted before any chunk was finished; nothing was written", file=sys.stderr)
        return None
    target = (
        None if out == "-" else Path(out).with_name(f"{Path(out).stem}.partial{Path(out).suffix}")
    )
    try:
        if target is None:
            raise ChatterboxError("standard output")
        where = str(partial.save(target))
    except (OSError, RuntimeError, ChatterboxError):
        fd, where = tempfile.mkstemp(prefix="chatterbox-partial-", suffix=".wav")
        os.close(fd)
        partial.save(where)
    total = len(partial.chunks) + len(missing)
    print(
        f"interrupted: {len(partial.chunks)} of {total} chunk(s) were finished "
        f"({partial.duration_s:.2f} s of audio) and are kept in {where}"
        + (
            f", in text order without the {len(missing)} unfinished one(s) (the first of "
            f"those: {missing[0][:60]!r})"
            if missing
            else ""
        ),
        file=sys.stderr,
    )
    return where


def write_stdout_wav(waveform: Any, sample_rate: int) -> None:
    """One complete WAV file on standard output, also when it is a pipe (``| aplay``).

    libsndfile writes a WAV header, then seeks back to fill in the length; on a pipe it cannot
    seek, so the output was a header saying 0 samples, the audio, and a second header. The whole
    file is encoded in memory first (its header holds the real length) and written at once."""
    import io

    from chatterbox_vllm.audio import encode_audio, output_format

    buffer = io.BytesIO()
    encode_audio(buffer, waveform, sample_rate, output_format("-"))
    try:
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # The reader exited early (e.g. the player was closed): nothing more can be delivered.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise ChatterboxError(
            "standard output was closed before all the audio was written (the program reading "
            "it exited)"
        ) from None
