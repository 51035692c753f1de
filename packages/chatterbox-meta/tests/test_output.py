"""Writing audio: every listed format round-trips; a failed write never loses the audio; the
device check names what the machine lacks."""

from __future__ import annotations

import math

import pytest
import soundfile
import torch

from chatterbox_vllm import preflight
from chatterbox_vllm.audio import save_audio, supported_output_suffixes
from chatterbox_vllm.errors import (
    ChatterboxError,
    InvalidParameterError,
    UnsupportedAudioFormatError,
)
from chatterbox_vllm.results import GenerationResult

RATE = 24_000


def _tone(seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(RATE * seconds)) / RATE
    return 0.5 * torch.sin(2 * math.pi * 220.0 * t)


def test_the_common_formats_are_offered() -> None:
    offered = supported_output_suffixes()
    for suffix in (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif"):
        assert suffix in offered


@pytest.mark.parametrize("suffix", supported_output_suffixes())
def test_every_offered_format_is_written_and_read_back(tmp_path, suffix: str) -> None:
    path = save_audio(tmp_path / f"out{suffix}", _tone(), RATE)
    audio, rate = soundfile.read(str(path))
    # Lossy codecs pad or trim by up to a frame; the duration stays within 80 ms.
    assert rate in (RATE, 48_000)
    assert abs(len(audio) / rate - 1.0) < 0.08
    assert 0.2 < float(abs(audio).max()) <= 1.0


def test_unlisted_suffixes_are_refused_naming_the_listed_ones(tmp_path) -> None:
    with pytest.raises(UnsupportedAudioFormatError, match=r"cannot write '\.xyz'.*\.wav"):
        save_audio(tmp_path / "out.xyz", _tone(), RATE)


def _result(seconds: float) -> GenerationResult:
    """One chunk of a tone, as ``generate`` returns it."""
    return GenerationResult(
        waveform=_tone(seconds),
        sample_rate=RATE,
        text="x",
        chunks=("x",),
        speech_tokens=(),
        chunk_samples=(int(RATE * seconds),),
        watermarked=False,
    )


@pytest.mark.parametrize("path", [5, None, b"out.wav"])
def test_a_path_that_is_no_file_path_is_named(path: object) -> None:
    result = _result(0.1)
    with pytest.raises(InvalidParameterError, match=r"path must be a file path .*got"):
        result.save(path)  # type: ignore[arg-type]


def test_a_failed_write_keeps_the_audio(tmp_path) -> None:
    from chatterbox_vllm.commands import write_result

    result = _result(0.5)
    with pytest.raises(
        ChatterboxError, match=r"could not write /proc/x\.wav .*kept in (\S+\.wav)"
    ) as info:
        write_result(result, "/proc/x.wav")
    kept = str(info.value).rsplit("kept in ", 1)[1]
    audio, rate = soundfile.read(kept)
    assert rate == RATE and len(audio) == RATE // 2


def test_a_write_that_fails_midway_leaves_an_existing_file_as_it_was(tmp_path, monkeypatch) -> None:
    """An existing file is replaced only by a whole new one: a write that fails or is interrupted
    midway (a full disk, Ctrl-C) leaves the old file, and no partial one (it truncated the old
    file and left half of the new). Permissions of the file replaced are kept."""
    import chatterbox_vllm.audio as audio_module

    existing = save_audio(tmp_path / "take.wav", _tone(0.25), RATE)
    existing.chmod(0o600)
    before = existing.read_bytes()

    def half_then_fail(file, waveform, sample_rate, fmt) -> None:  # type: ignore[no-untyped-def]
        file.write(b"RIFF" + b"\0" * 100)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(audio_module, "encode_audio", half_then_fail)
        with pytest.raises(KeyboardInterrupt):
            save_audio(existing, _tone(1.0), RATE)
    assert existing.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.wav"]
    save_audio(existing, _tone(1.0), RATE)  # a whole write replaces it
    assert len(soundfile.read(existing)[0]) == RATE
    assert existing.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.wav"]


def test_device_check_names_the_missing_gpu_and_the_cpu_way(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(preflight, "cpu_platform_installed", lambda: False)
    with pytest.raises(ChatterboxError, match="no NVIDIA GPU.*vLLM 0.9.2 needs one.*--device cpu"):
        preflight.check_device(None)
    with pytest.raises(ChatterboxError, match="device 'cuda': no NVIDIA GPU"):
        preflight.check_device("cuda")
    monkeypatch.setattr(preflight, "cpu_platform_installed", lambda: True)
    assert preflight.check_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert preflight.check_device(None) == "cuda"


def test_from_local_checks_the_device_and_the_vocoder_before_loading(
    tiny_checkpoint, monkeypatch
) -> None:
    """As the CLI does: a machine without a GPU for device='cuda' was torch's bare RuntimeError
    ('Found no NVIDIA driver'), and an unknown vocoder an audio error once T3's engine had
    started (half a minute on a CPU)."""
    import time

    from chatterbox_vllm import ChatterboxTTS
    from chatterbox_vllm.errors import InvalidParameterError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    started = time.perf_counter()
    with pytest.raises(ChatterboxError, match="device 'cuda': no NVIDIA GPU.*device='cpu'"):
        ChatterboxTTS.from_local(tiny_checkpoint, device="cuda")
    with pytest.raises(InvalidParameterError, match="vocoder 'nope' is not available; use one of"):
        ChatterboxTTS.from_local(tiny_checkpoint, device="cpu", vocoder="nope")
    assert time.perf_counter() - started < 5  # nothing loaded


def test_speak_keeps_the_finished_chunks_of_an_interrupted_text_beside_its_output(
    tmp_path, capsys
) -> None:
    from chatterbox_vllm.commands import keep_partial_result

    partial = GenerationResult(
        waveform=_tone(0.5),
        sample_rate=RATE,
        text="One. Two. Three.",
        chunks=("One.", "Three."),
        speech_tokens=(),
        chunk_samples=(RATE // 4, RATE // 4),
        watermarked=False,
    )
    where = keep_partial_result(partial, ("Two.",), str(tmp_path / "chapter.flac"))
    assert where == str(tmp_path / "chapter.partial.flac")
    audio, rate = soundfile.read(where)
    assert rate == RATE and len(audio) == RATE // 2
    assert not (tmp_path / "chapter.flac").exists()
    message = capsys.readouterr().err
    assert "2 of 3 chunk(s) were finished (0.50 s of audio) and are kept in" in message
    assert "without the 1 unfinished one(s) (the first of those: 'Two.')" in message
    assert keep_partial_result(None, ("One.",), str(tmp_path / "x.wav")) is None
    assert "nothing was written" in capsys.readouterr().err
