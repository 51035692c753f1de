"""The product benchmark's report: the end-to-end ``bench`` and the server under load, merged.

``bash bench/device/session.sh product`` runs ``chatterbox-vllm bench --json E2E`` on
benchmark-text-1 at the defaults and ``bench/server_load.py --json LOAD`` at N = 1, 8, 32, 64, 128,
256 and a Poisson round (64 streams arriving at 4 per second: ``"serve_poisson"``, the same keys
plus ``"rate_per_s"``), then this script writes one JSON file (``bench/results/product-latest.json``'s shape) and prints a
markdown table::

    python bench/product.py --e2e e2e.json --load load.json --commit abc1234 \\
        --machine "NVIDIA H200" --gpu-memory-log gpumem.txt --out product.json

``--gpu-memory-log``: one ``memory.used`` MiB value per line (``nvidia-smi -lms``), sampled
while the server ran; its maximum is the server's peak GPU memory (all processes)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

SERVE_FIELDS = (
    "n",
    "first_audio_p50_ms",
    "first_audio_p95_ms",
    "stalled_streams",
    "worst_stall_ms",
    "rtf_min",
    "rtf_p50",
    "aggregate_x",
    "failures",
    "queued",
    "rejected",
    "captures_after_start",
    "cold_shapes_after_start",
    "s3gen_busy_share",
    "s3gen_batch_ms",
    "s3gen_windows_per_batch",
    "t3_ttft_ms",
    "t3_ms_per_token",
    "windows",
    "deadline_misses_next",
    "deadline_misses_first",
    "deadline_misses_next_t3",
    "deadline_misses_next_s3gen",
)
POISSON_FIELDS = (*SERVE_FIELDS[:1], "rate_per_s", *SERVE_FIELDS[1:])


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise SystemExit(f"product.py: cannot read {what} {path}: {error}") from None


def _peak_mib(path: Path | None) -> float | None:
    if path is None or not path.is_file():
        return None
    values = []
    for line in path.read_text().splitlines():
        try:
            values.append(float(line.strip().split()[0]))
        except (ValueError, IndexError):
            continue
    return max(values) if values else None


def merge(
    e2e: dict[str, Any] | None,
    load: dict[str, Any] | None,
    *,
    commit: str,
    machine: str,
    serve_peak_mib: float | None,
) -> dict[str, Any]:
    report: dict[str, Any] = {"commit": commit, "machine": machine}
    if e2e is not None:
        report["e2e"] = {
            **{k: e2e.get(k) for k in ("audio_s", "wall_s", "x_realtime", "load_s")},
            # The server starts second on the same machine: vLLM's compile cache is warm.
            "load_warm_s": load.get("server_startup_s") if load else None,
            **{
                k: v
                for k, v in e2e.items()
                if k not in ("audio_s", "wall_s", "x_realtime", "load_s")
            },
        }
    if load is not None:
        report["serve"] = [{k: row.get(k) for k in SERVE_FIELDS} for row in load["summary"]]
        report["serve_poisson"] = [
            {k: row.get(k) for k in POISSON_FIELDS} for row in load.get("poisson", [])
        ]
        report["serve_peak_gpu_memory_gib"] = (
            serve_peak_mib / 1024 if serve_peak_mib is not None else None
        )
    return report


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(share: float | None) -> str | None:
    return None if share is None else f"{share * 100:.0f} %"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Product benchmark, commit {report['commit']}, {report['machine']}", ""]
    e2e = report.get("e2e")
    if e2e:
        lines += [
            "| end to end (benchmark-text-1, defaults) | audio s | wall s | x real time "
            "| T3 tok/s | S3Gen busy s | load cold s | load warm s | peak GPU GiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| bench | {_fmt(e2e.get('audio_s'), 1)} | {_fmt(e2e.get('wall_s'), 1)} "
            f"| {_fmt(e2e.get('x_realtime'), 1)} | {_fmt(e2e.get('t3_tokens_per_s'))} "
            f"| {_fmt(e2e.get('s3gen_busy_s'), 1)} | {_fmt(e2e.get('load_s'), 1)} "
            f"| {_fmt(e2e.get('load_warm_s'), 1)} | {_fmt(e2e.get('peak_gpu_memory_gib'), 1)} |",
            "",
        ]
    serve = report.get("serve")
    if serve or report.get("serve_poisson"):
        lines += [
            "| N | first audio p50 / p95 ms | stalled streams (worst ms) | RTF min / p50 "
            "| audio s per s | failures | queued / rejected | deadline misses playing / first "
            "| captures / cold shapes after start | S3Gen busy | S3Gen batch ms (windows) | T3 TTFT ms "
            "| T3 ms/token |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = [(str(row["n"]), row) for row in serve or []]
        rows += [
            (f"{row['n']} @ {_fmt(row.get('rate_per_s'))}/s", row)
            for row in report.get("serve_poisson") or []
        ]
        for label, row in rows:
            lines.append(
                f"| {label} | {_fmt(row['first_audio_p50_ms'])} / {_fmt(row['first_audio_p95_ms'])} "
                f"| {row['stalled_streams']} ({_fmt(row['worst_stall_ms'])}) "
                f"| {_fmt(row['rtf_min'], 2)} / {_fmt(row['rtf_p50'], 2)} "
                f"| {_fmt(row['aggregate_x'], 1)} | {row['failures']} "
                f"| {_fmt(row.get('queued'))} / {_fmt(row.get('rejected'))} "
                f"| {_fmt(row.get('deadline_misses_next'))} / {_fmt(row.get('deadline_misses_first'))} "
                f"| {_fmt(row['captures_after_start'])} / {_fmt(row.get('cold_shapes_after_start'))} "
                f"| {_fmt(_pct(row.get('s3gen_busy_share')))} "
                f"| {_fmt(row.get('s3gen_batch_ms'))} ({_fmt(row.get('s3gen_windows_per_batch'), 1)}) "
                f"| {_fmt(row.get('t3_ttft_ms'))} | {_fmt(row.get('t3_ms_per_token'), 1)} |"
            )
        lines.append(
            f"\nserver peak GPU memory (all processes): "
            f"{_fmt(report.get('serve_peak_gpu_memory_gib'), 1)} GiB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="product.py", description=__doc__.split("\n")[0])
    parser.add_argument("--e2e", type=Path, help="the JSON of `chatterbox-vllm bench --json`")
    parser.add_argument("--load", type=Path, help="the JSON of `bench/server_load.py --json`")
    parser.add_argument("--commit", required=True)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--gpu-memory-log", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="where the merged JSON goes")
    args = parser.parse_args(argv)
    if args.e2e is None and args.load is None:
        parser.error("give --e2e, --load or both")
    e2e = _read_json(args.e2e, "--e2e") if args.e2e and args.e2e.is_file() else None
    load = _read_json(args.load, "--load") if args.load and args.load.is_file() else None
    report = merge(
        e2e,
        load,
        commit=args.commit,
        machine=args.machine,
        serve_peak_mib=_peak_mib(args.gpu_memory_log),
    )
    args.out.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0 if (e2e is not None and load is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
