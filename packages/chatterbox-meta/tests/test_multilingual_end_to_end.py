"""The multilingual model end to end on the CPU: ``make_random_checkpoint(model="multilingual")``
writes the release's layout, ``ChatterboxTTS.from_local`` detects the model, and ``generate`` /
``stream`` speak French (and Korean, whose front end needs no extra package) through the real
vLLM engine and S3Gen. Random weights say nothing about quality: lengths, model, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from chatterbox_vllm import ChatterboxTTS, InvalidParameterError
from chatterbox_vllm.checkpoint import make_random_checkpoint

SAMPLES_PER_TOKEN = 960
# chatterbox-tts 0.1.7's ChatterboxMultilingualTTS.from_pretrained allow_patterns.
RELEASE_FILES = {"ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt",
                 "grapheme_mtl_merged_expanded_v1.json", "Cangjie5_TC.json", "conds.pt"}  # fmt: skip
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def mtl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_checkpoint(
        tmp_path_factory.mktemp("mtl-tiny"), "tiny", seed=3, model="multilingual"
    )


@pytest.fixture(scope="module")
def mtl_tts(
    mtl_checkpoint: Path, chatterbox_engine_options: dict[str, Any]
) -> Iterator[ChatterboxTTS]:
    engine = ChatterboxTTS.from_local(
        mtl_checkpoint, watermark=False, device="cpu", **chatterbox_engine_options
    )
    yield engine
    engine.close()


def test_random_multilingual_checkpoint_has_the_release_layout(mtl_checkpoint: Path) -> None:
    names = {path.name for path in mtl_checkpoint.iterdir()}
    assert names >= RELEASE_FILES
    # Only the tiny sizes' configs besides them; none of the English release's files.
    assert names - RELEASE_FILES == {"s3gen_config.json", "t3_config.json"}
    state = torch.load(mtl_checkpoint / "s3gen.pt", weights_only=True)
    assert "mel2wav.conv_post.bias" in state and "flow.encoder_proj.bias" in state
    conds = torch.load(mtl_checkpoint / "conds.pt", weights_only=True)
    assert set(conds) == {"t3", "gen"}


def test_the_cli_writes_the_multilingual_layout(tmp_path: Path, capsys) -> None:
    from chatterbox_vllm.cli import main

    assert main(["make-random-checkpoint", str(tmp_path / "c"), "--model", "multilingual"]) == 0
    assert "random multilingual checkpoint" in capsys.readouterr().out
    assert {path.name for path in (tmp_path / "c").iterdir()} >= RELEASE_FILES


def test_french_and_korean_speech(mtl_tts: ChatterboxTTS) -> None:
    assert mtl_tts.model == "multilingual"
    defaults = mtl_tts.params()
    assert (defaults.repetition_penalty, defaults.min_p, defaults.top_p) == (2.0, 0.05, 1.0)
    for text, language in (("Bonjour, ça va très bien.", "fr"), ("안녕하세요.", "ko")):
        result = mtl_tts.generate(text, language=language, seed=5, max_new_tokens=8, progress=False)
        assert result.sample_rate == 24_000 and result.chunks == (text,)
        tokens = result.num_speech_tokens
        assert 0 < tokens <= 8
        assert result.waveform.numel() in (
            tokens * SAMPLES_PER_TOKEN,
            tokens * SAMPLES_PER_TOKEN - 480,
        )
        assert torch.isfinite(result.waveform).all()
    chunks = list(mtl_tts.stream("Hola a todos.", language="es", seed=2, max_new_tokens=20))
    assert chunks and chunks[-1].final and sum(c.waveform.numel() for c in chunks) > 0


def test_a_bad_language_is_named_and_the_engine_keeps_working(mtl_tts: ChatterboxTTS) -> None:
    with pytest.raises(InvalidParameterError, match="language must be one of ar, da, de"):
        mtl_tts.generate("Hallo.", language="xx", max_new_tokens=4, progress=False)
    assert (
        mtl_tts.generate("Hallo.", language="de", max_new_tokens=4, progress=False).duration_s > 0
    )


def test_word_timings_of_a_two_chunk_text(mtl_tts: ChatterboxTTS) -> None:
    """Every word of every chunk gets a start and end in the joined audio: T3's word frames at
    25 per second, shifted by where the crossfade join puts the chunk (computed here from the
    chunk lengths), monotonic, inside the audio; a stream of the same request carries the same
    timings on its chunks. Random weights: this checks the bookkeeping, not alignment quality."""
    text = "Bonjour tout le monde, comment allez-vous? Je vais très bien, merci beaucoup."
    controls: dict[str, Any] = {"language": "fr", "seed": 9, "max_new_tokens": 30}
    result = mtl_tts.generate(text, progress=False, **controls)
    assert len(result.chunks) == 2
    assert [w.word for w in result.words] == [w for chunk in result.chunks for w in chunk.split()]
    crossfade = round(mtl_tts.config.crossfade_seconds * 24_000)
    first, second = result.chunk_samples
    starts = [0, first - min(crossfade, first // 2, second // 2)]
    expected = []
    # Chunk 0 gives up the end it crossfades with chunk 1; the last chunk keeps its whole audio.
    ends = [starts[0] + first - min(crossfade, first // 2), starts[1] + second]
    for index, tokens in enumerate(result.speech_tokens):
        end = ends[index]
        for frames in tokens.words:
            expected.append(
                (
                    min(starts[index] + frames.start * SAMPLES_PER_TOKEN, end) / 24_000,
                    min(starts[index] + frames.end * SAMPLES_PER_TOKEN, end) / 24_000,
                    index,
                )
            )
    assert [(w.start_time, w.end_time, w.text_chunk) for w in result.words] == expected
    times = [t for w in result.words for t in (w.start_time, w.end_time)]
    assert times == sorted(times) and times[-1] <= result.duration_s
    assert any(w.end_time > w.start_time for w in result.words)

    streamed = [w for chunk in mtl_tts.stream(text, **controls) for w in chunk.words]
    assert streamed == list(result.words)
