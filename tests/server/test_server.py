"""``chatterbox-vllm serve`` as a client sees it: a real server process on 127.0.0.1 with a tiny
random checkpoint on the CPU, called with the official ``openai`` client and plain HTTP.

Random weights never emit the stop token, so every text chunk runs to ``max_new_tokens``: a short
input asked for N tokens gives N * 960 samples (one mel frame less for an odd prompt mel)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile

API_KEY = "test-key-123"
SAMPLES_PER_TOKEN = 960
RATE = 24_000
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(chatterbox_checkpoint: Path, tmp_path_factory, launch_server) -> Iterator[dict]:
    voices = tmp_path_factory.mktemp("server-voices")
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    with launch_server(
        chatterbox_checkpoint, log,
        "--voices-dir", str(voices), "--max-input-chars", "400", "--max-upload-bytes", "2000000",
        "--max-concurrent-streams", "20", "--capacity", "cap", "--over-capacity", "reject",
        api_key=API_KEY,
    ) as running:  # fmt: skip
        yield {**running, "voices": voices}


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["base"] + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _decode(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    if fmt in ("wav", "flac", "opus", "mp3"):
        try:
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
            assert rate == RATE
            return audio
        except soundfile.LibsndfileError:
            pass
    with av.open(io.BytesIO(data)) as container:
        return np.concatenate(
            [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
        )


def _expected(tokens: int) -> tuple[int, int]:
    return tokens * SAMPLES_PER_TOKEN - 480, tokens * SAMPLES_PER_TOKEN


def _metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


def _sse(server, body: dict) -> list[dict]:
    events = []
    with httpx.stream(
        "POST", server["base"] + "/v1/audio/speech", json=body, headers=_headers(), timeout=300
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


@pytest.fixture(scope="module")
def reference(server) -> tuple[int, bytes]:
    """Speech tokens (from the SSE usage) and PCM bytes of one seeded request."""
    body = {"model": "chatterbox", "input": "Hello from the server.", "response_format": "pcm",
            "stream_format": "sse", "max_new_tokens": 20, "seed": 3}  # fmt: skip
    events = _sse(server, body)
    tokens = events[-1]["usage"]["output_tokens"]
    return tokens, b"".join(base64.b64decode(e["audio"]) for e in events[:-1])


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "opus", "aac"])
def test_openai_client_gets_audio_of_the_expected_length(client, reference, fmt: str) -> None:
    tokens, pcm = reference
    low, high = _expected(tokens)
    assert 0 < tokens <= 20 and low <= len(pcm) // 2 <= high  # 960 samples per speech token
    response = client.audio.speech.create(
        model="chatterbox",
        voice="default",
        input="Hello from the server.",
        response_format=fmt,
        extra_body={"max_new_tokens": 20, "seed": 3},
    )
    audio = _decode(response.content, fmt)
    if fmt in ("wav", "pcm", "flac"):  # lossless: the same samples as the SSE stream
        assert np.array_equal(np.round(audio * 32768).astype(np.int16), np.frombuffer(pcm, "<i2"))
    else:  # codecs pad by up to a frame or two
        assert low - 2400 <= audio.size <= high + 4800, audio.size
    assert np.abs(audio).max() > 0


def test_speed_stretches_the_audio_and_one_leaves_it_untouched(client, reference) -> None:
    _, pcm = reference
    samples = np.frombuffer(pcm, "<i2")
    for speed in (1.0, 2.0):
        response = client.audio.speech.create(
            model="chatterbox",
            voice="default",
            input="Hello from the server.",
            response_format="pcm",
            speed=speed,
            extra_body={"max_new_tokens": 20, "seed": 3},
        )
        audio = np.frombuffer(response.content, "<i2")
        if speed == 1.0:
            assert np.array_equal(audio, samples)  # no processing at all
        else:
            assert audio.size == round(samples.size / speed)


def test_streaming_response_and_sse_events(client, server) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="default",
        input="Streaming, please.",
        response_format="pcm",
        extra_body={"max_new_tokens": 24, "seed": 5},
    ) as response:
        pieces = list(response.iter_bytes())
    streamed = b"".join(pieces)
    body = {"model": "chatterbox", "input": "Streaming, please.", "response_format": "pcm",
            "stream_format": "sse", "max_new_tokens": 24, "seed": 5}  # fmt: skip
    events = _sse(server, body)
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    low, high = _expected(events[-1]["usage"]["output_tokens"])
    assert low <= len(streamed) // 2 <= high
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio == streamed  # same seed, same tokens, same samples


def _voice_wav(seconds: float = 3.0) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    signal = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    buffer = io.BytesIO()
    soundfile.write(buffer, signal.astype(np.float32), RATE, format="WAV")
    return buffer.getvalue()


def test_uploaded_voice_is_listed_used_persisted_and_deleted(client, server) -> None:
    base = server["base"]
    files = {"file": ("me.wav", _voice_wav(), "audio/wav")}
    created = httpx.post(
        base + "/v1/voices", data={"name": "me"}, files=files, headers=_headers(), timeout=120
    )
    assert created.status_code == 201, created.text
    names = [v["name"] for v in httpx.get(base + "/v1/voices", headers=_headers()).json()["data"]]
    assert names == ["default", "me"]
    assert (server["voices"] / "me.pt").is_file()  # survives a restart (loaded at start-up)
    response = client.audio.speech.create(
        model="chatterbox",
        voice="me",
        input="My own voice.",
        response_format="wav",
        extra_body={"max_new_tokens": 12},
    )
    assert _decode(response.content, "wav").size > 0
    assert httpx.delete(base + "/v1/voices/me", headers=_headers()).status_code == 200
    assert not (server["voices"] / "me.pt").exists()
    assert httpx.delete(base + "/v1/voices/me", headers=_headers()).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"input": ""}, 400, "input", "empty"),
        ({"input": "x" * 401}, 413, "input", "at most 400"),
        ({"voice": "nobody"}, 400, "voice", "known voices: default"),
        ({"response_format": "ogg"}, 400, "response_format", "wav, pcm, flac, mp3, opus, aac"),
        ({"cfg_weight": 7}, 400, "cfg_weight", "less than or equal to 3"),
        ({"temperature": "hot"}, 400, "temperature", "valid number"),
        ({"seed": 1.5}, 400, "seed", "valid integer"),
        ({"speed": 4.5}, 400, "speed", "less than or equal to 4"),
        ({"speed": 0.2}, 400, "speed", "greater than or equal to 0.25"),
        ({"model": "whisper-1"}, 400, "model", "unknown model"),
        ({"bogus": 1}, 400, "bogus", "Extra inputs are not permitted"),
        (
            {"language": "xx"},
            400,
            "language",
            "must be one of ar, da, de, el, en, es, fi, fr, he, hi, it, ja, ko, ms, nl, no, pl, "
            "pt, ru, sv, sw, tr, zh (",
        ),
        ({"language": "fr"}, 400, "language", "'fr' (French) needs the multilingual model"),
        ({"language": 3}, 400, "language", "valid string"),
        ({"timestamps": True}, 400, "timestamps", "multilingual model only"),
    ],
)
def test_bad_requests_get_their_status_and_name_the_field(
    client, server, body, status, param, words
) -> None:
    request = {"model": "chatterbox", "input": "Fine.", "voice": "default", **body}
    response = httpx.post(
        server["base"] + "/v1/audio/speech", json=request, headers=_headers(), timeout=60
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    # ...and the next good request still succeeds.
    ok = client.audio.speech.create(model="chatterbox", voice="default", input="Still here.",
                                    response_format="pcm", extra_body={"max_new_tokens": 4})  # fmt: skip
    assert len(ok.content) > 0


def test_api_key_and_upload_limits(server) -> None:
    base = server["base"]
    body = {"model": "chatterbox", "input": "Hi.", "voice": "default"}
    assert httpx.post(base + "/v1/audio/speech", json=body).status_code == 401
    wrong = httpx.post(
        base + "/v1/audio/speech", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    big = {"file": ("big.wav", b"\0" * 2_000_001, "audio/wav")}
    assert (
        httpx.post(
            base + "/v1/voices", data={"name": "big"}, files=big, headers=_headers()
        ).status_code
        == 413
    )
    junk = {"file": ("junk.wav", b"this is not audio at all" * 100, "audio/wav")}
    bad = httpx.post(
        base + "/v1/voices", data={"name": "junk"}, files=junk, headers=_headers(), timeout=60
    )
    assert bad.status_code == 400 and "could not decode" in bad.json()["error"]["message"]
    bad_name = httpx.post(
        base + "/v1/voices", data={"name": "../x"}, files=junk, headers=_headers()
    )
    assert bad_name.status_code == 400 and "not accepted" in bad_name.json()["error"]["message"]
    assert httpx.get(base + "/health").json()["status"] == "ok"
    assert httpx.get(base + "/health").json()["model"] == "english"  # the checkpoint's model
    (listed,) = httpx.get(base + "/v1/models", headers=_headers()).json()["data"]
    assert (listed["chatterbox_model"], listed["languages"]) == ("english", ["en"])
    assert (
        httpx.get(base + "/v1/models", headers=_headers()).json()["data"][0]["id"] == "chatterbox"
    )


def test_disconnects_abort_t3_and_the_limit_answers_429(client, server) -> None:
    base = server["base"]
    long_text = "A sentence that keeps the engine busy for a while. " * 7
    body = {"model": "chatterbox", "input": long_text, "response_format": "pcm"}

    def short_request() -> None:
        client.audio.speech.create(model="chatterbox", voice="default", input="Idle.",
                                   response_format="pcm", extra_body={"max_new_tokens": 4})  # fmt: skip

    # The idle KV usage (vLLM keeps one reserved null block) after a request ran to its end.
    short_request()
    idle_usage = _metric(base, "vllm:gpu_cache_usage_perc")
    assert idle_usage < 0.05
    clients, streams = [], []
    try:
        # Hold streams open (not reading them) until the server counts 20 running; a stream
        # whose every chunk meets an early stop token may end meanwhile, so count, don't assume.
        while httpx.get(base + "/health").json()["running_streams"] < 20 and len(streams) < 40:
            clients.append(httpx.Client(timeout=300))
            streams.append(
                clients[-1].stream("POST", base + "/v1/audio/speech", json=body, headers=_headers())
            )
            assert streams[-1].__enter__().status_code == 200
        over = httpx.post(base + "/v1/audio/speech", json=body, headers=_headers(), timeout=60)
        assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limit_error"
    finally:
        for stream, c in zip(streams, clients):
            stream.__exit__(None, None, None)  # disconnect mid-stream
            c.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (
            _metric(base, "chatterbox_running_streams") == 0
            and _metric(base, "chatterbox_t3_unfinished_requests") == 0
        ):
            break
        time.sleep(1)
    else:
        raise AssertionError("disconnected streams were not aborted")
    # One short request afterwards: vLLM's last scheduler stats then show the KV cache back at
    # its idle value (the aborted streams' blocks were freed).
    short_request()
    assert _metric(base, "vllm:gpu_cache_usage_perc") == idle_usage
    assert _metric(base, "vllm:num_requests_running") == 0.0


def test_concurrent_streams_complete_and_memory_stays_flat(client, server) -> None:
    import psutil

    def one(seed: int, out: list) -> None:
        with client.audio.speech.with_streaming_response.create(
            model="chatterbox",
            voice="default",
            input=f"Stream number {seed}.",
            response_format="pcm",
            extra_body={"max_new_tokens": 16, "seed": seed},
        ) as response:
            out.append(len(response.read()) // 2)

    process = psutil.Process(server["process"].pid)
    rss = []
    for round_index in range(3):
        results: list[int] = []
        threads = [
            threading.Thread(target=one, args=(round_index * 100 + i, results)) for i in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        # Each stream's audio is whole: 960 samples per token (an odd prompt mel eats 480).
        assert len(results) == 16 and all(n > 0 and n % 480 == 0 for n in results), results
        rss.append(process.memory_info().rss)
    assert rss[2] < rss[1] * 1.10, rss  # no per-request leak once warm


def test_first_audio_latency_buffers_and_captures_are_measured(client, server) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="chatterbox",
        voice="default",
        input="Measure me.",
        response_format="pcm",
        extra_body={"max_new_tokens": 40, "seed": 4},
    ) as response:
        assert len(response.read()) > 0
    text = httpx.get(server["base"] + "/metrics").text
    assert "chatterbox_first_audio_seconds_bucket" in text
    assert _metric(server["base"], "chatterbox_audio_seconds_total") > 0
    # Every finished stream reports the least audio its player had buffered.
    assert _metric(server["base"], "chatterbox_stream_min_buffer_seconds_count") > 0
    # Every streamed window's timeline is counted (first audio and later windows), admission
    # reports its queue, and /health whether the server is at capacity.
    assert _metric(server["base"], "chatterbox_windows_total") > 0
    assert "chatterbox_window_lateness_seconds_bucket" in text
    assert _metric(server["base"], "chatterbox_queued_streams") == 0
    assert httpx.get(server["base"] + "/health").json()["at_capacity"] is False
    # Nothing is captured on the request path (on a GPU the set is captured at start-up).
    assert _metric(server["base"], "chatterbox_s3gen_graph_captures_after_startup_total") == 0
    assert _metric(server["base"], "chatterbox_s3gen_cold_shapes_after_startup_total") == 0


def test_voices_survive_a_restart(chatterbox_checkpoint: Path, tmp_path: Path) -> None:
    """A voice stored in the voices directory is there again for the next server process."""
    from types import SimpleNamespace

    from chatterbox_vllm import Voice, VoiceConditionals
    from chatterbox_vllm.server.voices import VoiceStore

    voice = Voice.from_conditionals(VoiceConditionals.load(chatterbox_checkpoint / "conds.pt"))
    engine = SimpleNamespace(default_voice=voice)
    VoiceStore(engine, tmp_path).add("narrator", voice)  # type: ignore[arg-type]
    restarted = VoiceStore(engine, tmp_path)  # type: ignore[arg-type]
    assert restarted.names() == ["default", "narrator"]
    loaded = restarted.get("narrator")
    assert loaded.content_hash == voice.content_hash
    assert torch_equal(loaded.t3.speaker_embedding, voice.t3.speaker_embedding)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_sigterm_lets_running_streams_finish_then_exits(server) -> None:
    """Last test of the module: it stops the server."""
    import signal

    base = server["base"]
    body = {"model": "chatterbox", "input": "Finish me before you go. " * 3, "response_format": "pcm",
            "stream_format": "sse", "max_new_tokens": 40}  # fmt: skip
    events = []
    with httpx.stream(
        "POST", base + "/v1/audio/speech", json=body, headers=_headers(), timeout=300
    ) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                break
        server["process"].send_signal(signal.SIGTERM)
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["type"] == "speech.audio.done"  # the running stream was drained, not cut
    assert server["process"].wait(timeout=120) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/health", timeout=5)
