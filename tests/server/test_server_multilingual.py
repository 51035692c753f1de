"""``serve`` with a multilingual checkpoint: the model it reports, the ``language`` field, and a
400 naming the field (and listing the 23 languages) for an unknown one, after which it keeps
serving. Tiny random checkpoint written by ``make_random_checkpoint(model="multilingual")``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from chatterbox_vllm.checkpoint import make_random_checkpoint

API_KEY = "mtl-key"
SAMPLES_PER_TOKEN = 960
LANGUAGES = "ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv sw tr zh".split()
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tmp_path_factory, launch_server) -> Iterator[dict]:
    checkpoint = make_random_checkpoint(
        tmp_path_factory.mktemp("mtl-server-ckpt"), "tiny", seed=1, model="multilingual"
    )
    log = tmp_path_factory.mktemp("mtl-server-log") / "server.log"
    with launch_server(checkpoint, log, api_key=API_KEY) as running:
        yield running


def _speech(server: dict, **body: object) -> httpx.Response:
    request = {"model": "chatterbox", "input": "Bonjour.", "voice": "default",
               "response_format": "pcm", "max_new_tokens": 4, **body}  # fmt: skip
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.post(
        server["base"] + "/v1/audio/speech", json=request, headers=headers, timeout=300
    )


def test_the_server_reports_the_multilingual_model(server) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    (model,) = httpx.get(server["base"] + "/v1/models", headers=headers).json()["data"]
    assert model["chatterbox_model"] == "multilingual" and model["languages"] == LANGUAGES
    assert httpx.get(server["base"] + "/health").json()["model"] == "multilingual"
    server["log"].seek(0)
    assert "serving the multilingual model" in server["log"].read()


def test_language_field_speaks_and_bad_ids_are_400(server) -> None:
    spoken = _speech(server, language="fr", seed=3)
    assert spoken.status_code == 200, spoken.text
    assert 0 < len(spoken.content) // 2 <= 4 * SAMPLES_PER_TOKEN  # 16-bit samples
    bad = _speech(server, language="xx")
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "language"
    assert "one of " + ", ".join(LANGUAGES) in error["message"] and "'xx'" in error["message"]
    assert _speech(server, language="de").status_code == 200  # still serving


def _metric(server: dict, name: str) -> float:
    text = httpx.get(server["base"] + "/metrics").text
    (value,) = [
        float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
    ]
    return value


def test_text_too_long_for_the_engine_is_a_400_and_leaves_no_lane_open(server) -> None:
    # This engine holds 185 text tokens per chunk (--max-new-tokens 120: max_model_len=224 less
    # the conditioning, two start-of-speech tokens and one position to generate).
    arabic = _speech(server, input="ب" * 2000, language="ar", response_format="flac")
    # A chunk that is fine, then one the front end refuses (longer than T3's 2,048 positions).
    second = _speech(server, input="Bonjour. " + "a" * 2100, language="fr")
    for response in (arabic, second):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (
            error["param"] == "input"
            and "tokens after normalisation, at most" in (error["message"])
        ), error
    assert _metric(server, "chatterbox_s3gen_open_streams") == 0
    assert _speech(server, language="fr").status_code == 200  # still serving
    assert _metric(server, "chatterbox_s3gen_open_streams") == 0


WORDS_TEXT = "Bonjour tout le monde, ici Paris."


def test_word_timestamps_as_json_and_as_sse_events(server) -> None:
    """``timestamps: true``: a JSON body with the audio and one timing per word, and the same
    timings as ``speech.word`` events of an SSE stream (same seed, same tokens); monotonic and
    inside the audio."""
    body = {"input": WORDS_TEXT, "language": "fr", "seed": 5, "max_new_tokens": 24,
            "timestamps": True}  # fmt: skip
    wrapped = _speech(server, **body)
    assert wrapped.status_code == 200, wrapped.text
    assert wrapped.headers["content-type"].startswith("application/json")
    payload = wrapped.json()
    assert payload["response_format"] == "pcm"
    duration = len(base64.b64decode(payload["audio"])) / 2 / 24000  # 16-bit samples at 24 kHz
    words = payload["timestamps"]
    assert [w["word"] for w in words] == WORDS_TEXT.split()
    times = [t for w in words for t in (w["start_time"], w["end_time"])]
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= duration + 1e-9
    assert any(w["end_time"] > w["start_time"] for w in words)

    request = {"model": "chatterbox", "voice": "default", "response_format": "pcm",
               "stream_format": "sse", **body}  # fmt: skip
    events = []
    with httpx.stream(
        "POST",
        server["base"] + "/v1/audio/speech",
        json=request,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=300,
    ) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")
        ]
    streamed = [
        {k: e[k] for k in ("word", "start_time", "end_time")}
        for e in events
        if e["type"] == "speech.word"
    ]
    assert streamed == words
    assert events[-1]["type"] == "speech.audio.done"
