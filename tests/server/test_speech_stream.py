"""``WS /v1/audio/speech/stream`` as a client sees it: a real ``serve`` process (tiny random
checkpoint, CPU) driven with the official ``websockets`` client.

Random weights never emit the stop token, so every text chunk runs to its token cap; tests keep
``max_new_tokens`` small. The server's stream limits are set low so each limit is reached in
seconds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

API_KEY = "stream-key-7"
RATE = 24_000
SESSION_SECONDS = 6
IDLE_SECONDS = 2
COMMIT_AFTER_SECONDS = 1
BUFFER_CHARS = 200
pytestmark = pytest.mark.timeout(600)

# Two sentences that /v1/audio/speech also splits in two (together longer than the server's
# --max-chunk-chars 60): the stream plans the same chunks, with the same seeds.
TEXT = "The first sentence is said right here. Then a second one follows it!"
CONTROLS = {"seed": 3, "max_new_tokens": 10, "cfg_weight": 0.4}


@pytest.fixture(scope="module")
def server(chatterbox_checkpoint: Path, tmp_path_factory, launch_server) -> Iterator[dict]:
    log = tmp_path_factory.mktemp("stream-server-log") / "server.log"
    with launch_server(
        chatterbox_checkpoint, log,
        "--max-concurrent-streams", "2", "--capacity", "cap", "--over-capacity", "reject",
        "--stream-max-buffer-chars", str(BUFFER_CHARS),
        "--stream-max-session-seconds", str(SESSION_SECONDS),
        "--stream-max-idle-seconds", str(IDLE_SECONDS),
        "--stream-commit-after-seconds", str(COMMIT_AFTER_SECONDS),
        api_key=API_KEY,
    ) as running:  # fmt: skip
        yield running


def _url(server: dict, query: str = "") -> str:
    return f"ws://127.0.0.1:{server['port']}/v1/audio/speech/stream{query}"


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _connect(server: dict, **kwargs: Any) -> Any:
    return websockets.connect(_url(server), additional_headers=_auth(), **kwargs)


async def _send(ws: Any, kind: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


async def _next(ws: Any, *kinds: str) -> dict:
    """The next event of one of ``kinds`` (audio deltas of other kinds are skipped)."""
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if event["type"] in kinds:
            return event


async def _turn_audio(ws: Any) -> tuple[bytes, list[dict], dict]:
    """Reads one turn to its ``speech.audio.done``: the audio, the deltas, the done event."""
    audio, deltas = b"", []
    while True:
        event = await _next(ws, "speech.audio.delta", "speech.audio.done", "error")
        assert event["type"] != "error", event
        if event["type"] == "speech.audio.done":
            return audio, deltas, event
        audio += base64.b64decode(event["audio"])
        deltas.append(event)


def _metric(server: dict, name: str) -> float:
    for line in httpx.get(server["base"] + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


def _assert_idle(server: dict, running_sessions: int = 0) -> None:
    """Every gauge of work back to its idle value (T3 requests, S3Gen lanes, streams)."""
    deadline = time.monotonic() + 30
    names = ("chatterbox_s3gen_open_streams", "chatterbox_t3_unfinished_requests")
    while time.monotonic() < deadline:
        values = [_metric(server, name) for name in names]
        running = _metric(server, "chatterbox_running_streams")
        if values == [0, 0] and running == running_sessions:
            return
        time.sleep(0.2)
    raise AssertionError(f"not idle: {dict(zip(names, values))}, running streams {running}")


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.int32)


def test_deltas_split_anywhere_speak_what_the_speech_endpoint_says(server) -> None:
    # Split every 3 characters (inside words), with "café" written as "cafe" + a combining
    # accent in the next delta, and a surrogate pair cut between two JSON messages.
    text = TEXT.replace("right", "cafe\u0301")
    reference = httpx.post(
        server["base"] + "/v1/audio/speech",
        headers=_auth(),
        json={"model": "chatterbox", "input": text, "response_format": "pcm", **CONTROLS},
        timeout=300,
    )
    assert reference.status_code == 200

    async def main() -> tuple[bytes, list[dict], dict, dict]:
        async with _connect(server) as ws:
            created = await _next(ws, "session.created")
            assert created["session"]["response_format"] == "pcm"
            await _send(ws, "session.update", session={"response_format": "pcm", **CONTROLS})
            updated = await _next(ws, "session.updated", "error")
            assert updated["type"] == "session.updated"
            assert updated["session"]["seed"] == 3
            for start in range(0, len(text), 3):
                await _send(ws, "input_text_buffer.append", delta=text[start : start + 3])
            await _send(ws, "input_text_buffer.commit")
            audio, deltas, done = await _turn_audio(ws)
            # A second turn in the same session: an emoji cut inside its UTF-16 pair (the
            # English tokenizer has no emoji: the error names the whole character).
            await ws.send('{"type": "input_text_buffer.append", "delta": "Look \\ud83d"}')
            await ws.send('{"type": "input_text_buffer.append", "delta": "\\ude00 here. "}')
            error = await _next(ws, "error")
            failed = await _next(ws, "speech.audio.done")
            assert failed["status"] == "failed"
            assert error["turn_id"] == failed["turn_id"]  # which turn the error ended
            # The client commits the text it sent (it may not have seen the error yet): that
            # ends the failed turn without another error, and the next turn speaks.
            await _send(ws, "input_text_buffer.commit")
            await _send(ws, "input_text_buffer.append", delta="Fine.")
            await _send(ws, "input_text_buffer.commit")
            after = [await _next(ws, "error", "input_text_buffer.committed", "speech.audio.done")]
            while after[-1]["type"] != "speech.audio.done":
                after.append(await _next(ws, "error", "speech.audio.done"))
            assert [e["type"] for e in after] == [
                "input_text_buffer.committed",
                "speech.audio.done",
            ]
            assert after[-1]["status"] == "completed", after
            return audio, deltas, done, error

    audio, deltas, done, error = asyncio.run(main())
    streamed, expected = _pcm(audio), _pcm(reference.content)
    assert streamed.size == expected.size > 0
    # Equal within one 16-bit step: S3Gen batches the windows of lanes that are ready together,
    # and a batch's float32 reductions differ in the last bit (/v1/audio/speech differs from
    # itself by as much between two calls).
    assert np.abs(streamed - expected).max() <= 1
    # Each delta names the sentence it speaks and where it lies in the text sent.
    spoken = [(d["text"], text[d["text_start"] : d["text_end"]].strip()) for d in deltas]
    assert [s for s, _ in dict.fromkeys(spoken)] == [
        "The first sentence is said cafe here.",
        "Then a second one follows it!",
    ]
    assert done["status"] == "completed"
    assert done["usage"]["characters"] == len(text)
    assert done["usage"]["audio_seconds"] == pytest.approx(streamed.size / RATE, abs=1e-3)
    assert (
        "\U0001f600" in error["error"]["message"] and "surrogate" not in error["error"]["message"]
    )
    _assert_idle(server)


def test_clear_and_close_stop_a_turn_at_once_and_the_session_goes_on(server) -> None:
    # Long enough that the turn cannot end before the clear arrives (on a CPU the tiny model
    # speaks a sentence of 60 tokens in well under a second).
    long_text = "A long sentence keeps the engine busy for a good while. " * 20

    async def main() -> None:
        async with _connect(server) as ws:
            await _send(ws, "session.update", session={"max_new_tokens": 60, "seed": 1})
            await _next(ws, "session.updated")
            await _send(ws, "input_text_buffer.append", delta=long_text)
            first = await _next(ws, "speech.audio.delta")  # audio before any commit
            assert first["text"] == long_text.split(". ")[0] + "."
            started = time.monotonic()
            await _send(ws, "input_text_buffer.clear")
            done = await _next(ws, "speech.audio.done")
            assert done["status"] == "interrupted"
            assert done["usage"]["speech_tokens"] < 20 * 60  # T3 was stopped before its end
            await _next(ws, "input_text_buffer.cleared")
            assert time.monotonic() - started < 5
            # T3 aborted, lanes dropped; the session still holds its slot.
            await asyncio.to_thread(_assert_idle, server, 1)
            # The session goes on: a new turn is spoken to its end.
            await _send(ws, "session.update", session={"max_new_tokens": 6})
            await _next(ws, "session.updated")
            await _send(ws, "input_text_buffer.append", delta="Still here.")
            await _send(ws, "input_text_buffer.commit")
            audio, _, done = await _turn_audio(ws)
            assert done["status"] == "completed" and len(audio) > 0
            # Closing the socket mid-turn stops it too.
            await _send(ws, "input_text_buffer.append", delta=long_text)
            await _send(ws, "input_text_buffer.commit")
            await _next(ws, "speech.audio.delta")

    asyncio.run(main())
    _assert_idle(server)


def test_session_update_is_checked_like_the_speech_endpoint(server) -> None:
    bad = [
        ({"cfg_weight": 5}, "cfg_weight"),
        ({"voice": "nobody"}, "voice"),
        ({"response_format": "mp3"}, "response_format"),
        ({"model": "gpt-5"}, "model"),
        ({"max_new_tokens": 100000}, "max_new_tokens"),
        ({"temperature": "hot"}, "temperature"),
    ]

    async def main() -> list[dict]:
        errors = []
        async with _connect(server) as ws:
            await _next(ws, "session.created")
            for session, _ in bad:
                await _send(ws, "session.update", session=session)
                errors.append(await _next(ws, "error", "session.updated"))
            await ws.send("not json")
            errors.append(await _next(ws, "error"))
            await ws.send("[" * 100_000)  # deeper than json's parser recurses
            errors.append(await _next(ws, "error"))
            await _send(ws, "input_text_buffer.speak")
            errors.append(await _next(ws, "error"))
            await _send(ws, "input_text_buffer.commit")  # nothing buffered
            errors.append(await _next(ws, "error"))
            # The session still works after every error, with its settings unchanged.
            await _send(ws, "session.update", session={"max_new_tokens": 4})
            assert (await _next(ws, "session.updated", "error"))["type"] == "session.updated"
        return errors

    errors = asyncio.run(main())
    for (_, param), event in zip(bad, errors):
        assert event["type"] == "error" and event["error"]["param"] == param, event
        assert event["error"]["type"] == "invalid_request_error"
    # The same words as /v1/audio/speech for the same bad field.
    http = httpx.post(
        server["base"] + "/v1/audio/speech",
        headers=_auth(),
        json={"model": "chatterbox", "input": "Hi.", "cfg_weight": 5},
        timeout=60,
    )
    assert http.status_code == 400
    assert http.json()["error"]["message"] == errors[0]["error"]["message"]
    assert "not valid JSON" in errors[len(bad)]["error"]["message"]
    deep = errors[len(bad) + 1]["error"]
    assert deep["type"] == "invalid_request_error" and deep["code"] == "invalid_event"
    assert "nested too deeply" in deep["message"]
    assert "input_text_buffer.append" in errors[len(bad) + 2]["error"]["message"]
    assert errors[len(bad) + 3]["error"]["code"] == "input_text_buffer_empty"
    _assert_idle(server)


def test_api_key_is_required_as_on_http(server) -> None:
    async def refused(**kwargs: Any) -> tuple[dict, int | None]:
        async with websockets.connect(**kwargs) as ws:
            event = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return event, ws.close_code

    async def main() -> None:
        for kwargs in (
            {"uri": _url(server)},
            {"uri": _url(server), "additional_headers": {"Authorization": "Bearer wrong"}},
            {"uri": _url(server, "?api_key=wrong")},
        ):
            event, code = await refused(**kwargs)
            assert event["error"]["type"] == "authentication_error" and code == 1008
        # Browsers cannot set headers: the key as a query parameter.
        async with websockets.connect(_url(server, f"?api_key={API_KEY}")) as ws:
            assert (await _next(ws, "session.created", "error"))["type"] == "session.created"

    asyncio.run(main())
    _assert_idle(server)


def test_limits_are_clear_error_events(server) -> None:
    async def main() -> None:
        # Buffered text without a sentence end: the delta beyond the limit is refused.
        async with _connect(server) as ws:
            # (A run-on text with spaces is cut at the chunk size; one long "word" cannot be.)
            await _send(ws, "input_text_buffer.append", delta="x" * (BUFFER_CHARS - 10))
            await _send(ws, "input_text_buffer.append", delta="y" * 20)
            error = await _next(ws, "error")
            assert error["error"]["code"] == "buffer_limit" and error["error"]["param"] == "delta"
            await _send(ws, "input_text_buffer.clear")
            await _next(ws, "input_text_buffer.cleared")
            # Text that stops coming is spoken after --stream-commit-after-seconds.
            await _send(ws, "session.update", session={"max_new_tokens": 4})
            await _next(ws, "session.updated")
            await _send(ws, "input_text_buffer.append", delta="No commit comes")
            committed = await _next(ws, "input_text_buffer.committed")
            _, _, done = await _turn_audio(ws)
            assert committed["turn_id"] == done["turn_id"] and done["status"] == "completed"
            # Sessions count against --max-concurrent-streams (2) with HTTP streams.
            async with _connect(server) as second:
                await _next(second, "session.created")
                async with _connect(server) as third:
                    event = json.loads(await third.recv())
                    assert event["error"]["type"] == "rate_limit_error"
                    with pytest.raises(websockets.ConnectionClosed):
                        await third.recv()
                over = httpx.post(
                    server["base"] + "/v1/audio/speech",
                    headers=_auth(),
                    json={"model": "chatterbox", "input": "Hi."},
                    timeout=60,
                )
                assert over.status_code == 429
        # An idle session is closed after --stream-max-idle-seconds.
        async with _connect(server) as ws:
            await _next(ws, "session.created")
            started = time.monotonic()
            idle = await _next(ws, "error")
            assert idle["error"]["code"] == "session_idle"
            assert IDLE_SECONDS - 0.5 < time.monotonic() - started < IDLE_SECONDS + 2
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        # A busy session is closed at --stream-max-session-seconds.
        async with _connect(server) as ws:
            started = time.monotonic()

            async def keep_busy() -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await _send(ws, "session.update", session={})
                        await asyncio.sleep(0.5)

            busy = asyncio.ensure_future(keep_busy())
            event = await _next(ws, "error")
            elapsed = time.monotonic() - started
            busy.cancel()
            assert event["error"]["code"] == "session_expired"
            assert SESSION_SECONDS - 0.5 < elapsed < SESSION_SECONDS + 2

    asyncio.run(main())
    _assert_idle(server)


def test_stream_limit_flags_are_checked_before_anything_loads() -> None:
    import argparse

    from chatterbox_vllm.errors import InvalidParameterError
    from chatterbox_vllm.server.settings import add_server_arguments, settings_from_namespace

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    for flags, message in [
        (
            ["--stream-max-idle-seconds", "0"],
            "stream_max_idle_seconds must be a number of seconds > 0",
        ),
        (["--stream-commit-after-seconds", "inf"], "stream_commit_after_seconds must be"),
        (["--stream-max-buffer-chars", "0"], "stream_max_buffer_chars must be a positive int"),
    ]:
        with pytest.raises(InvalidParameterError, match=message):
            settings_from_namespace(parser.parse_args(flags))
    settings = settings_from_namespace(parser.parse_args(["--stream-max-session-seconds", "30"]))
    assert settings.stream_max_session_seconds == 30.0
