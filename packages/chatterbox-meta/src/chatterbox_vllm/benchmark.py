"""``chatterbox-vllm bench``: one long text end to end, timed stage by stage (or, with
``--replicas``, the scaling benchmark of :mod:`chatterbox_vllm.distributed.bench`)."""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import torch

from chatterbox_vllm.commands import (
    check_controls,
    checkpoint_source,
    engine_config,
    load,
    preflight,
    read_text_file,
    replicated,
    write_result,
)
from chatterbox_vllm.controls import controls_from_namespace
from chatterbox_vllm.errors import ChatterboxError, OutputPathError
from chatterbox_vllm.hub import describe_model
from chatterbox_vllm.paths import check_not_directory, check_writable, open_for_writing

JSON_EXAMPLE = "bench.json"
"""A file name to suggest when ``--json`` is a directory."""
DEFAULT_BENCH_TOKENS_PER_SECOND = 25.0
"""Random weights never emit the stop token: each chunk is capped at the real token rate."""


class _GpuMemorySampler:
    """Peak device memory in use (all processes: vLLM's engine core runs in its own), sampled."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.available = torch.cuda.is_available()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._interval = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
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


def bench(args: argparse.Namespace) -> int:
    text = read_text_file(args.text_file, "--text-file")
    controls = controls_from_namespace(args)
    controls.setdefault("max_tokens_per_expected_second", DEFAULT_BENCH_TOKENS_PER_SECOND)
    cap = controls["max_tokens_per_expected_second"]
    check_controls(controls)  # bad controls fail before anything loads
    if args.out == "-":  # the WAV and the report would share it: neither would be usable
        raise OutputPathError(
            "--out -: bench prints its report on standard output, so the audio cannot go there "
            "too; give --out a file name (e.g. bench.wav)"
        )
    if getattr(args, "json", None) is not None:  # before the benchmark, not after it
        check_not_directory(args.json, "--json", JSON_EXAMPLE)
        check_writable(args.json, "--json", JSON_EXAMPLE)
    config = preflight(args, text, engine_config(args))
    if replicated(args):
        return _bench_replicas(args, text, controls, config)
    with _GpuMemorySampler() as memory:
        load_start = time.perf_counter()
        tts = load(args, config)
        load_seconds = time.perf_counter() - load_start
        with tts:
            start = time.perf_counter()
            result = tts.generate(text, voice=args.voice, progress=not args.quiet, **controls)
            wall = time.perf_counter() - start
            stats = tts.last_stats
    if args.out is not None:
        write_result(result, args.out)
    timings = stats.timings
    audio = result.duration_s
    tokens = result.num_speech_tokens
    capped = sum(1 for reason in result.finish_reasons if reason == "length")
    model = tts.model
    rows = [
        ("model", describe_model(model)),
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
        *(
            (
                f"{'    ' if '.' in stage else '  '}{stage.split('.')[-1].replace('_', ' ')}",
                f"{seconds:.2f} s",
            )
            for stage, seconds in getattr(tts, "load_timings", {}).items()
        ),
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
    if getattr(args, "json", None) is not None:
        measured = {
            "model": model,
            "audio_s": audio,
            "wall_s": wall,
            "x_realtime": audio / wall if wall > 0 else None,
            "load_s": load_seconds,
            "load_stages_s": dict(getattr(tts, "load_timings", {})),
            "chunks": len(result.chunks),
            "speech_tokens": tokens,
            "t3_s": timings.t3,
            "t3_tokens_per_s": tokens / timings.t3 if timings.t3 > 0 else None,
            "s3gen_busy_s": timings.s3gen,
            "s3gen_batches": timings.s3gen_batches,
            "peak_gpu_memory_gib": memory.peak_bytes / 2**30 if memory.available else None,
        }
        with open_for_writing(args.json, "--json", JSON_EXAMPLE) as file:
            file.write(json.dumps(measured, indent=1).encode())
    return 0


def _bench_replicas(
    args: argparse.Namespace, text: str, controls: dict[str, Any], config: Any
) -> int:
    """``bench --replicas N``: throughput on 1..N replicas, then a run with one replica killed."""
    import ray

    from chatterbox_vllm.distributed.bench import bench_scaling

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
        checkpoint_source(args),
        text,
        max_replicas=max_replicas,
        voice=args.voice,
        seed=controls.pop("seed", 0),
        max_tokens_per_expected_second=controls.pop("max_tokens_per_expected_second"),
        address=args.ray_address,
        controls=controls,
        config=config,
    )
    print(report.format())
    return 0
