"""Latency of ``WS /v1/audio/speech/stream`` with text arriving at an LLM's pace (issue #28 goals).

For each concurrency N (default 1 and 32) it opens N WebSocket sessions at once; each sends a
paragraph as LLM-sized tokens (about 4 characters) at ``--tokens-per-second`` (30), commits, and
reads the audio. Per session it measures:

* first audio: from sending the token that makes the first sentence's end known (the whitespace
  after its ``.``) to the first ``speech.audio.delta`` (goal: <= 250 ms at N = 1 and 32);
* worst stall: a player that starts at the first audio and plays in real time runs dry this long
  in total (goal: 0 once audio starts; a gap up to the 50 ms crossfade is inaudible);
* audio seconds per second over the round, failures (an ``error`` event, a non-completed turn, a
  transport error).

Then ``--barge-ins`` times (default 5) a session speaking a long text sends
``input_text_buffer.clear`` and the tool measures the time to ``input_text_buffer.cleared`` and
until ``/metrics`` shows the engine free (no unfinished T3 request, no open S3Gen lane; goal
<= 100 ms). A markdown table goes to stdout; logs to stderr.

    python bench/speech_stream_bench.py --url http://127.0.0.1:8000 --concurrency 1,32
    python bench/speech_stream_bench.py --model-dir /tmp/ck -- --device cuda --max-new-tokens 250

With ``--model-dir`` it starts ``chatterbox-vllm serve`` (flags after ``--`` go to it) as
``bench/server_load.py`` does, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import LoadError, ManagedServer

logger = logging.getLogger("speech_stream_bench")

BYTES_PER_SECOND = 24_000 * 2  # pcm: 16-bit mono 24 kHz
TEXT = (
    "Thanks for calling, I can help with that. Your order left our warehouse this morning and "
    "should arrive on Thursday. If you are not home, the driver will leave it at the front desk. "
    "Is there anything else I can do for you today?"
)
LONG_TEXT = "This is a long answer that the listener will interrupt before it ends. " * 8


def llm_tokens(text: str, chars: int = 4) -> list[str]:
    """The text cut as an LLM's tokenizer would, roughly: pieces of about ``chars`` characters
    that never start inside a space run."""
    tokens, current = [], ""
    for char in text:
        if len(current) >= chars and char == " ":
            tokens.append(current)
            current = ""
        current += char
        if len(current) >= chars * 2:
            tokens.append(current)
            current = ""
    return tokens + ([current] if current else [])


@dataclass
class SessionResult:
    first_audio_ms: float | None = None
    stall_ms: float = 0.0
    audio_s: float = 0.0
    error: str | None = None
    arrivals: list[tuple[float, float]] = field(default_factory=list)


def _ws_url(base: str, key: str | None) -> str:
    url = base.replace("http://", "ws://").replace("https://", "wss://")
    return url + "/v1/audio/speech/stream" + (f"?api_key={key}" if key else "")


async def one_session(args: argparse.Namespace, seed: int) -> SessionResult:
    result = SessionResult()
    tokens = llm_tokens(TEXT)
    first_end = TEXT.index(". ") + 2  # the first sentence's end is known with the space
    sentence_known_at: float | None = None
    try:
        async with websockets.connect(_ws_url(args.url, args.api_key), max_size=None) as ws:
            session = {"response_format": "pcm", "seed": seed, **args.controls}
            await ws.send(json.dumps({"type": "session.update", "session": session}))

            async def send_text() -> None:
                nonlocal sentence_known_at
                sent = 0
                for token in tokens:
                    await ws.send(json.dumps({"type": "input_text_buffer.append", "delta": token}))
                    sent += len(token)
                    if sentence_known_at is None and sent >= first_end:
                        sentence_known_at = time.perf_counter()
                    await asyncio.sleep(1 / args.tokens_per_second)
                await ws.send(json.dumps({"type": "input_text_buffer.commit"}))

            sender = asyncio.ensure_future(send_text())
            try:
                async for message in ws:
                    event = json.loads(message)
                    if event["type"] == "speech.audio.delta":
                        now = time.perf_counter()
                        seconds = len(base64.b64decode(event["audio"])) / BYTES_PER_SECOND
                        result.arrivals.append((now, seconds))
                        result.audio_s += seconds
                    elif event["type"] == "error":
                        result.error = event["error"]["message"]
                        break
                    elif event["type"] == "speech.audio.done":
                        if event["status"] != "completed":
                            result.error = f"turn {event['status']}"
                        break
            finally:
                sender.cancel()
    except (OSError, websockets.WebSocketException) as error:
        result.error = f"{type(error).__name__}: {error}"
    if result.arrivals and sentence_known_at is not None:
        result.first_audio_ms = (result.arrivals[0][0] - sentence_known_at) * 1000
        played_until = result.arrivals[0][0]
        for arrived, seconds in result.arrivals:
            if arrived > played_until:
                result.stall_ms += (arrived - played_until) * 1000
                played_until = arrived
            played_until += seconds
    return result


def _metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def barge_in(args: argparse.Namespace) -> tuple[float, float]:
    """(ms to ``input_text_buffer.cleared``, ms until /metrics shows the engine free)."""
    async with websockets.connect(_ws_url(args.url, args.api_key), max_size=None) as ws:
        session = {"response_format": "pcm", **args.controls}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await ws.send(json.dumps({"type": "input_text_buffer.append", "delta": LONG_TEXT}))
        async for message in ws:
            if json.loads(message)["type"] == "speech.audio.delta":
                break
        await asyncio.sleep(0.3)  # well into speaking
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "input_text_buffer.clear"}))
        async for message in ws:
            if json.loads(message)["type"] == "input_text_buffer.cleared":
                break
        cleared = time.perf_counter() - started
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                text = (await client.get(args.url + "/metrics")).text
                busy = [
                    line
                    for line in text.splitlines()
                    if line.startswith(
                        ("chatterbox_t3_unfinished_requests ", "chatterbox_s3gen_open_streams ")
                    )
                    and float(line.rsplit(" ", 1)[1]) > 0
                ]
                if not busy:
                    break
                if time.perf_counter() - started > 30:
                    raise LoadError(f"the engine was still busy 30 s after a clear: {busy}")
        free = time.perf_counter() - started
    return cleared * 1000, free * 1000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace) -> None:
    print(
        "| sessions | first audio p50 / p95 / max (ms) | worst stall (ms) | audio s per s | failures |"
    )
    print("|---:|---|---:|---:|---:|")
    await one_session(args, seed=0)  # warm-up, untimed
    for n in args.concurrency:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_session(args, seed) for seed in range(n)))
        wall = time.perf_counter() - started
        good = [r for r in results if r.error is None and r.first_audio_ms is not None]
        for r in results:
            if r.error:
                logger.warning("session failed: %s", r.error)
        firsts = [r.first_audio_ms for r in good if r.first_audio_ms is not None]
        first = (
            " / ".join(f"{_percentile(firsts, q):.0f}" for q in (0.5, 0.95, 1.0)) if firsts else "-"
        )
        stall = max((r.stall_ms for r in good), default=float("nan"))
        audio = sum(r.audio_s for r in good) / wall
        print(f"| {n} | {first} | {stall:.0f} | {audio:.1f} | {len(results) - len(good)} |")
    if args.barge_ins:
        times = [await barge_in(args) for _ in range(args.barge_ins)]
        cleared = [t[0] for t in times]
        free = [t[1] for t in times]
        print()
        print("| barge-in (clear) | p50 (ms) | max (ms) |")
        print("|---|---:|---:|")
        print(f"| `cleared` event | {statistics.median(cleared):.0f} | {max(cleared):.0f} |")
        print(f"| engine free (/metrics) | {statistics.median(free):.0f} | {max(free):.0f} |")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    server_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, server_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model-dir", type=Path, help="start 'chatterbox-vllm serve' on this")
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1, 32],
        help="comma-separated session counts (default 1,32)",
    )
    parser.add_argument("--tokens-per-second", type=float, default=30.0)
    parser.add_argument("--barge-ins", type=int, default=5)
    parser.add_argument(
        "--controls", type=json.loads, default={}, help="JSON, e.g. '{\"max_new_tokens\": 200}'"
    )
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument(
        "--server-command", default=f"{sys.executable} -m chatterbox_vllm.cli serve"
    )
    parser.add_argument("--server-log", type=Path, default=None)
    parser.add_argument("--startup-timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    if (args.url is None) == (args.model_dir is None):
        parser.error("give either --url (a running server) or --model-dir (start one)")
    if server_args and args.model_dir is None:
        parser.error("arguments after '--' are server flags: they need --model-dir")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /metrics poll otherwise
    server = None
    try:
        if args.model_dir is not None:
            server = ManagedServer(args, server_args)
            server.start()
            args.url = server.base
        asyncio.run(run(args))
    except LoadError as error:
        logger.error("%s", error)
        return 1
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
