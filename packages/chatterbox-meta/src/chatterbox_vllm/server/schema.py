"""The ``/v1/audio/speech`` request body: OpenAI's fields plus every control of the contract.

The control fields are generated from :data:`chatterbox_vllm.controls.CONTROLS` (type, range,
meaning in the OpenAPI schema), so the server accepts exactly what ``generate`` accepts. A
WebSocket session (``/v1/audio/speech/stream``) is configured by :data:`SpeechSession`: the same
fields but the text."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
)

from chatterbox_vllm.controls import CONTROLS, Control


class SpeechOptionsBase(BaseModel):
    """How to speak: the fields a speech request and a WebSocket session share."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model id (see /v1/models)")
    voice: str = Field(
        "default", description="a voice name: 'default' or one uploaded to /v1/voices"
    )
    response_format: str = Field("mp3", description="wav, pcm, flac, mp3, opus or aac")
    instructions: str | None = Field(None, description="not supported (must be empty)")


class SpeechRequestBase(SpeechOptionsBase):
    """OpenAI's ``audio.speech.create`` fields."""

    input: str = Field(description="the text to speak")
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="audio: the encoded stream; sse: speech.audio.delta/done events"
    )
    timestamps: StrictBool = Field(
        False,
        description=(
            "word timings (multilingual model): with stream_format=sse, a speech.word event "
            "{word, start_time, end_time} per word; otherwise a JSON body {audio: base64, "
            "response_format, timestamps: [{word, start_time, end_time}]}"
        ),
    )


class SpeechSessionBase(SpeechOptionsBase):
    """The ``session`` of a WebSocket ``session.update`` (``/v1/audio/speech/stream``)."""

    model: str = Field("chatterbox", description="model id (see /v1/models)")
    response_format: str = Field("pcm", description="pcm or wav")


def _field(control: Control) -> tuple[Any, Any]:
    if control.choices is not None:
        # Checked by the contract (its error lists every accepted value), not by an enum here.
        return (StrictStr | None, Field(None, description=control.describe()))
    # StrictFloat takes ints too (not bools or strings); a union with StrictInt would report a
    # wrong value once per member ("speed.float: ...; speed.int: ...").
    kind: Any = StrictInt if control.kind is int else StrictFloat
    low: dict[str, Any] = {"gt": control.low} if control.low_open else {"ge": control.low}
    if control.kind is not int:
        # JSON's NaN and Infinity (Python's json reads them): "a finite number", not a bound's
        # message ("less than or equal to 5" for NaN).
        low["allow_inf_nan"] = False
    field: Any = Field(None, description=control.describe(), le=control.high, **low)
    return (kind | None, field)


SpeechRequest = create_model(  # type: ignore[call-overload]
    "SpeechRequest",
    __base__=SpeechRequestBase,
    **{name: _field(control) for name, control in CONTROLS.items()},
)
"""The whole request body (OpenAI fields + ``exaggeration``, ``cfg_weight``, ``seed``...; OpenAI's
``speed`` is a control of the contract too)."""

SpeechSession = create_model(  # type: ignore[call-overload]
    "SpeechSession",
    __base__=SpeechSessionBase,
    **{name: _field(control) for name, control in CONTROLS.items()},
)
"""A WebSocket session's settings: the same fields and checks as :data:`SpeechRequest` but the
text (it arrives in ``input_text_buffer.append`` events)."""


def controls_of(request: BaseModel) -> dict[str, Any]:
    """The controls a request set (``None`` ones take the contract's defaults)."""
    return {name: getattr(request, name) for name in CONTROLS if getattr(request, name) is not None}
