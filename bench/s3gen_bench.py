"""S3Gen throughput and accuracy benchmark (not a test).

Throughput: seconds of audio generated per wall-clock second, a per-utterance loop against one
padded batch of 1, 8, 32, 64 utterances of ~10 s each (all with one ~5 s voice prompt), per dtype.
Accuracy (``--accuracy``): relative error of bf16/fp16 flows, a bf16 vocoder and fewer Euler steps
against the float32 / 10-step run.

Needs only torch + chatterbox-s3gen. Without ``--checkpoint`` it writes a random checkpoint of
``--size`` to a temporary directory (the real layout for ``full``; speed does not depend on the
weights' values, accuracy numbers do: they are for random weights).

    python bench/s3gen_bench.py --size tiny --device cpu
    python bench/s3gen_bench.py --size full --device cuda --dtypes fp32 bf16 fp16 --modes eager graphs
    python bench/s3gen_bench.py --checkpoint /path/to/chatterbox --device cuda --accuracy
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import tempfile
import time
from pathlib import Path

import torch

from chatterbox_s3gen import S3Gen, S3GenReference, write_random_s3gen_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKENS_PER_SECOND = 25


def _voice(model: S3Gen, seconds: float) -> S3GenReference:
    sample_rate = 24_000
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    wav = 0.3 * torch.sin(2 * math.pi * 180 * t) * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))
    wav = wav + 0.1 * torch.sin(2 * math.pi * 1100 * t)
    wav = wav + 0.01 * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return model.embed_ref(wav.float(), sample_rate)


def _utterances(count: int, seconds: float, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    mean = int(seconds * TOKENS_PER_SECOND)
    lengths = torch.randint(int(mean * 0.8), int(mean * 1.2) + 1, (count,), generator=generator)
    return [torch.randint(0, 6561, (int(n),), generator=generator).tolist() for n in lengths]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(
    model: S3Gen,
    utterances: list[list[int]],
    voice: S3GenReference,
    batch_size: int | None,
    device: str,
    n_timesteps: int,
) -> tuple[float, float]:
    """(audio seconds, wall seconds) of synthesizing ``utterances`` in batches of ``batch_size``."""
    seeds = list(range(len(utterances)))
    _sync(device)
    start = time.perf_counter()
    wavs = model.synthesize(
        utterances,
        [voice] * len(utterances),
        seeds=seeds,
        batch_size=batch_size,
        n_timesteps=n_timesteps,
    )
    _sync(device)
    wall = time.perf_counter() - start
    return sum(w.numel() for w in wavs) / model.sample_rate, wall


def _loop(
    model: S3Gen, utterances: list[list[int]], voice: S3GenReference, device: str, n_timesteps: int
) -> tuple[float, float]:
    audio = wall = 0.0
    for i, ids in enumerate(utterances):
        _sync(device)
        start = time.perf_counter()
        (wav,) = model.synthesize([ids], [voice], seeds=[i], n_timesteps=n_timesteps)
        _sync(device)
        wall += time.perf_counter() - start
        audio += wav.numel() / model.sample_rate
    return audio, wall


def _load(checkpoint: Path, device: str, dtype: torch.dtype, graphs: bool, **kwargs) -> S3Gen:
    """``S3Gen.from_checkpoint``; ``cuda_graphs`` only where this version of the package has it
    (the bench also times the previous release's source for before/after numbers)."""
    if "cuda_graphs" in inspect.signature(S3Gen.from_checkpoint).parameters:
        kwargs["cuda_graphs"] = graphs
    elif graphs:
        raise SystemExit("this chatterbox_s3gen has no cuda_graphs option")
    return S3Gen.from_checkpoint(checkpoint, device=device, dtype=dtype, **kwargs)


def _phases(
    model: S3Gen, utterances: list[list[int]], voice: S3GenReference, device: str, steps: int
) -> tuple[float, float]:
    """Wall seconds of the flow (tokens -> mels) and of the vocoder for one batch."""
    _sync(device)
    start = time.perf_counter()
    mels = model.synthesize_mels(utterances, [voice] * len(utterances), n_timesteps=steps)
    _sync(device)
    middle = time.perf_counter()
    model.vocode(mels, seeds=list(range(len(mels))))
    _sync(device)
    return middle - start, time.perf_counter() - middle


def _throughput(args: argparse.Namespace, checkpoint: Path) -> None:
    rows = []
    modes = ["graphs" if m == "graphs" else "eager" for m in args.modes]
    configs = [(d, v, m) for d in args.dtypes for v in args.vocoder_dtypes for m in modes]
    for flow_dtype, vocoder_dtype, mode in configs:
        dtype_name = flow_dtype if vocoder_dtype == "fp32" else f"{flow_dtype}+voc {vocoder_dtype}"
        model = _load(
            checkpoint,
            args.device,
            DTYPES[flow_dtype],
            mode == "graphs",
            vocoder_dtype=DTYPES[vocoder_dtype],
        )
        if args.compile:
            # Fuses the estimator's elementwise work (norms, masks, activations) with Inductor;
            # dynamic shapes so every batch/frame bucket reuses one compilation.
            estimator = model.flow.decoder.estimator
            estimator.forward = torch.compile(estimator.forward, dynamic=True)  # type: ignore[method-assign]
            mode = f"{mode}+compile"
        compile_start = time.perf_counter()
        voice = _voice(model, args.prompt_seconds)
        # Warm-up (allocator, kernels, lazy init) on a short batch.
        model.synthesize(
            _utterances(2, 2.0, seed=99),
            [voice] * 2,
            seeds=[0, 1],
            n_timesteps=args.n_timesteps,
        )
        logging.info(
            "%s %s: load + first batch %.1f s",
            dtype_name,
            mode,
            time.perf_counter() - compile_start,
        )
        loop_rate = None
        if args.loop_items:
            loop_items = _utterances(args.loop_items, args.seconds, seed=1)
            _loop(model, loop_items[:1], voice, args.device, args.n_timesteps)
            audio, wall = _loop(model, loop_items, voice, args.device, args.n_timesteps)
            loop_rate = audio / wall
            rows.append((dtype_name, mode, "loop", len(loop_items), audio, wall, loop_rate, ""))
        for batch in args.batch_sizes:
            utterances = _utterances(batch, args.seconds, seed=2)
            # First pass untimed: graph capture for this shape, cuDNN/cuBLAS kernel choice.
            _timed(model, utterances, voice, batch, args.device, args.n_timesteps)
            best = None
            for _ in range(args.repeats):
                audio, wall = _timed(model, utterances, voice, batch, args.device, args.n_timesteps)
                best = wall if best is None else min(best, wall)
            assert best is not None
            flow, vocoder = _phases(model, utterances, voice, args.device, args.n_timesteps)
            rows.append(
                (
                    dtype_name,
                    mode,
                    f"batch {batch}",
                    batch,
                    audio,
                    best,
                    audio / best,
                    f"{flow:.2f} / {vocoder:.2f}",
                )
            )
            logging.info(
                "%s %s batch %d: %.1f s audio in %.3f s (flow %.3f s, vocoder %.3f s)",
                dtype_name,
                mode,
                batch,
                audio,
                best,
                flow,
                vocoder,
            )
        if args.profile and args.device.startswith("cuda"):
            _profile(model, voice, args, f"{dtype_name} {mode}")
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    device_name = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\nS3Gen throughput: size={args.size}, device={device_name}, ~{args.seconds:g} s utterances, "
        f"{args.prompt_seconds:g} s prompt, {args.n_timesteps} Euler steps, torch {torch.__version__}, "
        f"best of {args.repeats}\n"
    )
    print(
        "| dtype | mode | run | utterances | audio (s) | wall (s) | audio s / s | flow / vocoder (s) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|")
    for dtype_name, mode, run, n, audio, wall, rate, split in rows:
        print(
            f"| {dtype_name} | {mode} | {run} | {n} | {audio:.1f} | {wall:.3f} | {rate:.1f} | {split} |"
        )


def _profile(model: S3Gen, voice: S3GenReference, args: argparse.Namespace, label: str) -> None:
    """Top CUDA kernels of one synthesize call (batch of the largest size)."""
    from torch.profiler import ProfilerActivity, profile

    batch = max(args.batch_sizes)
    utterances = _utterances(batch, args.seconds, seed=2)
    refs = [voice] * batch
    model.synthesize(utterances, refs, seeds=list(range(batch)), n_timesteps=args.n_timesteps)
    _sync(args.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model.synthesize(utterances, refs, seeds=list(range(batch)), n_timesteps=args.n_timesteps)
        _sync(args.device)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    print(f"\nprofile {label}, batch {batch}: {total / 1e3:.1f} ms of kernels")
    print("| kernel | calls | ms | share |")
    print("|---|---:|---:|---:|")
    for e in sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:25]:
        if e.self_device_time_total <= 0:
            continue
        print(
            f"| {e.key[:90]} | {e.count} | {e.self_device_time_total / 1e3:.1f} | "
            f"{e.self_device_time_total / total:.1%} |"
        )


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _accuracy(args: argparse.Namespace, checkpoint: Path) -> None:
    utterances = _utterances(args.accuracy_items, args.accuracy_seconds, seed=3)
    seeds = list(range(len(utterances)))

    def run(dtype: torch.dtype, vocoder_dtype: torch.dtype, steps: int, graphs: bool = False):
        model = _load(checkpoint, args.device, dtype, graphs, vocoder_dtype=vocoder_dtype)
        voice = _voice(model, args.prompt_seconds)
        refs = [voice] * len(utterances)
        mels = model.synthesize_mels(utterances, refs, n_timesteps=steps)
        wavs = model.vocode(mels, seeds=seeds)
        return [m.float().cpu() for m in mels], wavs

    base_mels, base_wavs = run(torch.float32, torch.float32, 10)
    variants = [
        ("flow bf16", torch.bfloat16, torch.float32, 10, False),
        ("flow fp16", torch.float16, torch.float32, 10, False),
        ("vocoder bf16", torch.float32, torch.bfloat16, 10, False),
        ("vocoder fp16", torch.float32, torch.float16, 10, False),
        ("flow + vocoder bf16", torch.bfloat16, torch.bfloat16, 10, False),
        ("flow + vocoder fp16", torch.float16, torch.float16, 10, False),
        ("fp32, 6 Euler steps", torch.float32, torch.float32, 6, False),
        ("fp32, 4 Euler steps", torch.float32, torch.float32, 4, False),
    ]
    if args.device.startswith("cuda") and "graphs" in args.modes:
        variants += [
            ("fp32, CUDA graphs", torch.float32, torch.float32, 10, True),
            ("flow fp16, CUDA graphs", torch.float16, torch.float32, 10, True),
        ]
    print(
        f"\nS3Gen accuracy vs float32 / 10 steps: size={args.size}, device={args.device}, "
        f"{len(utterances)} utterances of ~{args.accuracy_seconds:g} s; max|diff| / max|fp32| (worst item)\n"
    )
    print("| variant | mel rel. error | wav rel. error |")
    print("|---|---:|---:|")
    for name, dtype, vocoder_dtype, steps, graphs in variants:
        mels, wavs = run(dtype, vocoder_dtype, steps, graphs)
        mel_error = max(_relative(m, b) for m, b in zip(mels, base_mels))
        wav_error = max(_relative(w, b) for w, b in zip(wavs, base_wavs))
        print(f"| {name} | {mel_error:.2e} | {wav_error:.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint dir; default: write a random one of --size"
    )
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="mean utterance length (+-20%%)"
    )
    parser.add_argument("--prompt-seconds", type=float, default=5.0)
    parser.add_argument(
        "--loop-items", type=int, default=8, help="utterances timed one at a time (0: skip)"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("eager", "graphs"),
        default=["eager"],
        help="graphs: replay the Euler loop from CUDA graphs (S3Gen.from_checkpoint(cuda_graphs=True))",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per batch (best kept)")
    parser.add_argument(
        "--vocoder-dtypes",
        nargs="+",
        choices=sorted(DTYPES),
        default=["fp32"],
        help="HiFT precision",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also torch.compile the CFM estimator (experiment)"
    )
    parser.add_argument("--profile", action="store_true", help="print the top CUDA kernels")
    parser.add_argument("--n-timesteps", type=int, default=10)
    parser.add_argument(
        "--accuracy", action="store_true", help="also print the dtype/steps error table"
    )
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--accuracy-items", type=int, default=2)
    parser.add_argument("--accuracy-seconds", type=float, default=4.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="s3gen-bench-") as scratch:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = write_random_s3gen_checkpoint(scratch, size=args.size, seed=0).parent
        else:
            args.size = f"checkpoint {checkpoint}"
        if not args.accuracy_only:
            _throughput(args, checkpoint)
        if args.accuracy or args.accuracy_only:
            _accuracy(args, checkpoint)


if __name__ == "__main__":
    main()
