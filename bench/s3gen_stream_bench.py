"""Streaming S3Gen benchmark: N concurrent streams advanced together, every ready window of every
stream in one padded batch per round (what a server's S3Gen batcher does), all tokens available
up front (T3 infinitely fast), so the numbers are S3Gen's share of first-audio latency and its
streaming throughput. Compared with one non-streamed batch of the same utterances.

    python bench/s3gen_stream_bench.py --size tiny --device cpu
    python bench/s3gen_stream_bench.py --size full --device cuda --dtypes fp32 bf16 --streams 1 8 32 64

Needs only torch and chatterbox-s3gen; writes a random checkpoint of ``--size`` unless given one."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from chatterbox_s3gen import S3Gen, write_random_s3gen_checkpoint
from chatterbox_s3gen.streaming import (
    S3GenStream,
    StreamingConfig,
    flow_windows,
    prepare_stream_graphs,
    vocode_windows,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_streams(
    s3gen: S3Gen,
    voice,
    token_lists,
    n_timesteps: int,
    config: StreamingConfig,
    device: str,
    bucket: bool | None = None,
    max_rows: int | None = None,
) -> dict[str, float]:
    """``max_rows``: a round holds at most this many windows (a server's S3Gen batch); the
    ready windows beyond wait for the next round."""
    streams = [
        S3GenStream(s3gen, voice, seed=i, n_timesteps=n_timesteps, config=config)
        for i in range(len(token_lists))
    ]
    for stream, ids in zip(streams, token_lists):
        stream.add_tokens(ids)
        stream.end_of_tokens()
    _sync(device)
    start = time.perf_counter()
    first_audio = math.nan
    rounds = 0
    samples = 0
    phases = {"prepare": 0.0, "flow": 0.0, "vocode": 0.0, "accept": 0.0}
    by_id = {s.stream_id: s for s in streams}
    while not all(s.done for s in streams):
        tick = time.perf_counter()
        windows = []
        for stream in streams:
            if max_rows is not None and len(windows) == max_rows:
                break
            window = stream.pending or stream.next_window()
            if window is not None:
                windows.append(window)
            elif stream.pending is None and not stream.done:
                samples += sum(c.numel() for c in stream.flush())
        phases["prepare"] += time.perf_counter() - tick
        if windows:
            rounds += 1
            tick = time.perf_counter()
            mels = flow_windows(s3gen, windows, bucket=bucket)
            _sync(device)
            phases["flow"] += time.perf_counter() - tick
            tick = time.perf_counter()
            results = vocode_windows(s3gen, windows, mels, bucket=bucket)
            phases["vocode"] += time.perf_counter() - tick
            tick = time.perf_counter()
            for result in results:
                samples += sum(c.numel() for c in by_id[result.stream_id].accept(result))
            phases["accept"] += time.perf_counter() - tick
            if math.isnan(first_audio):
                first_audio = time.perf_counter() - start
    wall = time.perf_counter() - start
    audio = samples / s3gen.sample_rate
    return {
        "first_audio_s": first_audio,
        "rounds": rounds,
        "wall_s": wall,
        "audio_s": audio,
        **{f"{k}_s": v for k, v in phases.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    parser.add_argument("--prompt-seconds", type=float, default=5.0)
    parser.add_argument("--n-timesteps", type=int, default=10)
    parser.add_argument(
        "--first-chunk-tokens", type=int, default=StreamingConfig().first_chunk_tokens
    )
    parser.add_argument("--chunk-tokens", type=int, default=StreamingConfig().chunk_tokens)
    parser.add_argument(
        "--no-bucket", action="store_true", help="exact shapes (no row/length buckets) on CUDA"
    )
    parser.add_argument(
        "--prepare-rows",
        type=int,
        help="prepare like a streaming server for rounds of this many windows (the product: 32): "
        "CFM, flow encoder and HiFT captured at every window shape, larger rounds split",
    )
    args = parser.parse_args()
    bucket = False if args.no_bucket else None

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = Path(tempfile.mkdtemp(prefix="s3gen-stream-bench-"))
        write_random_s3gen_checkpoint(checkpoint, size=args.size, seed=0)
    config = StreamingConfig(
        first_chunk_tokens=args.first_chunk_tokens, chunk_tokens=args.chunk_tokens
    )
    t = torch.arange(int(args.prompt_seconds * 24_000)) / 24_000
    prompt = 0.3 * torch.sin(2 * math.pi * 180 * t) + 0.01 * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(0)
    )
    tokens_per_utterance = int(args.seconds * 25)
    print(
        f"# {args.checkpoint or args.size} checkpoint, {args.device}, {args.seconds:.0f} s utterances after a "
        f"{args.prompt_seconds:.0f} s prompt, {args.n_timesteps} steps, windows "
        f"{config.first_chunk_tokens}->{config.chunk_tokens} tokens (+{config.lookahead_tokens})"
    )
    print(
        "| dtype | streams | first audio (s) | rounds | stream wall (s) | audio s / s "
        "| batch wall (s) | stream / batch | prepare / flow / vocode / accept (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.dtypes:
        s3gen = S3Gen.from_checkpoint(checkpoint, device=args.device, dtype=DTYPES[name])
        voice = s3gen.embed_ref(prompt, 24_000)
        if args.prepare_rows:
            report = prepare_stream_graphs(s3gen, config, args.prepare_rows, args.n_timesteps)
            print(
                f"# {name}: prepared for rounds of {args.prepare_rows}: {report.captures} CFM "
                f"graphs, {report.warmed} encoder/HiFT shapes in {report.seconds:.1f} s",
                flush=True,
            )
        for n in args.streams:
            token_lists = [
                torch.randint(
                    0, 6561, (tokens_per_utterance,), generator=torch.Generator().manual_seed(i)
                ).tolist()
                for i in range(n)
            ]
            # Warm-up with the same streams: each new (rows, length) shape costs kernel choice
            # and CUDA-graph capture once; a long-running server pays that once per bucket.
            rows = args.prepare_rows
            run_streams(
                s3gen, voice, token_lists, args.n_timesteps, config, args.device, bucket, rows
            )
            stats = run_streams(
                s3gen, voice, token_lists, args.n_timesteps, config, args.device, bucket, rows
            )
            s3gen.synthesize(
                token_lists, [voice] * n, n_timesteps=args.n_timesteps, seeds=list(range(n))
            )
            _sync(args.device)
            start = time.perf_counter()
            s3gen.synthesize(
                token_lists, [voice] * n, n_timesteps=args.n_timesteps, seeds=list(range(n))
            )
            _sync(args.device)
            batch = time.perf_counter() - start
            print(
                f"| {name} | {n} | {stats['first_audio_s']:.3f} | {stats['rounds']} "
                f"| {stats['wall_s']:.2f} | {stats['audio_s'] / stats['wall_s']:.1f} "
                f"| {batch:.2f} | {stats['wall_s'] / batch:.2f}x "
                f"| {stats['prepare_s']:.2f} / {stats['flow_s']:.2f} / {stats['vocode_s']:.2f} "
                f"/ {stats['accept_s']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
