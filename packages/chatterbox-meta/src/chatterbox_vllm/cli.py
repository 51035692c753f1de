"""``chatterbox-vllm``: speak text, make random checkpoints, benchmark.

Control and engine flags are generated from :data:`chatterbox_vllm.controls.CONTROLS` and
:class:`chatterbox_vllm.config.EngineConfig`, so ``--help`` lists every one with its range and
default. Everything that can be checked without the model (text, voice, checkpoint, output path,
device) is checked before it loads. Results go to stdout (or the audio itself with ``--out -``);
logs and progress go to stderr.

Exit codes: 0 success, 1 bad input or runtime failure (the message says what to fix), 2 bad
command line (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatterbox_vllm.commands import (
    check_controls,
    engine_config,
    keep_partial_result,
    load,
    preflight,
    read_text,
    write_result,
)
from chatterbox_vllm.config import (
    add_engine_arguments,
)
from chatterbox_vllm.controls import (
    add_control_arguments,
    controls_from_namespace,
)
from chatterbox_vllm.errors import ChatterboxError, GenerationInterrupted
from chatterbox_vllm.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, MULTILINGUAL_REVISION
from chatterbox_vllm.models import MODEL_KINDS

logger = logging.getLogger(__name__)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model-dir",
        type=Path,
        help="local checkpoint directory (English: ve.safetensors, t3_cfg.safetensors, "
        "s3gen.safetensors, tokenizer.json; multilingual: ve.pt, t3_mtl23ls_v2.safetensors, "
        "s3gen.pt, grapheme_mtl_merged_expanded_v1.json, Cangjie5_TC.json; turbo: "
        "ve.safetensors, t3_turbo_v1.safetensors, s3gen_meanflow.safetensors, vocab.json, "
        "merges.txt, tokenizer_config.json; optional conds.pt; "
        "which model it holds is detected); without it the Hub checkpoint is used",
    )
    group.add_argument(
        "--model",
        choices=MODEL_KINDS,
        help="which model to download from the Hub: english (chatterbox-tts 0.1.2, default), "
        "multilingual (0.1.7, 23 languages: see --language) or turbo (0.1.7's Chatterbox Turbo, "
        "from ResembleAI/chatterbox-turbo); with --model-dir it must match the directory's model",
    )
    group.add_argument("--repo-id", default=DEFAULT_REPO_ID, help="Hub repository (%(default)s)")
    group.add_argument(
        "--revision",
        default=None,
        help=f"Hub revision (default: the pinned commit {DEFAULT_REVISION} for the English "
        f"model, {MULTILINGUAL_REVISION} for the multilingual and turbo ones)",
    )
    group.add_argument("--cache-dir", type=Path, help="Hugging Face cache directory")
    group.add_argument(
        "--no-watermark", action="store_true", help="do not apply the Perth watermark"
    )
    add_engine_arguments(parser)
    scaling = parser.add_argument_group("several GPUs or machines (Ray; see docs/multi-node.md)")
    scaling.add_argument(
        "--replicas",
        type=int,
        help="run N replicas (one T3 engine + one S3Gen on one GPU each) on a Ray cluster; "
        "with --ray-address and no --replicas: one per GPU of the cluster",
    )
    scaling.add_argument(
        "--ray-address",
        help="Ray cluster to use (HEAD_IP:6379, or auto for the cluster this machine is part "
        "of); without it, --replicas starts a private Ray instance on this machine",
    )


VOICE_HELP = (
    "reference recording to clone (wav/flac/ogg/mp3, >= 1 s; 5-10 s of clean speech is best) or "
    "a voice saved with Voice.save (.pt); default: the checkpoint's built-in voice"
)


VERBOSE_HELP = "-v: info logs (vLLM's too), -vv: debug"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatterbox-vllm",
        description="Chatterbox text-to-speech on vLLM: any length of text, voice cloning from a "
        "short recording, 24 kHz output.",
        epilog="Examples:\n"
        "  chatterbox-vllm speak 'Hello there.' --voice me.wav --out hello.wav\n"
        "  cat chapter.txt | chatterbox-vllm speak --out chapter.flac\n"
        "  chatterbox-vllm speak 'Hi.' --out - | aplay\n"
        "  chatterbox-vllm make-random-checkpoint ./tiny --size tiny\n"
        "  chatterbox-vllm bench --model-dir ./tiny --text-file chapter.txt --voice me.wav",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    speak = commands.add_parser(
        "speak",
        help="turn text into speech",
        description="Speak TEXT (or --file, or standard input) into an audio file.",
    )
    speak.add_argument("text", nargs="?", help="text to speak; '-' or omitted: read stdin")
    speak.add_argument("--file", type=Path, help="read the text from this UTF-8 file")
    speak.add_argument("--voice", type=Path, help=VOICE_HELP)
    speak.add_argument(
        "--out",
        default="speech.wav",
        help="output file; the suffix picks the format (.wav .flac .ogg .opus .mp3 .aiff ...); "
        "'-' writes WAV to standard output (default %(default)s)",
    )
    speak.add_argument("--quiet", action="store_true", help="no progress, only errors")
    add_control_arguments(speak)
    _add_model_arguments(speak)

    make = commands.add_parser(
        "make-random-checkpoint",
        help="write a random-weight checkpoint in the real layout",
        description="Write ve.safetensors, t3_cfg.safetensors, s3gen.safetensors, tokenizer.json "
        "and conds.pt with random weights (for tests and benchmarks; it speaks noise); with "
        "--model multilingual the multilingual release's ve.pt, t3_mtl23ls_v2.safetensors, "
        "s3gen.pt, grapheme_mtl_merged_expanded_v1.json, Cangjie5_TC.json and conds.pt; with "
        "--model turbo the Turbo release's ve.safetensors, t3_turbo_v1.safetensors, "
        "s3gen_meanflow.safetensors, its GPT-2 tokenizer files and conds.pt.",
    )
    # A str, not a Path: Path("") is ".", which would fill the current directory.
    make.add_argument("directory", help="directory to write the checkpoint into")
    make.add_argument(
        "--size",
        choices=["tiny", "full"],
        default="tiny",
        help="tiny: small dimensions; full: the real shapes (~3.4 GB)",
    )
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--model",
        choices=MODEL_KINDS,
        default="english",
        help="english (chatterbox-tts 0.1.2's files), multilingual or turbo (0.1.7's); default "
        "%(default)s",
    )
    make.add_argument(
        "--force",
        action="store_true",
        help="write into a directory that holds the other model's checkpoint (its T3, S3Gen, "
        "voice-encoder and tokenizer files are replaced); refused without it",
    )

    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible speech server (/v1/audio/speech)",
        description="Serve POST /v1/audio/speech (OpenAI's schema plus every generation control), "
        "voices (/v1/voices), /health, /v1/models and /metrics. Binds 127.0.0.1 unless --host says "
        "otherwise.",
    )
    from chatterbox_vllm.server.settings import add_server_arguments

    add_server_arguments(serve)
    serve.add_argument(
        "--max-new-tokens",
        type=int,
        help="speech-token budget per text chunk the engine is sized for (default 1000); "
        "requests may ask for less",
    )
    _add_model_arguments(serve)

    bench = commands.add_parser(
        "bench",
        help="time a long text end to end",
        description="Generate speech for a text file and report chunks, audio duration, wall time "
        "(model load / T3 / S3Gen / overlap), real-time factor, T3 tokens/s and peak GPU memory. "
        "Random weights never emit the stop token, so each chunk is capped at "
        "--max-tokens-per-expected-second (default 25, the real token rate).",
    )
    bench.add_argument("--text-file", type=Path, required=True)
    bench.add_argument("--voice", type=Path, help=VOICE_HELP)
    bench.add_argument(
        "--out", help="also save the audio in this file (not -: the report is on standard output)"
    )
    bench.add_argument("--quiet", action="store_true", help="no progress, only errors")
    bench.add_argument(
        "--json", type=Path, help="also write the measurements to this JSON file (bench/product.py)"
    )
    add_control_arguments(bench)
    _add_model_arguments(bench)
    for command in (speak, make, serve, bench):
        # After the command too (`chatterbox-vllm serve ... -v`): scripts append their flags.
        command.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def speak(args: argparse.Namespace) -> int:
    text = read_text(args)
    controls = controls_from_namespace(args)
    check_controls(controls)  # bad controls fail before anything loads
    config = preflight(args, text, engine_config(args))
    with load(args, config) as tts:
        try:
            result = tts.generate(text, voice=args.voice, progress=not args.quiet, **controls)
        except GenerationInterrupted as interrupted:  # Ctrl-C: keep what was finished
            if interrupted.partial:  # the local engine's (a Ray cluster keeps none)
                keep_partial_result(interrupted.partial[0], interrupted.missing[0], args.out)
            raise
        where = write_result(result, args.out)
    if args.out != "-":
        print(
            f"wrote {where} ({result.duration_s:.2f} s, {result.sample_rate} Hz, "
            f"{len(result.chunks)} chunk(s){', watermarked' if result.watermarked else ''})"
        )
    return 0


def make_checkpoint(args: argparse.Namespace) -> int:
    from chatterbox_vllm.checkpoint import make_random_checkpoint
    from chatterbox_vllm.paths import ensure_directory

    if not args.directory.strip():
        raise ChatterboxError(
            f"DIRECTORY is {args.directory!r}; give the directory to write the checkpoint into "
            "(e.g. ./tiny)"
        )
    directory = Path(args.directory)
    if directory.exists() and not directory.is_dir():
        raise ChatterboxError(f"{directory} exists and is a file; give a new or existing directory")
    # Created here so that one that cannot be is named with the reason, not '[Errno 2] ...'.
    ensure_directory(directory, "DIRECTORY")
    start = time.perf_counter()
    path = make_random_checkpoint(
        directory, size=args.size, seed=args.seed, model=args.model, force=args.force
    )
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(
        f"wrote a {args.size} random{'' if args.model == 'english' else ' ' + args.model} "
        f"checkpoint to {path} ({total / 1e6:.1f} MB, "
        f"{time.perf_counter() - start:.1f} s)"
    )
    return 0


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is at that moment: a caller that replaces
    ``sys.stderr`` (a notebook, a test harness) keeps getting the logs, and a stream it has
    closed since is never written to ('--- Logging error ---')."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def configure_logging(verbose: int, quiet: bool) -> None:
    """Logs to stderr only. vLLM is told not to install its own stdout handler (it must be set
    before vLLM is imported; the engine-core process inherits it), so its records reach our root
    handler and ``-v`` applies to them too."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[_StderrHandler()],
        force=True,
    )
    # Load stages and chunk counts are progress: shown unless --quiet.
    logging.getLogger("chatterbox_vllm").setLevel(
        logging.ERROR if quiet else min(level, logging.INFO)
    )
    if verbose >= 1:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", logging.getLevelName(level))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, getattr(args, "quiet", False))
    from chatterbox_vllm.benchmark import bench
    from chatterbox_vllm.server.run import serve

    handlers = {
        "speak": speak,
        "make-random-checkpoint": make_checkpoint,
        "bench": bench,
        "serve": serve,
    }
    try:
        return handlers[args.command](args)
    except (ChatterboxError, ValueError, OSError, ImportError) as error:
        print(f"chatterbox-vllm {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
