"""The ``/v1/audio/speech`` request body: OpenAI's fields plus every control of the contract.

The control fields are generated from :data:`chatterbox_vllm.controls.CONTROLS` (type, range,
meaning in the OpenAPI schema), so the server accepts exactly what ``generate`` accepts."""

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


class SpeechRequestBase(BaseModel):
    """OpenAI's ``audio.speech.create`` fields."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model id (see /v1/models)")
    input: str = Field(description="the text to speak")
    voice: str = Field(
        "default", description="a voice name: 'default' or one uploaded to /v1/voices"
    )
    response_format: str = Field("mp3", description="wav, pcm, flac, mp3, opus or aac")
    speed: StrictFloat | StrictInt = Field(
        1.0, description="only 1.0 (Chatterbox has no tempo control)"
    )
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="audio: the encoded stream; sse: speech.audio.delta/done events"
    )
    instructions: str | None = Field(None, description="not supported (must be empty)")
    timestamps: StrictBool = Field(
        False,
        description=(
            "word timings (multilingual model): with stream_format=sse, a speech.word event "
            "{word, start_time, end_time} per word; otherwise a JSON body {audio: base64, "
            "response_format, timestamps: [{word, start_time, end_time}]}"
        ),
    )


def _field(control: Control) -> tuple[Any, Any]:
    if control.choices is not None:
        # Checked by the contract (its error lists every accepted value), not by an enum here.
        return (StrictStr | None, Field(None, description=control.describe()))
    kind: Any = StrictInt if control.kind is int else (StrictFloat | StrictInt)
    low = {"gt": control.low} if control.low_open else {"ge": control.low}
    field: Any = Field(None, description=control.describe(), le=control.high, **low)  # type: ignore[call-overload]
    return (kind | None, field)


SpeechRequest = create_model(  # type: ignore[call-overload]
    "SpeechRequest",
    __base__=SpeechRequestBase,
    **{name: _field(control) for name, control in CONTROLS.items()},
)
"""The whole request body (OpenAI fields + ``exaggeration``, ``cfg_weight``, ``seed``...)."""


def controls_of(request: BaseModel) -> dict[str, Any]:
    """The controls a request set (``None`` ones take the contract's defaults)."""
    return {name: getattr(request, name) for name in CONTROLS if getattr(request, name) is not None}
