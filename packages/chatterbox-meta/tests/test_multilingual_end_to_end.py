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
