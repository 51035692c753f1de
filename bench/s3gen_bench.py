"""S3Gen throughput and accuracy benchmark (not a test).

Throughput: seconds of audio generated per wall-clock second, a per-utterance loop against one
padded batch of 1, 8, 32, 64 utterances of ~10 s each (all with one ~5 s voice prompt), per dtype.
Accuracy (``--accuracy``): relative error of bf16/fp16 flows, a bf16 vocoder and fewer Euler steps
against the float32 / 10-step run.

Needs only torch + chatterbox-s3gen. Without ``--checkpoint`` it writes a random checkpoint of
``--size`` to a temporary directory (the real layout for ``full``; speed does not depend on the
weights' values, accuracy numbers do: they are for random weights).

    python bench/s3gen_bench.py --size tiny --device cpu
    python bench/s3gen_bench.py --size full --device cuda --dtypes fp32 bf16 fp16
    python bench/s3gen_bench.py --checkpoint /path/to/chatterbox --device cuda --accuracy
"""

from __future__ import annotations

import argparse
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


def _throughput(args: argparse.Namespace, checkpoint: Path) -> None:
    rows = []
    for dtype_name in args.dtypes:
        model = S3Gen.from_checkpoint(checkpoint, device=args.device, dtype=DTYPES[dtype_name])
        voice = _voice(model, args.prompt_seconds)
        # Warm-up (allocator, kernels, lazy init) on a short batch.
        model.synthesize(
            _utterances(2, 2.0, seed=99), [voice] * 2, seeds=[0, 1], n_timesteps=args.n_timesteps
        )
        loop_items = _utterances(args.loop_items, args.seconds, seed=1)
        audio, wall = _loop(model, loop_items, voice, args.device, args.n_timesteps)
        loop_rate = audio / wall
        rows.append((dtype_name, "loop", len(loop_items), audio, wall, loop_rate, 1.0))
        for batch in args.batch_sizes:
            utterances = _utterances(batch, args.seconds, seed=2)
            audio, wall = _timed(model, utterances, voice, batch, args.device, args.n_timesteps)
            rows.append(
                (
                    dtype_name,
                    f"batch {batch}",
                    batch,
                    audio,
                    wall,
                    audio / wall,
                    audio / wall / loop_rate,
                )
            )
            logging.info("%s batch %d: %.1f s audio in %.2f s", dtype_name, batch, audio, wall)
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
        f"{args.prompt_seconds:g} s prompt, {args.n_timesteps} Euler steps, torch {torch.__version__}\n"
    )
    print("| dtype | mode | utterances | audio (s) | wall (s) | audio s / s | vs loop |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype_name, mode, n, audio, wall, rate, speedup in rows:
        print(
            f"| {dtype_name} | {mode} | {n} | {audio:.1f} | {wall:.2f} | {rate:.2f} | {speedup:.2f}x |"
        )


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _accuracy(args: argparse.Namespace, checkpoint: Path) -> None:
    utterances = _utterances(args.accuracy_items, args.accuracy_seconds, seed=3)
    seeds = list(range(len(utterances)))

    def run(dtype: torch.dtype, vocoder_dtype: torch.dtype, steps: int):
        model = S3Gen.from_checkpoint(
            checkpoint, device=args.device, dtype=dtype, vocoder_dtype=vocoder_dtype
        )
        voice = _voice(model, args.prompt_seconds)
        refs = [voice] * len(utterances)
        mels = model.synthesize_mels(utterances, refs, n_timesteps=steps)
        wavs = model.vocode(mels, seeds=seeds)
        return [m.float().cpu() for m in mels], wavs

    base_mels, base_wavs = run(torch.float32, torch.float32, 10)
    variants = [
        ("flow bf16", torch.bfloat16, torch.float32, 10),
        ("flow fp16", torch.float16, torch.float32, 10),
        ("vocoder bf16", torch.float32, torch.bfloat16, 10),
        ("flow + vocoder bf16", torch.bfloat16, torch.bfloat16, 10),
        ("fp32, 6 Euler steps", torch.float32, torch.float32, 6),
        ("fp32, 4 Euler steps", torch.float32, torch.float32, 4),
    ]
    print(
        f"\nS3Gen accuracy vs float32 / 10 steps: size={args.size}, device={args.device}, "
        f"{len(utterances)} utterances of ~{args.accuracy_seconds:g} s; max|diff| / max|fp32| (worst item)\n"
    )
    print("| variant | mel rel. error | wav rel. error |")
    print("|---|---:|---:|")
    for name, dtype, vocoder_dtype, steps in variants:
        mels, wavs = run(dtype, vocoder_dtype, steps)
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
    parser.add_argument("--loop-items", type=int, default=8, help="utterances timed one at a time")
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
