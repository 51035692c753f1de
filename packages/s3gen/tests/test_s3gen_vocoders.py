"""The vocoder registry and the built-in backends (the ONNX one is in test_s3gen_onnx.py)."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3Gen, available_vocoders, get_vocoder, register_vocoder
from chatterbox_s3gen.audio import S3GenMelSpectrogram
from chatterbox_s3gen.vocoders import (
    _REGISTERED,
    GriffinLimVocoder,
    HiFTTorchVocoder,
    VocoderContext,
)


def test_builtin_names_and_unknown_name_error() -> None:
    assert {"hift-torch", "hift-onnx", "griffin-lim"} <= set(available_vocoders())
    with pytest.raises(
        ValueError,
        match=r"unknown vocoder 'bigvgan'; available: .*griffin-lim.*hift-onnx.*hift-torch",
    ):
        get_vocoder("bigvgan")


def test_hift_torch_needs_weights(tiny_checkpoint: Path, s3gen: S3Gen) -> None:
    with pytest.raises(ValueError, match="hift-torch needs S3Gen's HiFT weights"):
        get_vocoder("hift-torch")
    standalone = get_vocoder("hift-torch", checkpoint=tiny_checkpoint)
    assert isinstance(standalone, HiFTTorchVocoder)
    mels = torch.randn(2, 80, 20, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([20, 7])
    ours = s3gen.vocoder.vocode(mels, lengths, seeds=[4, 5])  # type: ignore[call-arg]
    theirs = standalone.vocode(mels, lengths, seeds=[4, 5])
    assert [w.numel() for w in ours] == [20 * 480, 7 * 480]
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_hift_torch_rejects_bad_mels(s3gen: S3Gen) -> None:
    vocoder = s3gen.vocoder
    with pytest.raises(ValueError, match=r"\[batch, 80, frames\]"):
        vocoder.vocode(torch.zeros(80, 10), torch.tensor([10]))
    with pytest.raises(ValueError, match="mel_lengths has 1 entries for a batch of 2"):
        vocoder.vocode(torch.zeros(2, 80, 10), torch.tensor([10]))
    with pytest.raises(ValueError, match=r"mel_lengths must lie in \[1, 10\]"):
        vocoder.vocode(torch.zeros(1, 80, 10), torch.tensor([11]))


def test_griffin_lim_inverts_a_tone_without_weights() -> None:
    sample_rate = 24_000
    t = torch.arange(sample_rate) / sample_rate
    onset = torch.sigmoid(200 * (t - 0.5))
    wav = 0.5 * torch.sin(2 * math.pi * 440 * t) * onset
    mel = S3GenMelSpectrogram()(wav.unsqueeze(0))
    vocoder = get_vocoder("griffin-lim")
    assert isinstance(vocoder, GriffinLimVocoder)
    (out,) = vocoder.vocode(mel, torch.tensor([mel.shape[2]]))
    assert out.shape == (50 * 480,)
    assert torch.equal(out, vocoder.vocode(mel, torch.tensor([mel.shape[2]]))[0])  # deterministic
    spectrum = torch.fft.rfft(out[12_500:])
    peak = torch.fft.rfftfreq(out[12_500:].numel(), 1 / sample_rate)[spectrum.abs().argmax()]
    assert abs(float(peak) - 440) < 30
    # Time alignment: the onset is at 0.5 s in both (within a 10 ms block).
    envelope = out.abs().unfold(0, 240, 240).amax(dim=1)
    assert int((envelope > 0.25).nonzero()[0]) * 240 == 12_000


def test_griffin_lim_drives_s3gen(tiny_checkpoint: Path, voice_a, tokens) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint, vocoder="griffin-lim")
    (wav,) = model.synthesize([tokens(6, 0)], [voice_a])
    assert wav.numel() == 6 * 2 * 480 and bool(torch.isfinite(wav).all())


class _SilentVocoder:
    """A third-party vocoder: no seeds argument, returns zeros of the right length."""

    def __init__(self, gain: float = 0.0) -> None:
        self.gain = gain
        self.calls = 0

    @property
    def sample_rate(self) -> int:
        return 24_000

    @property
    def hop_length(self) -> int:
        return 480

    def vocode(self, mels: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        return [torch.full((int(n) * 480,), self.gain) for n in mel_lengths]


def test_register_and_use_a_custom_vocoder(tiny_checkpoint: Path, voice_a, tokens) -> None:
    register_vocoder("silent-test", lambda context, gain=0.0: _SilentVocoder(gain))
    try:
        assert "silent-test" in available_vocoders()
        with pytest.raises(ValueError, match="already registered"):
            register_vocoder("silent-test", lambda context: _SilentVocoder())
        with pytest.raises(ValueError, match="already registered"):
            register_vocoder("hift-torch", lambda context: _SilentVocoder())
        model = S3Gen.from_checkpoint(
            tiny_checkpoint, vocoder="silent-test", vocoder_options={"gain": 0.5}
        )
        (wav,) = model.synthesize([tokens(4, 0)], [voice_a])
        assert wav.numel() == 4 * 2 * 480
        assert float(wav[-1]) == 0.5 and float(wav[0]) == 0.0  # the fade-in still applies
        instance = _SilentVocoder(0.25)
        model.vocoder = instance
        model.synthesize([tokens(4, 0)], [voice_a])
        assert instance.calls == 1
    finally:
        _REGISTERED.pop("silent-test", None)


def test_vocoder_with_the_wrong_rate_is_rejected() -> None:
    class Wrong(_SilentVocoder):
        @property
        def sample_rate(self) -> int:
            return 22_050

    register_vocoder("wrong-rate-test", lambda context: Wrong())
    try:
        with pytest.raises(ValueError, match="22050 Hz"):
            get_vocoder("wrong-rate-test")
    finally:
        _REGISTERED.pop("wrong-rate-test", None)


def test_entry_point_vocoders_are_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package declaring ``[project.entry-points."chatterbox_s3gen.vocoders"]`` is found by name."""
    (tmp_path / "plugin_vocoder_s3gen_test.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Plugin:
                sample_rate = 24000
                hop_length = 480

                def __init__(self, context, level=0.1):
                    self.context, self.level = context, level

                def vocode(self, mels, mel_lengths):
                    return [torch.full((int(n) * 480,), self.level) for n in mel_lengths]
            """
        )
    )
    dist = tmp_path / "plugin_vocoder_s3gen_test-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: plugin-vocoder-s3gen-test\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[chatterbox_s3gen.vocoders]\nplugin-test = plugin_vocoder_s3gen_test:Plugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin-test" in available_vocoders()
    vocoder = get_vocoder("plugin-test", VocoderContext(), level=0.3)
    (wav,) = vocoder.vocode(torch.zeros(1, 80, 3), torch.tensor([3]))
    assert wav.shape == (1440,) and float(wav[0]) == pytest.approx(0.3)
    sys.modules.pop("plugin_vocoder_s3gen_test", None)
