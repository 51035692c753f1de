"""Static proof that the components satisfy the seam's Protocols (checked by ``nox -s typecheck``).

Each function below only type-checks if its argument is assignable to the Protocol it returns;
nothing calls them at run time, and importing this module imports neither component.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatterbox_s3gen import S3Gen, S3GenReference
    from chatterbox_s3gen.vocoders import (
        GriffinLimVocoder,
        HiFTOnnxVocoder,
        HiFTTorchVocoder,
        Vocoder,
    )
    from chatterbox_t3 import AsyncT3Engine, T3Engine, T3Output, T3Request
    from chatterbox_vllm.interfaces import (
        SpeechDecoder,
        SpeechTokenGenerator,
        SpeechTokenSequence,
        StreamingSpeechTokenGenerator,
    )


def t3_engine_generates_speech_tokens(engine: T3Engine) -> SpeechTokenGenerator[T3Request]:
    return engine


def async_t3_engine_streams_speech_tokens(
    engine: AsyncT3Engine,
) -> StreamingSpeechTokenGenerator[T3Request]:
    return engine


def t3_output_is_a_speech_token_sequence(output: T3Output) -> SpeechTokenSequence:
    return output


def s3gen_decodes_speech(s3gen: S3Gen) -> SpeechDecoder[S3GenReference]:
    return s3gen


def hift_torch_is_a_vocoder(vocoder: HiFTTorchVocoder) -> Vocoder:
    return vocoder


def hift_onnx_is_a_vocoder(vocoder: HiFTOnnxVocoder) -> Vocoder:
    return vocoder


def griffin_lim_is_a_vocoder(vocoder: GriffinLimVocoder) -> Vocoder:
    return vocoder
