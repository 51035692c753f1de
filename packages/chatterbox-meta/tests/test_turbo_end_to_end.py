"""Chatterbox Turbo end to end on CPU: a tiny random Turbo checkpoint (GPT-2 T3 on vLLM, the
meanflow S3Gen) through ``generate``, ``stream`` and the server's routes, with the same runtime
as the other models. Random weights say nothing about speech; these check what a user relies
on: the model is recognised and reported, tags pass through, lengths follow the tokens, a stream
and ``generate`` agree, and a control Turbo lacks is a warning, not a failure."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from chatterbox_vllm import ChatterboxTTS
from chatterbox_vllm.checkpoint import make_random_checkpoint
from chatterbox_vllm.errors import InvalidTextError
from chatterbox_vllm.server.routes import create_app
from chatterbox_vllm.server.settings import ServerSettings

SAMPLES_PER_TOKEN = 960  # 2 mel frames per speech token, 480 samples per frame at 24 kHz
TEXT = "Well [laugh] that was fun."


@pytest.fixture(scope="module")
def turbo(tmp_path_factory, chatterbox_engine_options: dict[str, Any]) -> Iterator[ChatterboxTTS]:
    directory = make_random_checkpoint(
        tmp_path_factory.mktemp("turbo") / "checkpoint", size="tiny", seed=0, model="turbo"
    )
    options = {k: v for k, v in chatterbox_engine_options.items() if k != "cfm_steps"}
    with ChatterboxTTS.from_local(Path(directory), **options) as tts:
        yield tts


def test_generate_and_stream_speak_the_same_tokens(turbo: ChatterboxTTS) -> None:
    assert turbo.model == "turbo"
    result = turbo.generate(TEXT, max_new_tokens=16, seed=3, temperature=0.0)
    tokens = result.num_speech_tokens
    assert tokens > 0 and result.sample_rate == 24_000
    # S3Gen gets three silence tokens after T3's (chatterbox-tts 0.1.7's Turbo appends them); a
    # token is 960 samples, one mel frame less when the voice's prompt mel has an odd length.
    assert result.waveform.numel() in (
        (tokens + 3) * SAMPLES_PER_TOKEN,
        (tokens + 3) * SAMPLES_PER_TOKEN - 480,
    )
    chunks = list(turbo.stream(TEXT, max_new_tokens=16, seed=3, temperature=0.0))
    assert chunks[-1].final
    streamed = sum(chunk.waveform.numel() for chunk in chunks)
    assert streamed == result.waveform.numel()


def test_a_control_turbo_lacks_is_a_logged_warning(turbo: ChatterboxTTS, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = turbo.generate("Hello.", max_new_tokens=8, cfg_weight=0.7, seed=1)
    assert result.num_speech_tokens > 0
    assert any("cfg_weight" in record.getMessage() for record in caplog.records)


def test_the_server_reports_and_speaks_turbo(turbo: ChatterboxTTS) -> None:
    client = TestClient(create_app(turbo, ServerSettings()))
    assert client.get("/health").json()["model"] == "turbo"
    [model] = client.get("/v1/models").json()["data"]
    assert model["chatterbox_model"] == "turbo"
    body = {"model": "chatterbox", "input": TEXT, "response_format": "pcm",
            "max_new_tokens": 12, "seed": 2, "top_k": 50}  # fmt: skip
    response = client.post("/v1/audio/speech", json=body)
    assert response.status_code == 200, response.text
    samples = np.frombuffer(response.content, dtype="<i2")
    assert samples.size > 0 and samples.size % 480 == 0
    refused = client.post("/v1/audio/speech", json={**body, "top_k": -1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "top_k"
    # Word timings need the multilingual analyzer: refused, naming the model this server runs.
    stamped = client.post("/v1/audio/speech", json={**body, "timestamps": True})
    assert stamped.status_code == 400 and stamped.json()["error"]["param"] == "timestamps"
    assert "this server runs the turbo model" in stamped.json()["error"]["message"]


def test_a_word_too_long_for_a_turbo_prompt_is_refused_before_any_work(
    turbo: ChatterboxTTS,
) -> None:
    # About 1,000 text tokens: inside Turbo's 1,024 text positions, but with the voice's prompt
    # (its conditioning has a row per prompt token) past the engine's positions. One word has
    # nowhere to be split, so it must be refused as bad input before a response starts, as on
    # the other models; it used to be found only by T3 once the response had begun (a cut-off
    # stream, and an "internal error" on the WebSocket).
    word = "a" * 2000
    with pytest.raises(InvalidTextError, match="split the text into shorter pieces"):
        turbo.generate(word, max_new_tokens=8)
    client = TestClient(create_app(turbo, ServerSettings()))
    body = {"model": "chatterbox", "input": word, "response_format": "pcm", "max_new_tokens": 8}
    response = client.post("/v1/audio/speech", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input" and "positions" in error["message"]
    with client.websocket_connect("/v1/audio/speech/stream") as ws:
        assert ws.receive_json()["type"] == "session.created"
        ws.send_json({"type": "input_text_buffer.append", "delta": word})
        ws.send_json({"type": "input_text_buffer.commit"})
        events = [ws.receive_json() for _ in range(2)]
        error = next(event for event in events if event["type"] == "error")["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "delta"
    ok = client.post("/v1/audio/speech", json={**body, "input": "Fine."})
    assert ok.status_code == 200 and len(ok.content) > 0
