"""What one streamed S3Gen round costs, by rows and window kind: where a server's round time goes.

For rounds of 1, 2, 4, ... windows, each a stream's first window (the first-audio path) or a
steady one (a full ``chunk_tokens`` window with its left context), it prints the wall time of
``synthesize_windows`` and of its parts (the flow encoder alone at the round's shape, the whole
flow, the vocoder), and the GPU kernel time of the round (``torch.profiler``): wall well above
kernel time means the round is bound by launching work, not by the GPU doing it.

The model is prepared as a streaming server prepares it (``prepare_stream_graphs`` for
``--max-rows``: the CFM loop, the flow encoder and HiFT captured at every window shape); each
table runs with the encoder and HiFT graphs (``kernel graphs``) and without them (eager, as
before they were captured), side by side.

``--contend`` runs the tables a second time while another process keeps the GPU busy with
decode-like matmul steps (``--contend-busy-ms`` of kernels, then ``--contend-idle-ms`` of host
time, as vLLM's engine process does beside the server's S3Gen): two CUDA contexts time-slice
the GPU, and the ratio of the two tables is what T3's engine process costs S3Gen's rounds.

    python bench/s3gen_round_costs.py --size full --device cuda --rows 1 2 4 8 16 32 --contend
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from chatterbox_s3gen import S3Gen, write_random_s3gen_checkpoint
from chatterbox_s3gen.streaming import (
    S3GenStream,
    StreamingConfig,
    StreamWindow,
    flow_windows,
    prepare_stream_graphs,
    synthesize_windows,
    vocode_windows,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _wall(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` (synchronised), after one untimed run."""
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _kernel_seconds(fn: Callable[[], object]) -> float:
    """GPU kernel time of one run of ``fn`` (sum over kernels, from the profiler); NaN on a
    CPU (a smoke run)."""
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_initialized():
        return math.nan
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    total_us = 0.0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            total_us += event.device_time
    return total_us / 1e6


def _windows_of_kind(
    s3gen: S3Gen, voice, rows: int, index: int, config: StreamingConfig, steps: int
) -> list[StreamWindow]:
    """``rows`` streams advanced (for real) to their window ``index``; returns those windows."""
    streams = [
        S3GenStream(s3gen, voice, seed=i, n_timesteps=steps, config=config) for i in range(rows)
    ]
    for i, stream in enumerate(streams):
        stream.add_tokens(
            torch.randint(0, 6561, (600,), generator=torch.Generator().manual_seed(i)).tolist()
        )
    for _ in range(index):
        windows = [s.next_window() for s in streams]
        for stream, result in zip(streams, synthesize_windows(s3gen, windows)):
            stream.accept(result)
    return [s.next_window() for s in streams]


def _encoder_only(s3gen: S3Gen, windows: Sequence[StreamWindow]) -> Callable[[], object]:
    """The flow encoder at the round's padded shape (what ``flow_windows`` runs first)."""
    from chatterbox_s3gen.streaming import TOKEN_BUCKET, _round_up, _row_bucket

    rows = _row_bucket(len(windows))
    width = _round_up(max(int(w.flow_tokens().numel()) for w in windows), TOKEN_BUCKET)
    tokens = torch.zeros(rows, width, dtype=torch.int64, device=s3gen.device)
    lengths = torch.full((rows,), width, dtype=torch.int64, device=s3gen.device)
    return functools.partial(s3gen.flow.encode, tokens, lengths)


def _table(s3gen: S3Gen, voice, args: argparse.Namespace, label: str) -> None:
    config = StreamingConfig()
    kinds = {"first": 0, "steady": args.steady_index}
    captured = (s3gen.flow.encoder_graphs, s3gen.anchored_hift_graphs)
    print(f"\n## {label}\n")
    print(
        "| window | rows | kernel graphs | flow tokens | round wall ms | ms per window "
        "| encoder ms | flow ms | vocode ms | kernel ms | wall / kernel |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    cases = [
        (kind, index, rows, graphs)
        for kind, index in kinds.items()
        for rows in args.rows
        for graphs in (False, True)
    ]
    for kind, index, rows, graphs in cases:
        s3gen.flow.encoder_graphs, s3gen.anchored_hift_graphs = captured if graphs else (None, None)
        windows = _windows_of_kind(s3gen, voice, rows, index, config, args.n_timesteps)
        tokens = max(int(w.flow_tokens().numel()) for w in windows)
        mels = flow_windows(s3gen, windows)
        whole = functools.partial(synthesize_windows, s3gen, windows)
        total = _wall(whole, args.repeats)
        flow = _wall(functools.partial(flow_windows, s3gen, windows), args.repeats)
        vocode = _wall(functools.partial(vocode_windows, s3gen, windows, mels), args.repeats)
        encoder = _wall(_encoder_only(s3gen, windows), args.repeats)
        kernel = _kernel_seconds(whole)
        print(
            f"| {kind} | {rows} | {'yes' if graphs else 'no'} | {tokens} | {total * 1e3:.1f} "
            f"| {total * 1e3 / rows:.2f} "
            f"| {encoder * 1e3:.1f} | {flow * 1e3:.1f} | {vocode * 1e3:.1f} "
            f"| {kernel * 1e3:.1f} | {total / max(kernel, 1e-9):.2f} |",
            flush=True,
        )
    s3gen.flow.encoder_graphs, s3gen.anchored_hift_graphs = captured


def _contender(busy_ms: float, idle_ms: float, ready, stop) -> None:
    """Decode-like GPU load from another process (another CUDA context): a CUDA graph of
    matmul steps over ~0.5 B fp16 weights at batch 64, replayed for ``busy_ms``, then
    ``idle_ms`` of host time, until ``stop`` is set."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    layers = [
        (
            torch.randn(1024, 4096, device=device, dtype=torch.float16) * 0.02,
            torch.randn(4096, 1024, device=device, dtype=torch.float16) * 0.02,
        )
        for _ in range(30)
    ]
    x = torch.randn(64, 1024, device=device, dtype=torch.float16)

    def step() -> None:
        h = x
        for up, down in layers:
            h = torch.nn.functional.silu(h @ up) @ down
        x.copy_(h * 0.001 + x)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    begin = time.perf_counter()
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    per_replay = (time.perf_counter() - begin) / 20
    replays = max(1, round(busy_ms / 1e3 / per_replay))
    ready.set()
    while not stop.is_set():
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        if idle_ms > 0:
            time.sleep(idle_ms / 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument(
        "--max-rows", type=int, default=32, help="rows a round holds (the server's default)"
    )
    parser.add_argument("--prompt-seconds", type=float, default=10.0)
    parser.add_argument("--n-timesteps", type=int, default=10)
    parser.add_argument("--steady-index", type=int, default=4, help="window index of 'steady'")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--contend", action="store_true")
    parser.add_argument("--contend-busy-ms", type=float, default=6.0)
    parser.add_argument("--contend-idle-ms", type=float, default=3.0)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no CUDA device (try --device cpu)")
    if args.contend and not args.device.startswith("cuda"):
        parser.error("--contend measures CUDA contexts sharing a GPU: it needs --device cuda")

    contender = None
    if args.contend:  # before this process initialises CUDA: a forked child could not
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        contender = context.Process(
            target=_contender, args=(args.contend_busy_ms, args.contend_idle_ms, ready, stop)
        )

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = Path(tempfile.mkdtemp(prefix="s3gen-round-costs-"))
        write_random_s3gen_checkpoint(checkpoint, size=args.size, seed=0)
    s3gen = S3Gen.from_checkpoint(checkpoint, device=args.device, dtype=DTYPES[args.dtype])
    t = torch.arange(int(args.prompt_seconds * 24_000)) / 24_000
    prompt = 0.3 * torch.sin(2 * math.pi * 180 * t) + 0.01 * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(0)
    )
    voice = s3gen.embed_ref(prompt, 24_000)
    begin = time.perf_counter()
    report = prepare_stream_graphs(s3gen, StreamingConfig(), args.max_rows, args.n_timesteps)
    print(
        f"# prepared like a server for {args.max_rows} rows: {report.captures} CFM graphs, "
        f"{report.warmed} encoder/HiFT shapes, {time.perf_counter() - begin:.1f} s"
    )
    print(
        f"# {args.checkpoint or args.size} checkpoint, "
        f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, "
        f"{args.dtype}, {args.n_timesteps} steps, {args.prompt_seconds:.0f} s prompt"
    )
    _table(s3gen, voice, args, "S3Gen alone")
    if contender is not None:
        contender.start()
        if not ready.wait(120):
            raise SystemExit("the contending process did not start in 120 s")
        try:
            _table(
                s3gen,
                voice,
                args,
                f"beside another process's decode-like load ({args.contend_busy_ms:g} ms "
                f"kernels, {args.contend_idle_ms:g} ms host gap)",
            )
        finally:
            stop.set()
            contender.join(30)


if __name__ == "__main__":
    main()
