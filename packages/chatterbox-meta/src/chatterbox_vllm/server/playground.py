"""The playground: ``GET /`` serves one page (no build step, no CDN) to try the server in a browser.

The page's files are package data (``server/static/``). Its generation controls are not defined
here or in the page: ``GET /playground/config.json`` describes every control of the contract
(:data:`chatterbox_vllm.controls.CONTROLS`, with this model's defaults), and the page builds its
inputs from that. Everything else the page does goes through the public API (``/health``,
``/v1/models``, ``/v1/voices``, ``/v1/audio/speech``), with the API key when the server has one
(the page asks for it when a route answers 401). ``serve --no-playground`` leaves it out.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE
from chatterbox_vllm.controls import CONTROLS, Control
from chatterbox_vllm.encoding import available_formats
from chatterbox_vllm.server.middleware import error_body

if TYPE_CHECKING:
    from chatterbox_vllm.models import ModelKind
    from chatterbox_vllm.server.settings import ServerSettings

STATIC_FILES = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
"""The page's assets (besides the page itself), served under ``/playground/``."""


def _static(name: str) -> bytes:
    return resources.files("chatterbox_vllm.server").joinpath("static", name).read_bytes()


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def describe_control(control: Control, model: ModelKind) -> dict[str, Any]:
    """One control as the page needs it: its type, range, this model's default and meaning."""
    return {
        "name": control.name,
        "kind": control.kind.__name__,
        "default": control.default_for(model),
        "low": _number(control.low),
        "high": _number(control.high),
        "low_open": control.low_open,
        "optional": control.optional,
        "choices": list(control.choices) if control.choices is not None else None,
        "meaning": control.meaning,
        "description": control.describe(),
    }


def add_playground(app: FastAPI, settings: ServerSettings, model: ModelKind) -> None:
    """Adds ``GET /`` (the page), its assets and ``GET /playground/config.json`` to ``app``."""
    page = _static("playground.html")
    assets = {name: (_static(name), media) for name, media in STATIC_FILES.items()}
    config = {
        "model": model,
        "model_name": settings.model_name,
        "controls": [describe_control(control, model) for control in CONTROLS.values()],
        "response_formats": list(available_formats()),
        "max_input_chars": settings.max_input_chars,
        "sample_rate": S3GEN_SAMPLE_RATE,
    }

    @app.get("/", include_in_schema=False)
    async def playground_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/playground/config.json", include_in_schema=False)
    async def playground_config() -> JSONResponse:
        return JSONResponse(config)

    @app.get("/playground/{name}", include_in_schema=False)
    async def playground_asset(name: str) -> Response:
        if name not in assets:
            return JSONResponse(error_body(f"no playground file {name!r}"), 404)
        body, media = assets[name]
        return Response(body, media_type=media)
