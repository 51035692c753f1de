"""The playground's routes (no engine: the app over a model-less stand-in for ``ChatterboxTTS``;
the page itself runs in Chromium in ``tests/server/test_playground.py``)."""

from __future__ import annotations

import re
from importlib import resources
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from chatterbox_vllm.cli import build_parser
from chatterbox_vllm.controls import CONTROLS, MODEL_DEFAULTS
from chatterbox_vllm.server.routes import create_app
from chatterbox_vllm.server.settings import ServerSettings, settings_from_namespace


def app_client(model: str = "english", *flags: str) -> TestClient:
    args = build_parser().parse_args(["serve", "--model-dir", "/nowhere", *flags])
    tts = SimpleNamespace(model=model, on_stream_done=None)  # what create_app reads at start
    return TestClient(create_app(tts, settings_from_namespace(args)))  # type: ignore[arg-type]


def test_page_and_its_assets_are_served_by_the_server_itself() -> None:
    client = app_client()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', page.text)
    assert sorted(assets) == ["/playground/playground.css", "/playground/playground.js"]
    for asset in assets:
        assert client.get(asset).status_code == 200
    # No CDN, no other origin: nothing in the page's files points off the server.
    folder = resources.files("chatterbox_vllm.server").joinpath("static")
    for file in folder.iterdir():
        assert not re.search(r"https?://|//cdn|\bimport\s*\(", file.read_text()), file.name
    missing = client.get("/playground/secrets.txt")
    assert missing.status_code == 404 and "secrets.txt" in missing.json()["error"]["message"]


@pytest.mark.parametrize("model", ["english", "multilingual"])
def test_config_describes_every_control_of_the_contract(model: str) -> None:
    config = app_client(model).get("/playground/config.json").json()
    assert [c["name"] for c in config["controls"]] == list(CONTROLS)
    for described in config["controls"]:
        control = CONTROLS[described["name"]]
        if control.choices is None:
            assert (described["low"], described["high"]) == (control.low, control.high)
        else:
            assert described["choices"] == list(control.choices)
        expected = MODEL_DEFAULTS[model].get(control.name, control.default)  # type: ignore[index]
        assert described["default"] == expected
    speed = next(c for c in config["controls"] if c["name"] == "speed")
    assert (speed["low"], speed["high"], speed["default"]) == (0.25, 4.0, 1.0)
    assert config["model"] == model and "wav" in config["response_formats"]


def test_no_playground_leaves_the_api_alone() -> None:
    assert ServerSettings().playground is True
    client = app_client("english", "--no-playground")
    for path in ("/", "/playground/config.json", "/playground/playground.js"):
        assert client.get(path).status_code == 404, path
    assert client.get("/v1/models").json()["data"][0]["id"] == "chatterbox"


def test_an_api_key_given_with_a_trailing_newline_is_the_key_without_it(monkeypatch) -> None:
    """A key read from a secret file (CHATTERBOX_API_KEY="$(cat file)" keeps no newline, but
    an environment set from a mounted file does) made the server refuse every request, the
    exact key included: clients never send the newline."""
    monkeypatch.setenv("CHATTERBOX_API_KEY", "s3cret\n")
    for client in (app_client(), app_client("english", "--api-key", " s3cret\n")):
        good = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200, good.text
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer other"})
        assert wrong.status_code == 401
