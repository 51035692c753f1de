"""Load generator for ``chatterbox-vllm serve``: N concurrent streaming ``/v1/audio/speech`` requests.

For each concurrency N (default 1, 8, 32, 64) it opens N requests at once (``response_format=pcm``,
``stream_format=audio``) and measures, per request, the time to the first audio byte, the audio
received (16-bit mono 24 kHz PCM: bytes / 48 000 = seconds) and the wall time. Per N it prints one
markdown row to stdout:

* first-audio latency p50 / p95 (ms, from sending the request to its first audio byte);
* per-stream real-time factor min / p50 (audio seconds / wall seconds since that request started;
  > 1 is faster than real time);
* playback stall, worst stream (ms): a client that starts playing at the first byte and pauses
  whenever its buffer runs dry waits this long in total (0 when the stream kept ahead throughout);
* total audio seconds per second (all successful streams' audio / the round's wall time);
* failures (a status other than 200, a transport error, a timeout, or a 200 without audio).

A Poisson round (``--poisson RATE:COUNT``, e.g. ``4:64``) sends COUNT requests whose start times
are a Poisson process of RATE new streams per second (seeded: ``--arrival-seed``): the steady
state rather than a burst; it is reported in its own table and JSON list (``poisson``).

Over the server's capacity a request may wait in its admission queue (its response carries
``X-Chatterbox-Queued-Seconds``: counted as *queued*) or be refused with 429 or, after the
queue's max wait, 503 with ``Retry-After`` (counted as *rejected*, not as failures). Each
round also reads the server's per-window timeline from ``/metrics``: windows delivered and
deadline misses (a playing stream ran dry, or a first audio later than its target), by cause.

Either target a running server (``--url``) or let the tool start one (``--model-dir`` plus the
server's own flags after ``--``): it waits for ``/health``, runs, then stops it with SIGTERM.
One untimed warm-up request goes first. Logs and progress go to stderr.

    python bench/server_load.py --url http://127.0.0.1:8000 --concurrency 1,8,32,64
    python bench/server_load.py --model-dir /tmp/ck --max-new-tokens 250 -- --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger("server_load")

SAMPLE_RATE = 24_000
BYTES_PER_SECOND = SAMPLE_RATE * 2  # pcm: signed 16-bit little-endian, mono
DEFAULT_TEXT = (
    "The quick brown fox jumps over the lazy dog at the edge of the quiet river. "
    "Streaming speech lets a listener hear the first words while the rest is still being spoken."
)


class LoadError(Exception):
    """A problem the user can fix (unreachable server, failed warm-up, server start-up)."""


# ---------------------------------------------------------------------------------- measuring


@dataclass
class StreamResult:
    index: int
    ok: bool = False
    status: int | None = None
    error: str | None = None
    first_audio_s: float | None = None
    wall_s: float = 0.0
    audio_bytes: int = 0
    stall_s: float = 0.0
    started_at_s: float = 0.0  # relative to the round's start
    queued_s: float | None = None
    """Seconds the server kept it in its admission queue (None: admitted at once)."""
    rejected: bool = False
    """Refused by admission (429, or 503 after the queue's max wait; both with Retry-After)."""

    @property
    def audio_s(self) -> float:
        return self.audio_bytes / BYTES_PER_SECOND

    @property
    def rtf(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class RoundResult:
    concurrency: int
    wall_s: float
    streams: list[StreamResult] = field(default_factory=list)
    captures_after_start: float | None = None
    cold_shapes_after_start: float | None = None
    profile: dict[str, float | None] = field(default_factory=dict)
    rate_per_s: float | None = None
    """Poisson rounds: new streams per second (None: all at once)."""

    @property
    def ok(self) -> list[StreamResult]:
        return [s for s in self.streams if s.ok]

    @property
    def failures(self) -> list[StreamResult]:
        return [s for s in self.streams if not s.ok and not s.rejected]

    @property
    def queued(self) -> int:
        return sum(1 for s in self.streams if s.queued_s is not None)

    @property
    def rejected(self) -> int:
        return sum(1 for s in self.streams if s.rejected)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); ``q`` in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _error_message(response_body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's start."""
    try:
        payload = json.loads(response_body)
        return str(payload["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response_body[:200].decode("utf-8", "replace").strip() or "(empty body)"


async def one_stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    index: int,
    timeout_s: float,
    round_start: float,
    delay_s: float = 0.0,
) -> StreamResult:
    result = StreamResult(index=index)
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    start = time.perf_counter()
    result.started_at_s = start - round_start
    playback_end = 0.0  # when the audio received so far finishes playing (perf_counter clock)
    pending = b""  # an odd trailing byte waits for its partner before it counts as audio

    async def run() -> None:
        nonlocal playback_end, pending
        async with client.stream("POST", url, json=body, headers=headers) as response:
            result.status = response.status_code
            queued = response.headers.get("x-chatterbox-queued-seconds")
            if queued is not None:
                result.queued_s = float(queued)
            if response.status_code != 200:
                result.rejected = response.status_code in (429, 503) and (
                    "retry-after" in response.headers
                )
                result.error = (
                    f"HTTP {response.status_code}: {_error_message(await response.aread())}"
                )
                return
            async for data in response.aiter_raw():
                if not data:
                    continue
                now = time.perf_counter()
                data = pending + data
                usable = len(data) - len(data) % 2
                pending = data[usable:]
                if usable == 0:
                    continue
                seconds = usable / BYTES_PER_SECOND
                if result.first_audio_s is None:
                    result.first_audio_s = now - start
                    playback_end = now + seconds
                elif now > playback_end:  # the buffer ran dry: playback waited
                    result.stall_s += now - playback_end
                    playback_end = now + seconds
                else:
                    playback_end += seconds
                result.audio_bytes += usable
        if result.audio_bytes == 0:
            result.error = "HTTP 200 but no audio"
        elif pending:
            result.error = "stream ended on an odd byte (not 16-bit PCM)"
        else:
            result.ok = True

    try:
        await asyncio.wait_for(run(), timeout_s)
    except asyncio.TimeoutError:
        result.error = f"timed out after {timeout_s:g} s"
    except httpx.HTTPError as error:
        result.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    result.wall_s = time.perf_counter() - start
    return result


async def run_round(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    concurrency: int,
    timeout_s: float,
    texts: list[str],
    arrivals: list[float] | None = None,
) -> RoundResult:
    """N requests at once (or starting at ``arrivals`` seconds); request ``i`` speaks
    ``texts[i % len(texts)]``."""
    start = time.perf_counter()
    streams = await asyncio.gather(
        *(
            one_stream(
                client,
                url,
                {**body, "input": texts[i % len(texts)]},
                headers,
                i,
                timeout_s,
                start,
                arrivals[i] if arrivals else 0.0,
            )
            for i in range(concurrency)
        )
    )
    return RoundResult(concurrency, time.perf_counter() - start, list(streams))


def poisson_arrivals(rate_per_s: float, count: int, seed: int) -> list[float]:
    """Start times (s) of ``count`` streams arriving as a Poisson process of ``rate_per_s``."""
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate_per_s)
        times.append(now)
    return times


def split_paragraphs(text: str, low: int = 25, high: int = 45) -> list[str]:
    """Consecutive sentences grouped into paragraphs of ``low``..``high`` words (a sentence
    longer than ``high`` words is a paragraph of its own): distinct requests of 10-15 s of
    speech each, as a crowd of listeners would send."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s.strip()]
    groups: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in sentences:
        count = len(sentence.split())
        if current and words + count > high:
            groups.append(" ".join(current))
            current, words = [], 0
        current.append(sentence)
        words += count
        if words >= low:
            groups.append(" ".join(current))
            current, words = [], 0
    if current and (words >= low or not groups):
        groups.append(" ".join(current))
    return groups


CAPTURE_METRIC = "chatterbox_s3gen_graph_captures_after_startup_total"
"""The server's count of CUDA-graph captures after start-up (must stay 0 while serving)."""
COLD_METRIC = "chatterbox_s3gen_cold_shapes_after_startup_total"
"""S3Gen eager shapes first met while serving (each one's first batch waited for kernels)."""
PROFILE_METRICS = (
    CAPTURE_METRIC,
    COLD_METRIC,
    "chatterbox_s3gen_busy_seconds_total",
    "chatterbox_s3gen_batches_total",
    "chatterbox_s3gen_windows_total",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:time_per_output_token_seconds_sum",
    "vllm:time_per_output_token_seconds_count",
    "chatterbox_windows_total",
    "chatterbox_window_deadline_misses_total",
)
"""Read before and after each round: what bounds it (S3Gen busy share, T3 token times)."""


async def scrape_metrics(
    client: httpx.AsyncClient, base: str, headers: dict[str, str]
) -> dict[str, float]:
    """The server's :data:`PROFILE_METRICS` it exposes (labels summed), or {} if unreachable."""
    try:
        response = await client.get(base + "/metrics", headers=headers)
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in PROFILE_METRICS:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
            values[name] = values.get(name, 0.0) + value
            # Labelled series also by label values, e.g. "...misses_total|next|s3gen".
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels:
                key = "|".join([name, labels.get("kind", ""), labels.get("cause", "")])
                values[key] = values.get(key, 0.0) + value
    return values


def round_profile(
    before: dict[str, float], after: dict[str, float], wall_s: float
) -> dict[str, float | None]:
    """What one round cost the server: S3Gen's busy share of the round and its mean batch, T3's
    mean time to first token and per output token (vLLM's histograms)."""

    def delta(name: str) -> float | None:
        return after[name] - before.get(name, 0.0) if name in after else None

    def ratio(num: float | None, den: float | None, scale: float = 1.0) -> float | None:
        return num / den * scale if num is not None and den else None

    misses = "chatterbox_window_deadline_misses_total"

    def labelled(kind: str, cause: str) -> float | None:
        key = f"{misses}|{kind}|{cause}"
        if misses not in after:
            return None
        return after.get(key, 0.0) - before.get(key, 0.0)

    def by_kind(kind: str) -> float | None:
        parts = [labelled(kind, cause) for cause in ("t3", "s3gen")]
        return None if parts[0] is None else sum(p or 0.0 for p in parts)

    busy, batches, windows = (
        delta("chatterbox_s3gen_busy_seconds_total"),
        delta("chatterbox_s3gen_batches_total"),
        delta("chatterbox_s3gen_windows_total"),
    )
    return {
        "s3gen_busy_share": ratio(busy, wall_s),
        "s3gen_batch_ms": ratio(busy, batches, 1000.0),
        "s3gen_windows_per_batch": ratio(windows, batches),
        "t3_ttft_ms": ratio(
            delta("vllm:time_to_first_token_seconds_sum"),
            delta("vllm:time_to_first_token_seconds_count"),
            1000.0,
        ),
        "t3_ms_per_token": ratio(
            delta("vllm:time_per_output_token_seconds_sum"),
            delta("vllm:time_per_output_token_seconds_count"),
            1000.0,
        ),
        # The server's per-window timeline: windows delivered, and those that came after they
        # were due (next: a playing stream ran dry; first: first audio later than the target),
        # by cause (t3: the tokens came late; s3gen: they were there in time).
        "windows": delta("chatterbox_windows_total"),
        "deadline_misses_next": by_kind("next"),
        "deadline_misses_first": by_kind("first"),
        "deadline_misses_next_t3": labelled("next", "t3"),
        "deadline_misses_next_s3gen": labelled("next", "s3gen"),
    }


async def check_health(base: str, timeout_s: float = 5.0) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        try:
            response = await client.get(base + "/health")
        except httpx.HTTPError as error:
            raise LoadError(
                f"cannot reach the server at {base} ({type(error).__name__}: {error}); "
                "is it running, and is the URL right?"
            ) from None
    if response.status_code != 200:
        raise LoadError(
            f"{base}/health answered {response.status_code}: {_error_message(response.content)}"
        )
    try:
        return dict(response.json())
    except ValueError:
        raise LoadError(
            f"{base}/health did not answer JSON; is this a chatterbox-vllm server?"
        ) from None


async def benchmark(args: argparse.Namespace, base: str) -> list[RoundResult]:
    health = await check_health(base)
    logger.info("server %s is healthy: %s", base, health)
    url = base + "/v1/audio/speech"
    body: dict[str, Any] = {
        "model": args.model,
        "input": args.text,
        "voice": args.voice,
        "response_format": "pcm",
        "stream_format": "audio",
    }
    if args.max_new_tokens is not None:
        body["max_new_tokens"] = args.max_new_tokens
    if args.max_tokens_per_expected_second is not None:
        body["max_tokens_per_expected_second"] = args.max_tokens_per_expected_second
    if args.seed is not None:
        body["seed"] = args.seed
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    most = max([*args.concurrency, *(count for _, count in args.poisson)])
    limits = httpx.Limits(max_connections=most + 4, max_keepalive_connections=most + 4)
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        logger.info("warm-up request (not timed)")
        warm = await one_stream(
            client, url, {**body, "input": args.texts[0]}, headers, -1, args.request_timeout, 0.0
        )
        if not warm.ok:
            raise LoadError(f"the warm-up request failed: {warm.error}")
        logger.info(
            "warm-up: %.2f s of audio in %.2f s (first audio after %.0f ms)",
            warm.audio_s,
            warm.wall_s,
            (warm.first_audio_s or 0) * 1000,
        )
        rounds = []
        plan: list[tuple[int, float | None]] = [(n, None) for n in args.concurrency]
        plan += [(count, rate) for rate, count in args.poisson]
        for n, rate in plan:
            what = f"N={n}" if rate is None else f"Poisson {rate:g}/s x {n}"
            logger.info("round %s", what)
            before = await scrape_metrics(client, base, headers)
            arrivals = None if rate is None else poisson_arrivals(rate, n, args.arrival_seed)
            result = await run_round(
                client, url, body, headers, n, args.request_timeout, args.texts, arrivals
            )
            result.rate_per_s = rate
            after = await scrape_metrics(client, base, headers)
            result.captures_after_start = after.get(CAPTURE_METRIC)
            result.cold_shapes_after_start = after.get(COLD_METRIC)
            result.profile = round_profile(before, after, result.wall_s)
            for failure in result.failures[:5]:
                logger.warning("%s stream %d failed: %s", what, failure.index, failure.error)
            if len(result.failures) > 5:
                logger.warning("%s: %d more failures", what, len(result.failures) - 5)
            logger.info(
                "round %s done in %.1f s: %d ok, %d failed, %d queued, %d rejected",
                what,
                result.wall_s,
                len(result.ok),
                len(result.failures),
                result.queued,
                result.rejected,
            )
            rounds.append(result)
    return rounds


# ---------------------------------------------------------------------------------- reporting


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


STALL_THRESHOLD_S = 0.02
"""A stream counts as stalled when its player waited longer than this in all (one 20 ms frame)."""


def stalled(r: RoundResult) -> int:
    return sum(1 for s in r.ok if s.stall_s > STALL_THRESHOLD_S)


def round_summary(r: RoundResult) -> dict[str, Any]:
    """The product benchmark's fields for one round (bench/product.py)."""
    ok = r.ok
    first = [s.first_audio_s * 1000 for s in ok if s.first_audio_s is not None]
    rtf = [s.rtf for s in ok]
    return {
        "n": r.concurrency,
        "first_audio_p50_ms": percentile(first, 50),
        "first_audio_p95_ms": percentile(first, 95),
        "stalled_streams": stalled(r),
        "worst_stall_ms": max((s.stall_s for s in ok), default=math.nan) * 1000,
        "rtf_min": min(rtf) if rtf else math.nan,
        "rtf_p50": percentile(rtf, 50),
        "aggregate_x": sum(s.audio_s for s in ok) / r.wall_s if r.wall_s > 0 else math.nan,
        "failures": len(r.failures),
        "queued": r.queued,
        "rejected": r.rejected,
        "captures_after_start": r.captures_after_start,
        "cold_shapes_after_start": r.cold_shapes_after_start,
        **({} if r.rate_per_s is None else {"rate_per_s": r.rate_per_s}),
        **r.profile,
    }


def markdown_table(rounds: list[RoundResult]) -> str:
    lines = [
        "| N | ok | failed | first audio p50 (ms) | first audio p95 (ms) | RTF min | RTF p50 "
        "| worst stall (ms) | stalled streams | audio s / stream (p50) | audio s per s "
        "| round wall (s) | captures / cold shapes after start | queued | rejected | deadline misses "
        "(playing / first) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        ok = r.ok
        first = [s.first_audio_s * 1000 for s in ok if s.first_audio_s is not None]
        rtf = [s.rtf for s in ok]
        audio = [s.audio_s for s in ok]
        label = (
            str(r.concurrency) if r.rate_per_s is None else f"{r.concurrency} @ {r.rate_per_s:g}/s"
        )
        lines.append(
            f"| {label} | {len(ok)} | {len(r.failures)} "
            f"| {_fmt(percentile(first, 50))} | {_fmt(percentile(first, 95))} "
            f"| {_fmt(min(rtf) if rtf else math.nan, 2)} | {_fmt(percentile(rtf, 50), 2)} "
            f"| {_fmt(max((s.stall_s for s in ok), default=math.nan) * 1000)} "
            f"| {stalled(r)} "
            f"| {_fmt(percentile(audio, 50), 2)} | {_fmt(sum(audio) / r.wall_s, 2)} "
            f"| {_fmt(r.wall_s, 1)} "
            f"| {'-' if r.captures_after_start is None else f'{r.captures_after_start:g}'} / "
            f"{'-' if r.cold_shapes_after_start is None else f'{r.cold_shapes_after_start:g}'} "
            f"| {r.queued} | {r.rejected} "
            f"| {_count(r.profile.get('deadline_misses_next'))} / "
            f"{_count(r.profile.get('deadline_misses_first'))} |"
        )
    reasons = Counter(s.error for r in rounds for s in r.failures)
    if reasons:
        lines.append("")
        lines.append("Failures:")
        lines.extend(f"- {count} x {reason}" for reason, count in reasons.most_common())
    return "\n".join(lines)


def write_json(
    path: Path,
    args: argparse.Namespace,
    base: str,
    rounds: list[RoundResult],
    startup_s: float | None,
) -> None:
    payload = {
        "url": base,
        "server_startup_s": startup_s,
        "summary": [round_summary(r) for r in rounds if r.rate_per_s is None],
        "poisson": [round_summary(r) for r in rounds if r.rate_per_s is not None],
        "texts": args.texts,
        "voice": args.voice,
        "max_new_tokens": args.max_new_tokens,
        "max_tokens_per_expected_second": args.max_tokens_per_expected_second,
        "seed": args.seed,
        "rounds": [
            {
                "concurrency": r.concurrency,
                "rate_per_s": r.rate_per_s,
                "wall_s": r.wall_s,
                "streams": [{**asdict(s), "audio_s": s.audio_s, "rtf": s.rtf} for s in r.streams],
            }
            for r in rounds
        ],
    }
    path.write_text(json.dumps(payload, indent=1))
    logger.info("per-request results written to %s", path)


# ---------------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


class ManagedServer:
    """``chatterbox-vllm serve`` in a child process (its own session, output to a log file)."""

    def __init__(self, args: argparse.Namespace, server_args: list[str]) -> None:
        for flag in ("--model-dir", "--port", "--host"):
            if _has_flag(server_args, flag):
                raise LoadError(f"give {flag} to server_load.py itself, not after '--'")
        self.port = args.port or _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            *shlex.split(args.server_command),
            "--model-dir",
            str(args.model_dir),
            "--port",
            str(self.port),
        ]
        if args.api_key and not _has_flag(server_args, "--api-key"):
            command += ["--api-key", args.api_key]
        if not _has_flag(server_args, "--max-concurrent-streams"):
            most = max(64, *args.concurrency, *(count for _, count in args.poisson))
            command += ["--max-concurrent-streams", str(most)]
        self.command = command + server_args
        if args.server_log is not None:
            self.log_path = args.server_log
        else:
            handle, name = tempfile.mkstemp(prefix="server-load-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.startup_timeout_s = args.startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        """Seconds from starting the process to its first healthy /health."""

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        logger.info("starting the server: %s", " ".join(self.command))
        logger.info("server log: %s", self.log_path)
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as error:
            raise LoadError(f"cannot start the server ({self.command[0]}): {error}") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        started = time.monotonic()
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise LoadError(
                    f"the server exited with status {code} during start-up; the end of its log "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    self.startup_s = time.monotonic() - started
                    logger.info("server healthy after %.0f s", self.startup_s)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise LoadError(
            f"the server was not healthy after {self.startup_timeout_s:g} s (--startup-timeout); "
            f"the end of its log ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        logger.info("stopping the server (SIGTERM)")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            logger.warning("the server did not exit 90 s after SIGTERM; killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the engine core too
            process.wait(timeout=30)
        if process.returncode in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM after draining
            logger.info("server stopped")
        else:
            logger.warning("server exited with status %s", process.returncode)


# ---------------------------------------------------------------------------------- the CLI


def _concurrency_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 1,8,32,64, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every concurrency must be >= 1, got {text!r}")
    return values


def _poisson_round(text: str) -> tuple[float, int]:
    rate, _, count = text.partition(":")
    try:
        parsed = float(rate), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected RATE:COUNT such as 4:64 (new streams per second : streams), got {text!r}"
        ) from None
    if not (parsed[0] > 0 and math.isfinite(parsed[0])) or parsed[1] < 1:
        raise argparse.ArgumentTypeError(f"RATE must be > 0 and COUNT >= 1, got {text!r}")
    return parsed


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server_load.py",
        description="Open N concurrent streaming /v1/audio/speech requests (pcm, stream_format "
        "audio) against a chatterbox-vllm server and report first-audio latency, per-stream "
        "real-time factor and total audio throughput per N (a markdown table on stdout).",
        epilog="Arguments after '--' go to 'chatterbox-vllm serve' when --model-dir starts one, "
        "e.g. -- --device cuda --cuda-graphs full.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--model-dir", type=Path, help="start 'chatterbox-vllm serve' on this checkpoint"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=[1, 8, 32, 64],
        help="comma-separated N values, one round each (default 1,8,32,64)",
    )
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="input text of every request (default: two English sentences)")
    text.add_argument("--text-file", type=Path, help="read the input text from this UTF-8 file")
    parser.add_argument("--voice", default="default", help="voice name (default %(default)s)")
    parser.add_argument("--model", default="chatterbox", help="model field (default %(default)s)")
    parser.add_argument("--api-key", help="Bearer key (also passed to a server this tool starts)")
    parser.add_argument(
        "--max-new-tokens", type=_positive(int), help="speech-token cap per text chunk"
    )
    parser.add_argument(
        "--max-tokens-per-expected-second",
        type=_positive(float),
        help="speech-token cap per text chunk, per second of speech its text is expected to take",
    )
    parser.add_argument(
        "--paragraphs",
        action="store_true",
        help="split the input text into 25-45 word paragraphs; request i of a round speaks "
        "paragraph i (cycling), so concurrent streams differ",
    )
    parser.add_argument(
        "--poisson",
        type=_poisson_round,
        action="append",
        default=[],
        metavar="RATE:COUNT",
        help="after the N rounds, a round of COUNT streams arriving as a Poisson process of RATE "
        "new streams per second, e.g. 4:64 (repeatable)",
    )
    parser.add_argument(
        "--arrival-seed", type=int, default=0, help="seed of the Poisson arrival times"
    )
    parser.add_argument("--seed", type=int, help="seed of every request (the same for all)")
    parser.add_argument(
        "--request-timeout",
        type=_positive(float),
        default=600.0,
        help="seconds one request may take in all (default %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write per-request results to this file")
    server = parser.add_argument_group("starting a server (--model-dir)")
    server.add_argument(
        "--port", type=int, help="port for the started server (default: a free one)"
    )
    server.add_argument(
        "--server-command",
        default=f"{shlex.quote(sys.executable)} -m chatterbox_vllm.cli serve",
        help="how to start the server (default: this Python's '-m chatterbox_vllm.cli serve')",
    )
    server.add_argument(
        "--server-log", type=Path, help="server stdout/stderr go here (default: a temp file)"
    )
    server.add_argument(
        "--startup-timeout",
        type=_positive(float),
        default=900.0,
        help="seconds to wait for /health (default %(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings on stderr")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        own, server_args = argv[:cut], argv[cut + 1 :]
    else:
        own, server_args = argv, []
    args = parser.parse_args(own)
    if server_args and args.model_dir is None:
        parser.error("arguments after '--' are server flags: they need --model-dir")
    if args.model_dir is not None and not args.model_dir.is_dir():
        parser.error(f"--model-dir {args.model_dir} is not a directory")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: directory {args.json.parent} does not exist")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port must be in [1, 65535], got {args.port}")
    if args.url is not None:
        args.url = args.url.rstrip("/")
        if not args.url.startswith(("http://", "https://")):
            parser.error(f"--url must start with http:// or https://, got {args.url!r}")
    if args.text_file is not None:
        try:
            args.text = args.text_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            parser.error(f"cannot read --text-file {args.text_file}: {error}")
    elif args.text is None:
        args.text = DEFAULT_TEXT
    if not args.text.strip():
        parser.error("the input text is empty")
    args.texts = split_paragraphs(args.text) if args.paragraphs else [args.text]
    return args, server_args


def main(argv: list[str] | None = None) -> int:
    args, server_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    server: ManagedServer | None = None
    try:
        if args.model_dir is not None:
            server = ManagedServer(args, server_args)
            server.start()
            base = server.base
        else:
            base = args.url
        rounds = asyncio.run(benchmark(args, base))
    except LoadError as error:
        print(f"server_load.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("server_load.py: interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
    tokens = "server default" if args.max_new_tokens is None else str(args.max_new_tokens)
    inputs = (
        f"{len(args.texts)} paragraphs of {min(len(t.split()) for t in args.texts)}-"
        f"{max(len(t.split()) for t in args.texts)} words"
        if args.paragraphs
        else f"{len(args.text)}-character input"
    )
    print(
        f"{inputs}, voice {args.voice!r}, max_new_tokens {tokens}, token cap per expected "
        f"second {args.max_tokens_per_expected_second or 'server default'}, seed {args.seed}, "
        "pcm 24 kHz streamed (stream_format audio)\n"
    )
    print(markdown_table(rounds))
    if args.json is not None:
        try:
            write_json(args.json, args, base, rounds, server.startup_s if server else None)
        except OSError as error:
            print(
                f"server_load.py: error: cannot write --json {args.json}: {error}", file=sys.stderr
            )
            return 1
    return 0 if all(not r.failures for r in rounds) else 3


if __name__ == "__main__":
    sys.exit(main())
