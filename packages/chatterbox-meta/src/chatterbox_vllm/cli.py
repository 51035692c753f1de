"""``chatterbox-vllm``: speak text, make random checkpoints, benchmark.

Exit codes: 0 success, 1 bad input or runtime failure (the message says what to fix), 2 bad
command line (argparse).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatterbox_vllm.errors import ChatterboxError
from chatterbox_vllm.hub import DEFAULT_REPO_ID, DEFAULT_REVISION

logger = logging.getLogger(__name__)

DEFAULT_BENCH_TOKENS_PER_SECOND = 25.0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model-dir",
        type=Path,
        help="local checkpoint directory (ve.safetensors, t3_cfg.safetensors, s3gen.safetensors, "
        "tokenizer.json, optional conds.pt); without it the Hub checkpoint is used",
    )
    group.add_argument("--repo-id", default=DEFAULT_REPO_ID, help="Hub repository (%(default)s)")
    group.add_argument(
        "--revision",
        default=DEFAULT_REVISION,
        help="Hub revision (default: the pinned commit %(default)s)",
    )
    group.add_argument("--cache-dir", type=Path, help="Hugging Face cache directory")

    engine = parser.add_argument_group("engine")
    engine.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    engine.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="T3 dtype in vLLM (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    engine.add_argument(
        "--s3gen-dtype", default="float32", choices=["float32", "float16", "bfloat16"]
    )
    engine.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.4,
        help="share of GPU memory for T3 weights + KV cache (%(default)s)",
    )
    engine.add_argument(
        "--max-num-seqs", type=int, default=32, help="most chunks decoded at once (%(default)s)"
    )
    engine.add_argument(
        "--max-model-len",
        type=int,
        help="T3 positions per chunk (default: derived from --max-new-tokens)",
    )
    engine.add_argument("--vocoder", default="hift-torch", help="S3Gen vocoder backend")
    engine.add_argument(
        "--cfm-steps",
        type=int,
        default=10,
        help="flow-matching steps (%(default)s, the reference's)",
    )
    engine.add_argument("--s3gen-batch-size", type=int, default=8)
    engine.add_argument(
        "--max-chunk-chars",
        type=int,
        help="long-text chunk size (default: derived from --max-new-tokens)",
    )
    engine.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs in vLLM")
    engine.add_argument(
        "--num-gpu-blocks",
        type=int,
        dest="num_gpu_blocks_override",
        help="fixed KV-cache size in blocks (vLLM num_gpu_blocks_override)",
    )
    engine.add_argument(
        "--no-watermark", action="store_true", help="do not apply the Perth watermark"
    )

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


def _add_control_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation controls (defaults: chatterbox-tts 0.1.2)")
    group.add_argument("--exaggeration", type=float, default=0.5, help="0-2, 0.5 neutral")
    group.add_argument("--cfg-weight", type=float, default=0.5, help="0-3, 0 disables CFG")
    group.add_argument("--temperature", type=float, default=0.8)
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--min-p", type=float, default=0.05)
    group.add_argument("--repetition-penalty", type=float, default=1.2)
    group.add_argument("--seed", type=int, help="make the output reproducible")
    group.add_argument(
        "--max-new-tokens",
        type=int,
        default=1000,
        help="speech tokens per chunk, 25 per second (%(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatterbox-vllm",
        description="Chatterbox text-to-speech on vLLM: any length of text, voice cloning from a "
        "short recording, 24 kHz output.",
        epilog="Examples:\n"
        "  chatterbox-vllm speak 'Hello there.' --voice me.wav --out hello.wav\n"
        "  cat chapter.txt | chatterbox-vllm speak --out chapter.flac\n"
        "  chatterbox-vllm make-random-checkpoint ./tiny --size tiny\n"
        "  chatterbox-vllm bench --model-dir ./tiny --text-file chapter.txt --voice me.wav",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: info logs, -vv: debug logs"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    speak = commands.add_parser(
        "speak",
        help="turn text into speech",
        description="Speak TEXT (or --file, or standard input) into an audio file.",
    )
    speak.add_argument("text", nargs="?", help="text to speak; '-' or omitted: read stdin")
    speak.add_argument("--file", type=Path, help="read the text from this UTF-8 file")
    speak.add_argument(
        "--voice",
        type=Path,
        help="reference recording to clone (wav/flac/ogg/mp3, >= 1 s; 5-10 s "
        "of clean speech is best); default: the checkpoint's built-in voice",
    )
    speak.add_argument(
        "--out",
        type=Path,
        default=Path("speech.wav"),
        help="output file; the suffix picks the format: .wav .flac .ogg .mp3 "
        "(default %(default)s)",
    )
    speak.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_control_arguments(speak)
    _add_model_arguments(speak)

    make = commands.add_parser(
        "make-random-checkpoint",
        help="write a random-weight checkpoint in the real layout",
        description="Write ve.safetensors, t3_cfg.safetensors, s3gen.safetensors, tokenizer.json "
        "and conds.pt with random weights (for tests and benchmarks; it speaks noise).",
    )
    make.add_argument("directory", type=Path)
    make.add_argument(
        "--size",
        choices=["tiny", "full"],
        default="tiny",
        help="tiny: small dimensions; full: the real shapes (~3.4 GB)",
    )
    make.add_argument("--seed", type=int, default=0)

    bench = commands.add_parser(
        "bench",
        help="time a long text end to end",
        description="Generate speech for a text file and report chunks, audio duration, wall time "
        "(model load / T3 / S3Gen / overlap), real-time factor, T3 tokens/s and peak GPU memory.",
    )
    bench.add_argument("--text-file", type=Path, required=True)
    bench.add_argument("--voice", type=Path, help="reference recording (default: built-in voice)")
    bench.add_argument(
        "--max-tokens-per-second-of-speech",
        type=float,
        default=DEFAULT_BENCH_TOKENS_PER_SECOND,
        help="cap each chunk at this many speech tokens per second of speech its text should "
        "take (characters / 15). Random weights never emit the stop token, so without a cap "
        "every chunk runs to --max-new-tokens (default %(default)s, the real token rate)",
    )
    bench.add_argument("--out", type=Path, help="also save the audio here")
    _add_control_arguments(bench)
    _add_model_arguments(bench)
    return parser


def _read_text(args: argparse.Namespace) -> str:
    if args.file is not None and args.text not in (None, "-"):
        raise ChatterboxError("give the text either as an argument or with --file, not both")
    if args.file is not None:
        try:
            return args.file.read_text(encoding="utf-8")
        except FileNotFoundError as error:
            raise ChatterboxError(f"--file {args.file} does not exist") from error
        except UnicodeDecodeError as error:
            raise ChatterboxError(f"--file {args.file} is not UTF-8 text ({error})") from error
    if args.text not in (None, "-"):
        return str(args.text)
    if sys.stdin is None or sys.stdin.isatty():
        raise ChatterboxError("no text: pass TEXT, --file FILE, or pipe text on standard input")
    return sys.stdin.read()


def _engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "dtype": args.dtype,
        "s3gen_dtype": args.s3gen_dtype,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_num_seqs": args.max_num_seqs,
        "max_model_len": args.max_model_len,
        "vocoder": args.vocoder,
        "cfm_steps": args.cfm_steps,
        "s3gen_batch_size": args.s3gen_batch_size,
        "max_chunk_chars": args.max_chunk_chars,
        "enforce_eager": args.enforce_eager,
        "num_gpu_blocks_override": args.num_gpu_blocks_override,
        "max_new_tokens": args.max_new_tokens,
    }
    if args.device:
        overrides["device"] = args.device
    return overrides


def _replicated(args: argparse.Namespace) -> bool:
    if args.replicas is not None and args.replicas < 1:
        raise ChatterboxError(f"--replicas must be >= 1, got {args.replicas}")
    return args.replicas is not None or args.ray_address is not None


def _checkpoint_source(args: argparse.Namespace) -> Any:
    from chatterbox_vllm.replicas import CheckpointSource

    if args.model_dir is not None:
        return CheckpointSource(model_dir=str(args.model_dir))
    return CheckpointSource(
        repo_id=args.repo_id,
        revision=args.revision,
        cache_dir=None if args.cache_dir is None else str(args.cache_dir),
    )


def _load(args: argparse.Namespace) -> Any:
    from chatterbox_vllm.tts import ChatterboxTTS

    watermark = False if args.no_watermark else None
    if _replicated(args):
        from chatterbox_vllm.replicas import ReplicatedChatterboxTTS

        return ReplicatedChatterboxTTS(
            _checkpoint_source(args),
            replicas=args.replicas,
            address=args.ray_address,
            watermark=watermark,
            **_engine_overrides(args),
        )
    if args.model_dir is not None:
        return ChatterboxTTS.from_local(
            args.model_dir, watermark=watermark, **_engine_overrides(args)
        )
    return ChatterboxTTS.from_pretrained(
        args.repo_id,
        args.revision,
        cache_dir=args.cache_dir,
        watermark=watermark,
        **_engine_overrides(args),
    )


def _controls(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "exaggeration": args.exaggeration,
        "cfg_weight": args.cfg_weight,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
    }


def _check_output_suffix(path: Path) -> None:
    from chatterbox_vllm.audio import supported_audio_suffixes

    if path.suffix.lower() not in supported_audio_suffixes():
        raise ChatterboxError(
            f"--out {path}: unsupported format {path.suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(supported_audio_suffixes())}"
        )


def _speak(args: argparse.Namespace) -> int:
    from chatterbox_vllm.params import GenerationParams
    from chatterbox_vllm.text import validate_text

    text = validate_text(_read_text(args))
    GenerationParams(**_controls(args))  # fail on bad controls before loading anything
    _check_output_suffix(args.out)
    with _load(args) as tts:
        result = tts.generate(text, voice=args.voice, progress=not args.quiet, **_controls(args))
        path = result.save(args.out)
    print(
        f"wrote {path} ({result.duration_s:.2f} s, {result.sample_rate} Hz, "
        f"{len(result.chunks)} chunk(s){', watermarked' if result.watermarked else ''})"
    )
    return 0


def _make_checkpoint(args: argparse.Namespace) -> int:
    from chatterbox_vllm.checkpoint import make_random_checkpoint

    start = time.perf_counter()
    path = make_random_checkpoint(args.directory, size=args.size, seed=args.seed)
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(
        f"wrote a {args.size} random checkpoint to {path} ({total / 1e6:.1f} MB, "
        f"{time.perf_counter() - start:.1f} s)"
    )
    return 0


class _GpuMemorySampler:
    """Peak device memory in use (all processes: vLLM's engine core runs in its own), sampled."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import threading

        import torch

        self.available = torch.cuda.is_available()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._interval = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak_bytes = max(self.peak_bytes, total - free)
            self._stop.wait(self._interval)

    def __enter__(self) -> _GpuMemorySampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()


def _bench(args: argparse.Namespace) -> int:
    from chatterbox_vllm.params import GenerationParams
    from chatterbox_vllm.text import validate_text

    try:
        text = validate_text(args.text_file.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ChatterboxError(f"--text-file {args.text_file} does not exist") from error
    controls = _controls(args)
    cap = args.max_tokens_per_second_of_speech
    GenerationParams(**controls, max_tokens_per_expected_second=cap)
    if args.out is not None:
        _check_output_suffix(args.out)
    if _replicated(args):
        return _bench_replicas(args, text, controls, cap)
    with _GpuMemorySampler() as memory:
        load_start = time.perf_counter()
        tts = _load(args)
        load_seconds = time.perf_counter() - load_start
        with tts:
            start = time.perf_counter()
            result = tts.generate(
                text, voice=args.voice, max_tokens_per_expected_second=cap, **controls
            )
            wall = time.perf_counter() - start
            stats = tts.last_stats
    if args.out is not None:
        result.save(args.out)
    timings = stats.timings
    audio = result.duration_s
    tokens = sum(result.speech_tokens)
    capped = sum(1 for reason in result.finish_reasons if reason == "length")
    rows = [
        ("text", f"{len(text):,} characters, {len(text.split()):,} words"),
        ("chunks", f"{len(result.chunks)} ({capped} stopped by the token cap)"),
        (
            "token cap",
            f"{cap:g} tokens per expected second of speech (random weights never "
            "emit the stop token)"
            if cap
            else "none",
        ),
        ("audio duration", f"{audio:.2f} s"),
        ("model load", f"{load_seconds:.2f} s"),
        ("voice preparation", f"{stats.voice_seconds:.2f} s"),
        ("generate wall time", f"{wall:.2f} s"),
        ("  T3 (first request to last token)", f"{timings.t3:.2f} s"),
        ("  S3Gen (busy)", f"{timings.s3gen:.2f} s in {timings.s3gen_batches} batch(es)"),
        ("  S3Gen overlapping T3", f"{timings.overlap:.2f} s"),
        ("real-time factor (wall / audio)", f"{wall / audio:.3f}" if audio else "n/a"),
        (
            "T3 speech tokens",
            f"{tokens:,} ({tokens / timings.t3:.1f} tokens/s)" if timings.t3 > 0 else f"{tokens:,}",
        ),
        (
            "peak GPU memory (device, all processes)",
            f"{memory.peak_bytes / 2**30:.2f} GiB" if memory.available else "n/a (no CUDA device)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _bench_replicas(
    args: argparse.Namespace, text: str, controls: dict[str, Any], cap: float | None
) -> int:
    """``bench --replicas N``: throughput on 1..N replicas, then a run with one replica killed."""
    import ray

    from chatterbox_vllm.replicas import bench_scaling

    if args.out is not None:
        raise ChatterboxError(
            "--out is not supported with --replicas (the benchmark runs the text several "
            "times); use `speak --replicas` to save audio"
        )
    max_replicas = args.replicas
    if max_replicas is None:  # --ray-address alone: one replica per GPU of that cluster
        ray.init(address=args.ray_address)
        max_replicas = max(1, int(ray.cluster_resources().get("GPU", 0)))
    report = bench_scaling(
        _checkpoint_source(args),
        text,
        max_replicas=max_replicas,
        voice=args.voice,
        seed=0 if controls["seed"] is None else controls["seed"],
        max_tokens_per_expected_second=cap,
        address=args.ray_address,
        controls={name: value for name, value in controls.items() if name != "seed"},
        **_engine_overrides(args),
    )
    print(report.format())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.WARNING
        if args.verbose == 0
        else logging.INFO
        if args.verbose == 1
        else (logging.DEBUG)
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"speak": _speak, "make-random-checkpoint": _make_checkpoint, "bench": _bench}
    try:
        return handlers[args.command](args)
    except (ChatterboxError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"chatterbox-vllm {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
