"""Chatterbox Turbo in the product, without an engine: its files and download, the ``top_k``
control, Turbo's defaults and the rule for the controls it lacks, and its voice preparation
(longer than 5 s, -27 LUFS, S3Gen's first 10 s, T3's first 15 s / 375 tokens)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from chatterbox_t3.sampling import T3SamplingParams
from chatterbox_vllm.cli import build_parser
from chatterbox_vllm.controls import CONTROLS, GenerationParams, controls_from_namespace
from chatterbox_vllm.errors import AudioTooShortError, CheckpointError, InvalidParameterError
from chatterbox_vllm.hub import download_checkpoint, inspect_checkpoint_dir
from chatterbox_vllm.models import detect_model
from chatterbox_vllm.voices import VoiceCache, build_voice

# Written out here, not read from the code under test: ResembleAI/chatterbox-turbo's files as
# chatterbox-tts 0.1.7's ChatterboxTurboTTS loads them, and its generate() defaults.
TURBO_REPO = "ResembleAI/chatterbox-turbo"
TURBO_FILES = ["ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors",
               "vocab.json", "merges.txt", "tokenizer_config.json", "conds.pt"]  # fmt: skip
TURBO_DEFAULTS = {"temperature": 0.8, "top_k": 1000, "top_p": 0.95, "repetition_penalty": 1.2,
                  "cfg_weight": 0.0, "exaggeration": 0.0, "min_p": 0.0}  # fmt: skip


def _fake_checkpoint(directory: Path, files: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
        (directory / name).write_bytes(b"x")
    return directory


# ------------------------------------------------------------------ files and download


def test_turbo_is_detected_and_missing_files_are_named(tmp_path: Path) -> None:
    full = _fake_checkpoint(tmp_path / "turbo", TURBO_FILES)
    assert detect_model(full) == "turbo"
    assert inspect_checkpoint_dir(full, require_conds=True) == (full, "turbo")
    partial = _fake_checkpoint(
        tmp_path / "partial", [f for f in TURBO_FILES if f != "s3gen_meanflow.safetensors"]
    )
    with pytest.raises(
        CheckpointError, match=r"\(turbo model\) is missing s3gen_meanflow\.safetensors"
    ):
        inspect_checkpoint_dir(partial)


def test_the_turbo_download_fetches_its_files_from_its_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Callable[..., Path]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    files = {name: name.encode() for name in TURBO_FILES}
    snapshot = hub_cache(tmp_path, TURBO_REPO, "b" * 40, files, ref="main")
    found = download_checkpoint(cache_dir=tmp_path, model="turbo")
    assert found == snapshot
    assert sorted(p.name for p in found.iterdir()) == sorted(TURBO_FILES)
    # Another repository given explicitly is used as given (here: not cached, named).
    with pytest.raises(CheckpointError, match="someone/turbo-fork@main is not in the"):
        download_checkpoint("someone/turbo-fork", "main", cache_dir=tmp_path, model="turbo")


def test_a_corrupt_turbo_s3gen_file_is_named(tmp_path: Path) -> None:
    from chatterbox_s3gen import S3Gen
    from chatterbox_s3gen.errors import CorruptCheckpointFileError

    (tmp_path / "s3gen_meanflow.safetensors").write_bytes(b"<html>not found</html>")
    with pytest.raises(CorruptCheckpointFileError, match="s3gen_meanflow.safetensors"):
        S3Gen.from_checkpoint(tmp_path)


# ------------------------------------------------------------------ controls


def test_top_k_is_one_control_of_the_contract() -> None:
    assert CONTROLS["top_k"].kind is int and CONTROLS["top_k"].default == 0
    args = build_parser().parse_args(["speak", "Hi.", "--top-k", "50"])
    assert controls_from_namespace(args) == {"top_k": 50}
    assert GenerationParams(top_k=50).t3_sampling(max_tokens=10, seed=None).top_k == 50
    assert T3SamplingParams(top_k=50).top_k == 50
    for bad in (-1, 2.5, True, 100_001):
        with pytest.raises(InvalidParameterError, match="top_k must be"):
            GenerationParams(top_k=bad)  # type: ignore[arg-type]


def test_turbo_defaults_are_the_references() -> None:
    params = GenerationParams.for_model("turbo")
    assert {name: getattr(params, name) for name in TURBO_DEFAULTS} == TURBO_DEFAULTS
    assert GenerationParams.for_model("turbo", top_k=20, temperature=0.5).top_k == 20
    assert GenerationParams.for_model("english").top_k == 0  # no top-k on the standard models


def test_controls_turbo_lacks_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatterbox_vllm.controls"):
        params = GenerationParams.for_model("turbo", cfg_weight=0.7, exaggeration=1.0, min_p=0.1)
    assert (params.cfg_weight, params.exaggeration, params.min_p) == (0.0, 0.0, 0.0)
    assert "the turbo model has no cfg_weight, exaggeration, min_p" in caplog.text
    assert "cfg_weight=0.7" in caplog.text and "min_p=0.1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chatterbox_vllm.controls"):
        GenerationParams.for_model("turbo", cfg_weight=0.0)  # Turbo's own value: silent
    assert caplog.text == ""
    with pytest.raises(InvalidParameterError, match="cfg_weight must be in"):
        GenerationParams.for_model("turbo", cfg_weight=9.0)  # out of range stays an error


# ------------------------------------------------------------------ voice preparation


@pytest.fixture(scope="module")
def voice_models(chatterbox_checkpoint: Path):  # type: ignore[no-untyped-def]
    from chatterbox_s3gen import S3Gen
    from chatterbox_t3 import VoiceEncoder

    return VoiceEncoder.from_checkpoint_dir(chatterbox_checkpoint), S3Gen.from_checkpoint(
        chatterbox_checkpoint
    )


def _speech_like(seconds: float, level: float) -> torch.Tensor:
    t = torch.arange(round(seconds * 24_000), dtype=torch.float64) / 24_000
    voiced = sum(0.3 / k * torch.sin(2 * math.pi * 180 * k * t) for k in range(1, 5))
    noise = 0.02 * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    return (level * (voiced * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t)) + noise)).float()


def test_turbo_voice_needs_more_than_five_seconds(voice_models) -> None:  # type: ignore[no-untyped-def]
    encoder, s3gen = voice_models
    with pytest.raises(
        AudioTooShortError, match=r"5\.00 s long; the turbo model needs .*longer than 5 s"
    ):
        build_voice(_speech_like(5.0, 0.5), encoder, s3gen, model="turbo")
    with pytest.raises(AudioTooShortError, match="longer than 5 s"):
        VoiceCache(model="turbo").get_or_prepare((_speech_like(4.0, 0.5), 24_000), encoder, s3gen)
    build_voice(_speech_like(4.0, 0.5), encoder, s3gen, model="english")  # others take it


def test_turbo_voice_windows_and_loudness(voice_models) -> None:  # type: ignore[no-untyped-def]
    import pyloudnorm

    encoder, s3gen = voice_models
    loud = _speech_like(16.0, 0.8)
    voice = build_voice(loud, encoder, s3gen, model="turbo")
    assert voice.t3.prompt_tokens.numel() == 375  # the first 15 s, 25 tokens/s
    assert voice.s3gen.num_prompt_frames == 500  # the first 10 s, 50 frames/s
    english = build_voice(loud, encoder, s3gen, model="english")
    assert english.t3.prompt_tokens.numel() == 150
    # -27 LUFS before anything else: a quieter copy of the audio gives the same voice.
    quiet = build_voice(loud * 0.05, encoder, s3gen, model="turbo")
    torch.testing.assert_close(quiet.s3gen.prompt_mel, voice.s3gen.prompt_mel, rtol=0, atol=1e-3)
    torch.testing.assert_close(
        quiet.t3.speaker_embedding, voice.t3.speaker_embedding, rtol=0, atol=1e-4
    )
    # ...and that loudness is -27 LUFS: the S3Gen prompt mel of the audio scaled by hand to it.
    meter = pyloudnorm.Meter(24_000)
    gain = 10 ** ((-27.0 - meter.integrated_loudness(loud.double().numpy())) / 20)
    by_hand = s3gen.embed_ref((loud.double() * gain).float()[: 10 * 24_000], 24_000)
    torch.testing.assert_close(voice.s3gen.prompt_mel, by_hand.prompt_mel, rtol=0, atol=1e-4)
    assert not torch.allclose(english.s3gen.prompt_mel, voice.s3gen.prompt_mel, atol=1e-2)


def test_turbo_sequences_have_room_for_a_375_token_voice_prompt() -> None:
    from chatterbox_vllm.config import EngineConfig

    standard = EngineConfig(max_new_tokens=20)
    # speaker + 375 prompt tokens instead of speaker + 32 perceiver outputs + emotion
    assert standard.for_turbo().model_len >= standard.model_len + (376 - 34)
    assert EngineConfig(max_model_len=512).for_turbo().model_len == 512  # a set value is kept


def test_a_short_voice_gets_turbos_rule(voice_models) -> None:  # type: ignore[no-untyped-def]
    # Under the general 1 s minimum too: the message is Turbo's, not "at least 1.0 s is needed"
    # (which a 2 s recording then meets, only to be refused for Turbo's 5 s).
    encoder, s3gen = voice_models
    with pytest.raises(AudioTooShortError, match=r"0\.50 s long; the turbo model needs .*than 5 s"):
        VoiceCache(model="turbo").get_or_prepare((_speech_like(0.5, 0.5), 24_000), encoder, s3gen)


def test_the_cli_checks_turbo_files_and_voice_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's pre-load check reads Turbo's voice encoder from ve.safetensors (the Turbo
    release has no ve.pt): a whole random checkpoint passes, a corrupt file is named; a voice
    too short for Turbo is refused before the model loads."""
    import soundfile

    from chatterbox_vllm.checkpoint import make_random_checkpoint
    from chatterbox_vllm.cli import main
    from chatterbox_vllm.errors import ChatterboxError
    from chatterbox_vllm.preflight import check_checkpoint

    directory = Path(make_random_checkpoint(tmp_path / "turbo", size="tiny", seed=0, model="turbo"))
    assert check_checkpoint(directory, needs_default_voice=True) == directory
    voice = tmp_path / "three-seconds.wav"
    soundfile.write(voice, _speech_like(3.0, 0.5).numpy(), 24_000)
    out = tmp_path / "out.wav"
    argv = ["speak", "Hi.", "--model-dir", str(directory), "--voice", str(voice), "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 1
    stderr = capsys.readouterr().err
    assert "3.00 s long; the turbo model needs a reference longer than 5 s" in stderr
    assert "chatterbox_vllm.tts: loading" not in stderr and not out.exists()
    (directory / "ve.safetensors").write_bytes(b"<html>not found</html>")
    with pytest.raises(ChatterboxError, match="ve.safetensors"):
        check_checkpoint(directory, needs_default_voice=False)


def test_a_word_too_long_for_turbo_fails_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Turbo's text limits (GPT-2's 1,024 text positions; the whole prompt, whose voice part is
    the voice's prompt tokens) are checked before the model loads, as the other models' are:
    the engine alone checked them, after the load."""
    from chatterbox_vllm.checkpoint import make_random_checkpoint
    from chatterbox_vllm.cli import main

    directory = Path(make_random_checkpoint(tmp_path / "turbo", size="tiny", seed=0, model="turbo"))
    out = tmp_path / "out.wav"
    flags = ["--model-dir", str(directory), "--device", "cpu", "--max-new-tokens", "20",
             "--max-chunk-chars", "60", "--out", str(out)]  # fmt: skip
    cases = [
        ("x" * 3000, "at most 1024 fit T3's text positions; split it into shorter pieces"),
        # Within the text positions, but not with the default voice's prompt in an engine sized
        # for 60-character chunks of 20 speech tokens.
        ("x" * 500, "(501 text tokens after normalisation, the voice's "),
    ]
    for text, message in cases:
        assert main(["speak", text, *flags]) == 1
        stderr = capsys.readouterr().err
        assert message in stderr
        assert "chatterbox_vllm.tts: loading" not in stderr
        assert "Token indices sequence length" not in stderr  # transformers' own warning
    assert not out.exists()
