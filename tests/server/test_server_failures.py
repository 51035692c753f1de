"""``serve`` when things go wrong: bad bodies get OpenAI-shaped errors, limits hold before the
bytes are read, an engine that dies mid-request never looks like success, and a killed server
leaves no engine process behind (issue: failure modes, round two)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import soundfile

from vllm_cpu_test_support.settings import CPU_ENV

API_KEY = "failure-key"
RATE = 24_000
UPLOAD_LIMIT = 100_000
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(chatterbox_checkpoint: Path, tmp_path_factory, launch_server) -> Iterator[dict]:
    log = tmp_path_factory.mktemp("failure-server") / "server.log"
    with launch_server(
        chatterbox_checkpoint, log,
        "--max-input-chars", "400", "--max-upload-bytes", str(UPLOAD_LIMIT),
        # A CPU's measured capacity is under one real-time stream: without the fixed cap, the
        # concurrent requests of these tests would queue behind each other.
        "--capacity", "cap",
        api_key=API_KEY, max_new_tokens=200,
    ) as running:  # fmt: skip
        yield running


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _is_openai_error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _voice_wav(seconds: float = 2.0) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    signal_ = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    buffer = io.BytesIO()
    soundfile.write(buffer, signal_.astype(np.float32), RATE, format="WAV")
    return buffer.getvalue()


def test_every_error_body_is_openai_shaped_and_says_what_is_wrong(server) -> None:
    base = server["base"]
    speech = base + "/v1/audio/speech"
    json_headers = {**_headers(), "Content-Type": "application/json"}
    cases = [
        (httpx.get(base + "/nowhere"), 404, "no route /nowhere"),
        (httpx.get(speech, headers=_headers()), 405, "GET is not allowed on /v1/audio/speech"),
        (httpx.post(speech, content=b'{"input": "\xff\xfe"}', headers=json_headers), 400,
         "not UTF-8"),
        (httpx.post(speech, content=b"[" * 5000 + b"]" * 5000, headers=json_headers), 400,
         "nested too deeply"),
        (httpx.post(speech, content=b'{"seed": ' + b"9" * 5000 + b"}", headers=json_headers),
         400, "number that is too long"),
        (httpx.post(speech, content=b'{"model": ', headers=json_headers), 400, "not valid JSON"),
        (httpx.post(base + "/v1/voices", headers=_headers(),
                    data={"name": "x", "file": "not a file"}), 400,
         "expected an audio file"),
        (httpx.post(base + "/v1/voices", headers=_headers(),
                    data={f"f{i}": "1" for i in range(1100)},
                    files={"file": ("v.wav", b"x", "audio/wav")}), 400, "Too many fields"),
        (httpx.post(base + "/v1/voices", headers=_headers(), data={"name": "junk"},
                    files={"file": ("junk.wav", b"not audio" * 50, "audio/wav")}), 400,
         "Format not recognised"),
        # curl -d without a JSON Content-Type sends a form: say what the body must be.
        (httpx.post(speech, headers=_headers(), data={"model": "chatterbox", "input": "Hi."}),
         400, "this one's Content-Type is application/x-www-form-urlencoded"),
        (httpx.post(speech, content=b"[]", headers=json_headers), 400,
         "the body must be a JSON object of the request's fields"),
        # A number control given a string: one message for the field, not one per accepted type.
        (httpx.post(speech, headers=_headers(), json={"input": "Hi.", "speed": "fast"}), 400,
         "speed: Input should be a valid number"),
        # JSON's NaN (Python's json reads it) is not a number out of range.
        (httpx.post(speech, headers=json_headers,
                    content=b'{"model": "chatterbox", "input": "Hi.", "temperature": NaN}'),
         400, "temperature: Input should be a finite number"),
    ]  # fmt: skip
    for response, status, words in cases:
        assert response.status_code == status, (words, response.text)
        error = _is_openai_error(response)
        assert words in error["message"], (words, error)
        for internal in ("JSON decode error", "UploadFile", "<_io.", "error parsing the body",
                         "valid dictionary or object", "speed.float", "speed.int"):  # fmt: skip
            assert internal not in error["message"], error
    # A voice name that breaks the rules is a 400 naming the field.
    named = httpx.post(base + "/v1/voices", headers=_headers(), data={"name": "default"},
                       files={"file": ("v.wav", _voice_wav(), "audio/wav")})  # fmt: skip
    assert named.status_code == 400 and _is_openai_error(named)["param"] == "name"


def _send_raw(port: int, head: bytes, body_pieces: Iterator[bytes]) -> tuple[bytes, int]:
    """Sends a request by hand; returns the response and how many body bytes went out before
    the server answered (or stopped reading)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head)
        connection.settimeout(0.05)
        response = b""
        for piece in body_pieces:
            with contextlib.suppress(TimeoutError):
                response += connection.recv(65536)
            if response:
                break
            try:
                connection.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        connection.settimeout(30)
        with contextlib.suppress(ConnectionResetError):
            while data := connection.recv(65536):  # the server closes after a 413
                response += data
    return response, sent


def test_oversized_bodies_are_refused_before_they_are_read(server) -> None:
    port = server["port"]
    declared = (
        b"POST /v1/voices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() +
        b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000000\r\n\r\n"
    )  # fmt: skip
    start = time.monotonic()
    response, _ = _send_raw(port, declared, iter([b"--b\r\n"] * 10))
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert time.monotonic() - start < 10
    chunked = (
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )  # fmt: skip
    piece = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    response, sent = _send_raw(port, chunked, iter([piece] * 8000))  # 500 MB if all were read
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"larger than" in response
    assert sent < 20_000_000, sent  # the server stopped reading at its limit (+ socket buffers)
    big = {"file": ("big.wav", b"\0" * (UPLOAD_LIMIT + 70_000), "audio/wav")}
    over = httpx.post(
        server["base"] + "/v1/voices", data={"name": "big"}, files=big, headers=_headers()
    )
    assert over.status_code == 413 and "--max-upload-bytes" in _is_openai_error(over)["message"]
    assert httpx.get(server["base"] + "/health").json()["status"] == "ok"


def test_uploading_a_voice_name_again_says_it_replaced_it(server) -> None:
    def upload() -> dict:
        response = httpx.post(
            server["base"] + "/v1/voices",
            data={"name": "twice"},
            files={"file": ("me.wav", _voice_wav(), "audio/wav")},
            headers=_headers(),
            timeout=120,
        )
        assert response.status_code == 201, response.text
        return response.json()

    assert upload()["replaced"] is False
    assert upload()["replaced"] is True
    newline = httpx.post(
        server["base"] + "/v1/voices",
        data={"name": "nl\n"},
        files={"file": ("me.wav", _voice_wav(), "audio/wav")},
        headers=_headers(),
    )
    assert newline.status_code == 400 and "not accepted" in _is_openai_error(newline)["message"]


# ------------------------------------------------------------------ round three (issue #24)
# This server: --max-new-tokens 200 and 60-character chunks derive max_model_len=304, whose
# prompts hold 265 text tokens (T3's table would take 2,048).


def test_a_word_too_long_for_the_engine_is_a_400_naming_input(server) -> None:
    word = {"model": "chatterbox", "input": "a" * 390, "max_new_tokens": 5}
    for extra in ({"response_format": "flac"}, {"response_format": "wav"},
                  {"response_format": "pcm", "stream_format": "sse"}):  # fmt: skip
        response = httpx.post(
            server["base"] + "/v1/audio/speech", json={**word, **extra}, headers=_headers(),
            timeout=120,
        )  # fmt: skip
        assert response.status_code == 400, (extra, response.text)
        error = _is_openai_error(response)
        assert error["param"] == "input", error
        assert "text needs 391 tokens after normalisation, at most 265 fit" in error["message"]
    assert httpx.get(server["base"] + "/health").json()["running_streams"] == 0
    server["log"].flush()
    assert "Exception in ASGI application" not in Path(server["log"].name).read_text()


def test_limits_name_the_field_in_our_words(server) -> None:
    speech = server["base"] + "/v1/audio/speech"
    body = {"model": "chatterbox", "input": "Hi.", "max_new_tokens": 4000}
    over = httpx.post(speech, json=body, headers=_headers())
    assert over.status_code == 400 and _is_openai_error(over)["param"] == "max_new_tokens"
    digits = httpx.post(
        speech, content=b'{"seed": ' + b"9" * 5000 + b"}",
        headers={**_headers(), "Content-Type": "application/json"},
    )  # fmt: skip
    message = _is_openai_error(digits)["message"]
    assert "more than 4,300 digits" in message and "sys." not in message, message


def _metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (every label set)."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    ]
    assert values, f"no {name} in /metrics"
    return sum(values)


def _abandoned(port: int, body: dict) -> socket.socket:
    """A speech request sent by hand, whose client then never reads (closed by the caller)."""
    data = json.dumps(body).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + API_KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(data)).encode() + b"\r\n\r\n" + data
    )  # fmt: skip
    return connection


def test_clients_that_go_away_free_the_engine_for_every_format(server) -> None:
    base = server["base"]
    text = "A sentence that keeps the engine busy for a while. " * 7  # seven 200-token chunks
    body = {"model": "chatterbox", "input": text.strip(), "max_new_tokens": 200}
    clients = [
        _abandoned(server["port"], {**body, "response_format": fmt})
        for fmt in ("flac", "wav", "mp3")
    ]
    clients.append(_abandoned(server["port"], {**body, "stream_format": "sse"}))
    deadline = time.monotonic() + 120
    while httpx.get(base + "/health").json()["running_streams"] < len(clients):
        assert time.monotonic() < deadline, "the requests did not start"
        time.sleep(0.2)
    time.sleep(1.0)  # decoding
    metrics = httpx.get(base + "/metrics").text
    assert _metric(metrics, "chatterbox_t3_unfinished_requests") > 0
    for client in clients:
        client.close()
    gauges = ("chatterbox_running_streams", "chatterbox_s3gen_open_streams",
              "chatterbox_t3_unfinished_requests", "vllm:num_requests_running",
              "vllm:num_requests_waiting")  # fmt: skip
    deadline = time.monotonic() + 5  # the text takes far longer to speak
    while True:
        metrics = httpx.get(base + "/metrics").text
        busy = {name: _metric(metrics, name) for name in gauges if _metric(metrics, name)}
        if not busy:
            break
        assert time.monotonic() < deadline, f"still busy 5 s after the clients left: {busy}"
        time.sleep(0.2)
    assert httpx.get(base + "/health").json()["running_streams"] == 0
    server["log"].flush()
    log = Path(server["log"].name).read_text()
    assert "Traceback" not in log and "CancelledError" not in log


def _engine_core(server) -> psutil.Process:
    (engine,) = [
        child
        for child in psutil.Process(server["process"].pid).children()
        if "resource_tracker" not in " ".join(child.cmdline())
    ]
    return engine


def test_an_engine_dying_mid_request_is_never_a_success(server) -> None:
    """Last test of the module that needs the engine: it kills it."""
    base = server["base"]
    body = {"model": "chatterbox", "input": "Keep the engine busy for a while, please.",
            "max_new_tokens": 200}  # fmt: skip
    outcomes: dict[str, object] = {}

    def stream(fmt: str) -> None:
        request = {**body, "response_format": fmt}
        try:
            with httpx.stream(
                "POST", base + "/v1/audio/speech", json=request, headers=_headers(), timeout=300
            ) as response:
                outcomes[fmt + " status"] = response.status_code
                outcomes[fmt] = response.read()
        except httpx.HTTPError as error:
            outcomes[fmt] = error

    def sse() -> None:
        request = {**body, "response_format": "pcm", "stream_format": "sse"}
        with httpx.stream(
            "POST", base + "/v1/audio/speech", json=request, headers=_headers(), timeout=300
        ) as response:
            outcomes["sse"] = [
                json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")
            ]

    threads = [
        threading.Thread(target=stream, args=(fmt,)) for fmt in ("pcm", "wav", "mp3", "flac")
    ]
    threads.append(threading.Thread(target=sse))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while httpx.get(base + "/health").json().get("running_streams", 0) < 5:
        assert time.monotonic() < deadline, "the five requests did not start"
        time.sleep(0.2)
    time.sleep(2)  # some audio is out on the streamed ones
    _engine_core(server).send_signal(signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    for fmt in ("pcm", "wav", "mp3"):  # cut off: the client's read fails, it gets no short file
        assert isinstance(outcomes[fmt], httpx.RemoteProtocolError), (fmt, outcomes[fmt])
    assert outcomes["flac status"] == 503, outcomes["flac status"]  # sent once complete: a 5xx
    error = json.loads(outcomes["flac"])["error"]  # type: ignore[arg-type]
    assert error["type"] == "server_error" and "killed by signal 9" in error["message"], error
    events = outcomes["sse"]
    assert events[-1]["type"] == "error", events[-1]  # type: ignore[index]
    assert events[-1]["error"]["type"] == "server_error", events[-1]  # type: ignore[index]
    assert httpx.get(base + "/health").status_code == 503
    server["log"].flush()
    assert "Traceback" not in Path(server["log"].name).read_text()


def test_a_killed_server_leaves_no_engine_process(
    chatterbox_checkpoint: Path, tmp_path: Path, launch_server
) -> None:
    with launch_server(chatterbox_checkpoint, tmp_path / "server.log", api_key=API_KEY) as served:
        descendants = psutil.Process(served["process"].pid).children(recursive=True)
        assert descendants, "serve started no engine process"
        served["process"].send_signal(signal.SIGKILL)
        served["process"].wait(timeout=30)
        gone, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]


def _serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatterbox_vllm.cli", "serve", *flags],
        capture_output=True, text=True, timeout=300, env={**os.environ, **CPU_ENV},
    )  # fmt: skip


def test_bad_serve_flags_fail_before_the_model_loads(
    chatterbox_checkpoint: Path, tmp_path: Path
) -> None:
    model = ["--model-dir", str(chatterbox_checkpoint), "--device", "cpu"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        a_file = tmp_path / "file"
        a_file.write_text("x")
        cases = [
            (["--port", port], "another process uses that port"),
            (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' is not"),
            (["--host", "192.0.2.1"], "the address is not one of this machine's"),
            (["--voices-dir", str(a_file)], "is a file; give a directory"),
            (
                ["--voices-dir", str(a_file / "voices")],
                f"--voices-dir {a_file / 'voices'}: cannot create the directory ({a_file} is a "
                "file, not a directory)",
            ),
            (["--vocoder", "nope"], "--vocoder 'nope' is not available; use one of"),
            (["--drain-seconds", "-1"], "drain_seconds must be a number of seconds >= 0"),
            (["--model-name", ""], "model_name must not be empty"),
        ]
        for flags, message in cases:
            result = _serve(*model, *flags)
            assert result.returncode == 1, (flags, result.stderr)
            assert message in result.stderr, (flags, result.stderr)
            assert "Traceback" not in result.stderr and "loading" not in result.stderr
