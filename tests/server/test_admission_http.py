"""Admission over HTTP: the real app and uvicorn in front of a stand-in engine whose streams the
test finishes by hand, so a full server, a queue and disconnects cost no model (seconds)."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import torch

from chatterbox_vllm.server.routes import create_app
from chatterbox_vllm.server.settings import ServerSettings
from chatterbox_vllm.streaming import AudioChunk, StreamEvents

BODY = {"model": "chatterbox", "input": "Hello.", "response_format": "pcm"}
SSE_BODY = {**BODY, "stream_format": "sse"}


class HandFedSession:
    """A stream whose audio the test delivers (:meth:`finish`)."""

    speech_tokens = 3
    stretches = False  # speed 1.0: chunks are taken on the event loop

    def __init__(self) -> None:
        self.events = StreamEvents()
        self.finished = False
        self.closed = threading.Event()

    def finish(self) -> None:
        self.events.put(0, [torch.full((2400,), 0.25)], True, None)

    def take(self, event: Any) -> list[AudioChunk]:
        _, pieces, done, _ = event
        chunks = [AudioChunk(p, 24_000, 0, 0, final=False) for p in pieces]
        if done:
            self.finished = True
            chunks.append(AudioChunk(torch.zeros(0), 24_000, 1, 0, final=True))
        return chunks

    def check_engine(self) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


class StandInEngine:
    """What the app reads of a ChatterboxTTS, with a fixed capacity estimate."""

    model = "english"
    sample_rate = 24_000
    default_voice = object()
    _scheduler = None
    _t3 = None

    def __init__(self, capacity: float) -> None:
        self.on_stream_done = self.on_window = None
        self.scheduler = SimpleNamespace(capacity=SimpleNamespace(streams=lambda: capacity))
        self.sessions: queue.Queue[HandFedSession] = queue.Queue()

    def _t3_failure(self) -> None:
        return None

    def s3gen_graph_stats(self) -> None:
        return None

    def open_stream(self, text: str, voice: Any, *, params: Any) -> HandFedSession:
        session = HandFedSession()
        self.sessions.put(session)
        return session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(capacity: float, **settings: Any) -> Iterator[tuple[str, StandInEngine]]:
    import uvicorn

    engine = StandInEngine(capacity)
    port = free_port()
    app = create_app(engine, ServerSettings(port=port, **settings))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def health(base: str) -> dict[str, Any]:
    return dict(httpx.get(base + "/health", timeout=5).json())


def wait_for(condition, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_over_capacity_requests_queue_in_order_and_a_leaver_frees_its_place() -> None:
    with serving(capacity=1.0, max_queue_wait=60.0) as (base, engine):
        with (
            httpx.Client(timeout=30) as a_client,
            a_client.stream("POST", base + "/v1/audio/speech", json=BODY) as first,
        ):
            assert first.status_code == 200
            a = engine.sessions.get(timeout=5)
            assert health(base)["at_capacity"] is True

            # B waits for a slot (no headers yet), then its client gives up and disconnects.
            def impatient() -> None:
                with contextlib.suppress(httpx.ReadTimeout):
                    httpx.post(base + "/v1/audio/speech", json=BODY, timeout=1.5)

            leaver = threading.Thread(target=impatient)
            leaver.start()
            wait_for(lambda: health(base)["queued_streams"] == 1, "B was not queued")

            # C (SSE) gets its headers at once and is told where it stands.
            with (
                httpx.Client(timeout=30) as c_client,
                c_client.stream("POST", base + "/v1/audio/speech", json=SSE_BODY) as sse,
            ):
                assert sse.status_code == 200
                events = sse_events(sse.iter_lines())
                assert next(events) == {"type": "speech.queued", "position": 2, "max_wait_s": 60.0}
                leaver.join()
                wait_for(lambda: health(base)["queued_streams"] == 1, "B's place was not freed")
                a.finish()
                assert len(first.read()) == 4800  # A's audio, whole
                c = engine.sessions.get(timeout=5)  # C got the slot B left; B never started
                assert engine.sessions.empty()

                # D (audio) queues behind C and is told how long it waited.
                answers: list[httpx.Response] = []
                later = threading.Thread(
                    target=lambda: answers.append(
                        httpx.post(base + "/v1/audio/speech", json=BODY, timeout=30)
                    )
                )
                later.start()
                wait_for(lambda: health(base)["queued_streams"] == 1, "D was not queued")
                c.finish()
                kinds = [event["type"] for event in events]
                assert kinds == ["speech.audio.delta", "speech.audio.done"]
            engine.sessions.get(timeout=5).finish()
            later.join(timeout=30)
        assert answers[0].status_code == 200 and len(answers[0].content) == 4800
        assert float(answers[0].headers["x-chatterbox-queued-seconds"]) > 0
        metrics = httpx.get(base + "/metrics").text
        assert "chatterbox_queued_streams_total 3.0" in metrics
        assert health(base) | {"model": None} == {
            "status": "ok",
            "model": None,
            "running_streams": 0,
            "queued_streams": 0,
            "at_capacity": False,
        }


@pytest.mark.parametrize("fmt", [BODY, SSE_BODY], ids=["audio", "sse"])
def test_reject_answers_429_with_retry_after(fmt: dict) -> None:
    with (
        serving(capacity=1.0, over_capacity="reject") as (base, engine),
        httpx.Client(timeout=30) as client,
        client.stream("POST", base + "/v1/audio/speech", json=BODY) as first,
    ):
        over = httpx.post(base + "/v1/audio/speech", json=fmt, timeout=10)
        assert over.status_code == 429
        assert over.json()["error"]["type"] == "rate_limit_error"
        assert int(over.headers["retry-after"]) >= 1
        engine.sessions.get(timeout=5).finish()
        assert first.status_code == 200 and len(first.read()) == 4800


def test_a_request_queued_past_the_max_wait_gets_503_and_retry_after() -> None:
    with serving(capacity=1.0, max_queue_wait=0.3) as (base, engine):
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", base + "/v1/audio/speech", json=BODY),
        ):
            late = httpx.post(base + "/v1/audio/speech", json=BODY, timeout=10)
            assert late.status_code == 503
            assert "--max-queue-wait" in late.json()["error"]["message"]
            assert int(late.headers["retry-after"]) >= 1
            with (
                httpx.Client(timeout=30) as sse_client,
                sse_client.stream("POST", base + "/v1/audio/speech", json=SSE_BODY) as sse,
            ):
                events = list(sse_events(sse.iter_lines()))
            assert [e["type"] for e in events] == ["speech.queued", "error"]
            assert events[1]["error"]["type"] == "server_error"
            engine.sessions.get(timeout=5).finish()
        assert health(base)["running_streams"] == 0


def test_a_websocket_session_that_leaves_while_queued_frees_its_place() -> None:
    """A WebSocket client that gives up while its session waits for a slot leaves the queue at
    once, as an HTTP request does (it held a place, and pushed every later client back, until
    --max-queue-wait ran out)."""
    import asyncio

    import websockets

    with serving(capacity=1.0, max_queue_wait=60.0) as (base, engine):
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", base + "/v1/audio/speech", json=BODY) as first,
        ):
            assert first.status_code == 200
            a = engine.sessions.get(timeout=5)

            async def wait_then_leave() -> None:
                url = base.replace("http", "ws") + "/v1/audio/speech/stream"
                async with websockets.connect(url):
                    for _ in range(200):
                        if health(base)["queued_streams"] == 1:
                            return
                        await asyncio.sleep(0.05)
                    raise AssertionError("the session was not queued")

            asyncio.run(wait_then_leave())
            wait_for(lambda: health(base)["queued_streams"] == 0, "its place was not freed", 5)
            a.finish()
            assert len(first.read()) == 4800
        assert health(base)["running_streams"] == 0


def test_a_queued_websocket_session_may_send_only_so_much_before_it_starts() -> None:
    """What a queued session sends is kept for it, within a bound: past it the session is
    refused (an error event and close code 1008) and its place is freed."""
    import asyncio

    import websockets

    from chatterbox_vllm.server.realtime import QUEUED_MESSAGE_CHARS

    with (
        serving(capacity=1.0, max_queue_wait=60.0) as (base, engine),
        httpx.Client(timeout=30) as client,
        client.stream("POST", base + "/v1/audio/speech", json=BODY) as first,
    ):
        a = engine.sessions.get(timeout=5)

        async def flood() -> tuple[dict, int | None]:
            url = base.replace("http", "ws") + "/v1/audio/speech/stream"
            async with websockets.connect(url, max_size=None) as ws:
                delta = {"type": "input_text_buffer.append", "delta": "x" * 100_000}
                for _ in range(QUEUED_MESSAGE_CHARS // 100_000 + 1):
                    await ws.send(json.dumps(delta))
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                with contextlib.suppress(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                return event, ws.close_code

        event, code = asyncio.run(flood())
        assert event["type"] == "error" and code == 1008
        assert "while the session waited for a slot" in event["error"]["message"]
        wait_for(lambda: health(base)["queued_streams"] == 0, "its place was not freed", 5)
        a.finish()
        assert len(first.read()) == 4800


def test_head_is_get_without_the_body_and_405_lists_every_method_of_the_path() -> None:
    with serving(capacity=1.0, api_key="key") as (base, _):
        # Uptime monitors and load balancers probe with HEAD: the GET's status and headers.
        for path, status in (("/health", 200), ("/metrics", 200), ("/v1/models", 401)):
            got = httpx.get(base + path, timeout=5)
            head = httpx.head(base + path, timeout=5)
            assert (head.status_code, head.content) == (status, b""), path
            assert got.status_code == status and got.content, path
            assert head.headers["content-type"] == got.headers["content-type"], path
        authorized = httpx.head(base + "/v1/models", headers={"Authorization": "Bearer key"})
        assert authorized.status_code == 200 and authorized.content == b""
        # /v1/voices takes GET and POST (two routes): a wrong method is told of both.
        put = httpx.put(base + "/v1/voices", headers={"Authorization": "Bearer key"})
        assert put.status_code == 405 and put.headers["allow"] == "GET, HEAD, POST"
        assert put.json()["error"]["message"] == "PUT is not allowed on /v1/voices; use GET or POST"
        head_speech = httpx.head(base + "/v1/audio/speech")
        assert head_speech.status_code == 405 and head_speech.headers["allow"] == "POST"
        assert httpx.get(base + "/health", timeout=5).json()["status"] == "ok"


def test_a_compressed_body_is_refused_saying_so() -> None:
    import gzip

    with serving(capacity=1.0) as (base, engine):
        body = gzip.compress(json.dumps(BODY).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        refused = httpx.post(base + "/v1/audio/speech", content=body, headers=headers)
        assert refused.status_code == 415 and refused.headers["accept-encoding"] == "identity"
        assert refused.json()["error"]["message"] == (
            "request bodies are read as sent: Content-Encoding gzip is not supported; send the "
            "body uncompressed (no Content-Encoding header)"
        )
        assert engine.sessions.empty()
        # The same request uncompressed is served.
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", base + "/v1/audio/speech", json=BODY) as response,
        ):
            engine.sessions.get(timeout=5).finish()
            assert response.status_code == 200 and len(response.read()) == 4800


def test_every_response_carries_a_request_id() -> None:
    with serving(capacity=1.0) as (base, engine):
        answers = [
            httpx.get(base + "/health"),
            httpx.get(base + "/health"),
            httpx.get(base + "/nowhere"),  # errors too, the router's and the middleware's
            httpx.post(base + "/v1/audio/speech", json={"input": "Hi."}),
            httpx.post(base + "/v1/audio/speech", content=b"x", headers={"Content-Encoding": "br"}),
        ]
        ids = [answer.headers.get("x-request-id") for answer in answers]
        assert all(ids) and len(set(ids)) == len(ids), ids
        # A client's (or a proxy's) own id is kept when it is a plain token, replaced otherwise.
        traced = httpx.get(base + "/health", headers={"X-Request-ID": "trace-7f3a:1"})
        assert traced.headers["x-request-id"] == "trace-7f3a:1"
        odd = httpx.get(base + "/health", headers={"X-Request-ID": "a b" + "c" * 200})
        assert odd.headers["x-request-id"].startswith("req_")
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST", base + "/v1/audio/speech", json=BODY, headers={"X-Request-ID": "abc"}
            ) as streamed,
        ):
            engine.sessions.get(timeout=5).finish()
            assert streamed.headers["x-request-id"] == "abc" and len(streamed.read()) == 4800


def test_a_websocket_session_on_a_dead_engine_is_refused_at_once() -> None:
    """As /v1/audio/speech answers 503: an error event and close 1011, not session.created
    followed by an error at the first text."""
    import asyncio

    import websockets

    with serving(capacity=1.0) as (base, engine):
        engine._t3_failure = lambda: "EngineCore_0 was killed by signal 9"  # type: ignore[method-assign]

        async def connect() -> tuple[dict, int | None]:
            url = base.replace("http", "ws") + "/v1/audio/speech/stream"
            async with websockets.connect(url) as ws:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                with contextlib.suppress(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                return event, ws.close_code

        event, code = asyncio.run(connect())
        assert event["type"] == "error" and code == 1011, (event, code)
        assert event["error"]["type"] == "server_error"
        assert event["error"]["message"] == (
            "the T3 engine is dead (EngineCore_0 was killed by signal 9); close this "
            "ChatterboxTTS and load a new one (a server: restart it)"
        )
        assert httpx.get(base + "/health").json()["status"] == "dead" and engine.sessions.empty()
