"""The server's voice store and upload route, without an engine: the app over a stand-in for
``ChatterboxTTS`` whose voices are made from random conditionals (no model prepares them)."""

from __future__ import annotations

import io
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import soundfile
import torch
from fastapi.testclient import TestClient

from chatterbox_vllm.conds import VoiceConditionals
from chatterbox_vllm.server.routes import create_app
from chatterbox_vllm.server.settings import ServerSettings
from chatterbox_vllm.server.voices import VoiceStore
from chatterbox_vllm.voices import Voice, load_voice_audio_for


def random_voice(seed: int) -> Voice:
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.rand(256, generator=generator)
    return Voice.from_conditionals(
        VoiceConditionals(
            speaker_embedding=embedding / embedding.norm(),
            t3_prompt_tokens=torch.randint(0, 6561, (50,), generator=generator),
            s3gen_prompt_tokens=torch.randint(0, 6561, (50,), generator=generator),
            s3gen_prompt_mel=torch.randn(100, 80, generator=generator),
            s3gen_speaker_embedding=torch.randn(192, generator=generator),
            exaggeration=0.5,
        )
    )


def recording() -> bytes:
    t = torch.arange(2 * 24_000) / 24_000
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * torch.sin(2 * math.pi * 180 * t)).numpy(), 24_000, format="WAV")
    return buffer.getvalue()


def client_over(voices_dir: Path, **settings: Any) -> TestClient:
    tts = SimpleNamespace(
        model="english",
        sample_rate=24_000,
        default_voice=random_voice(0),
        on_stream_done=None,
        # The audio is checked as ChatterboxTTS.prepare_voice checks it; the voice is random.
        prepare_voice=lambda audio: (load_voice_audio_for(audio, "english"), random_voice(1))[1],
    )
    return TestClient(create_app(tts, ServerSettings(voices_dir=voices_dir, **settings)))  # type: ignore[arg-type]


def test_a_voice_the_server_cannot_store_is_a_server_error_and_is_not_added(
    tmp_path: Path,
) -> None:
    """A voices directory that cannot be written (removed, replaced, full) is the server's
    fault: a 500 saying the voice was not added, not a 400 blaming the request."""
    voices_dir = tmp_path / "voices"
    client = client_over(voices_dir)
    voices_dir.rmdir()
    voices_dir.write_text("not a directory any more")
    answer = client.post("/v1/voices", data={"name": "me"}, files={"file": ("me.wav", recording())})
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error["type"] == "server_error"
    assert "could not store it, so it was not added" in error["message"]
    assert f"{voices_dir} is a file, not a directory" in error["message"]
    assert [v["name"] for v in client.get("/v1/voices").json()["data"]] == ["default"]


def test_upload_and_delete_errors_name_the_form_fields(tmp_path: Path) -> None:
    """The upload's fields are ``name`` and ``file``: an unusable recording names ``file`` (it
    named ``voice``, a field of the speech route), deleting the default voice names ``name``."""
    client = client_over(tmp_path / "voices")
    cases = [
        (b"not audio at all" * 10, "could not decode the uploaded file"),
        (recording()[: 44 + 2_000], "at least 1.0 s is needed"),
    ]
    for data, words in cases:
        answer = client.post("/v1/voices", data={"name": "me"}, files={"file": ("me.wav", data)})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "file"
        assert words in answer.json()["error"]["message"]
    default = client.delete("/v1/voices/default")
    assert default.status_code == 400 and default.json()["error"]["param"] == "name"


def test_two_uploads_of_one_name_at_once_leave_the_file_and_the_voice_agreeing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The voice served and the file it is loaded from after a restart are the same upload's:
    the first upload's save was slow, the second's was not; the first then won in memory while
    the second's file stayed on disk."""
    store = VoiceStore(SimpleNamespace(default_voice=None), tmp_path)  # type: ignore[arg-type]
    slow, fast = random_voice(1), random_voice(2)
    real_save = Voice.save

    def save(voice: Voice, path: Any) -> Any:
        written = real_save(voice, path)
        if voice is slow:
            time.sleep(0.5)
        return written

    monkeypatch.setattr(Voice, "save", save)
    first = threading.Thread(target=store.add, args=("twin", slow))
    first.start()
    time.sleep(0.15)
    store.add("twin", fast)
    first.join()
    on_disk = Voice.load(tmp_path / "twin.pt")
    assert on_disk.content_hash == store.get("twin").content_hash
    assert VoiceStore(SimpleNamespace(default_voice=None), tmp_path).get("twin").content_hash == (  # type: ignore[arg-type]
        store.get("twin").content_hash
    )


def test_a_voice_whose_file_cannot_be_removed_is_not_deleted(tmp_path: Path) -> None:
    """Deleting a voice whose NAME.pt cannot be removed (here a directory stands in its place;
    a read-only mount does the same) is a 500 and the voice stays: it was dropped from memory
    and came back at the next start, from the file left behind."""
    voices_dir = tmp_path / "voices"
    client = client_over(voices_dir)
    added = client.post("/v1/voices", data={"name": "me"}, files={"file": ("me.wav", recording())})
    assert added.status_code == 201, added.text
    (voices_dir / "me.pt").unlink()
    (voices_dir / "me.pt").mkdir()
    (voices_dir / "me.pt" / "keep").write_text("x")
    answer = client.delete("/v1/voices/me")
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error["type"] == "server_error"
    assert f"voice file {voices_dir / 'me.pt'}: cannot remove it" in error["message"]
    assert "'me' is still served" in error["message"]
    assert [v["name"] for v in client.get("/v1/voices").json()["data"]] == ["default", "me"]


def test_settings_take_a_str_voices_dir_and_name_wrong_types(tmp_path: Path) -> None:
    """``ServerSettings(voices_dir="voices")`` (a str, as most configuration gives it) was an
    AttributeError ('str' object has no attribute 'exists'); a setting of the wrong type (a
    string of seconds, a number as the host) was Python's TypeError or AttributeError."""
    from chatterbox_vllm.errors import InvalidParameterError

    client = client_over(str(tmp_path / "voices"))  # type: ignore[arg-type]
    answer = client.post("/v1/voices", data={"name": "me"}, files={"file": ("me.wav", recording())})
    assert answer.status_code == 201, answer.text
    assert (tmp_path / "voices" / "me.pt").is_file()
    for setting, value, message in (
        ("max_queue_wait", "30", "max_queue_wait must be a number of seconds, got str '30'"),
        ("drain_seconds", None, "drain_seconds must be a number of seconds, got NoneType"),
        ("host", 0, "host must be a str, got int 0"),
        ("api_key", 1234, "api_key must be a str, got int 1234"),
        ("voices_dir", 5, r"voices_dir must be a directory path \(str or pathlib.Path\)"),
        ("playground", "no", "playground must be a bool, got str 'no'"),
    ):
        with pytest.raises(InvalidParameterError, match=message):
            ServerSettings(**{setting: value})


def test_a_recording_longer_than_the_limit_is_refused_before_it_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hour of near-silence is half a megabyte of FLAC (20 MB: a day and a half, tens of GB
    decoded): a recording is refused by the length its header gives, before it is decoded."""
    import numpy as np

    hour = io.BytesIO()
    soundfile.write(hour, np.zeros(3600 * 8_000, np.int16), 8_000, format="FLAC")
    assert len(hour.getvalue()) < 200_000
    decoded: list[bool] = []
    monkeypatch.setattr(soundfile, "read", lambda *a, **k: decoded.append(True))
    client = client_over(tmp_path / "voices")
    answer = client.post(
        "/v1/voices", data={"name": "long"}, files={"file": ("long.flac", hour.getvalue())}
    )
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["param"] == "file" and not decoded
    assert error["message"].startswith(
        "the uploaded recording is 3,600.0 s long; at most 300 s are accepted"
    )
    monkeypatch.undo()
    # The limit is a setting (--max-upload-seconds); a recording within it is taken.
    strict = client_over(tmp_path / "strict", max_upload_seconds=1.5)
    refused = strict.post(
        "/v1/voices", data={"name": "me"}, files={"file": ("me.wav", recording())}
    )
    assert refused.status_code == 413 and "2.0 s long; at most 1.5 s" in refused.text
    taken = client.post("/v1/voices", data={"name": "me"}, files={"file": ("me.wav", recording())})
    assert taken.status_code == 201, taken.text
