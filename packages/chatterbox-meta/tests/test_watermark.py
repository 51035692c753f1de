"""The watermark switch: Perth when importable, off on request, any object with apply_watermark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chatterbox_vllm import watermark
from chatterbox_vllm.watermark import apply_watermark, resolve_watermarker


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def apply_watermark(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        self.calls.append((wav.size, sample_rate))
        return wav * 0.5


def test_false_turns_it_off_and_objects_are_used_as_given() -> None:
    assert resolve_watermarker(False) is None
    recorder = Recorder()
    assert resolve_watermarker(recorder) is recorder
    marked = apply_watermark(recorder, torch.ones(480), 24_000)
    assert recorder.calls == [(480, 24_000)]
    assert marked.dtype == torch.float32 and torch.equal(marked, torch.full((480,), 0.5))
    with pytest.raises(TypeError, match="apply_watermark"):
        resolve_watermarker("perth")  # type: ignore[arg-type]


def test_default_follows_whether_perth_is_installed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(watermark, "perth_available", lambda: False)
    with caplog.at_level("WARNING"):
        assert resolve_watermarker(None) is None
    assert "NOT watermarked" in caplog.text
    with pytest.raises(ImportError, match=r"chatterbox-vllm\[watermark\]"):
        resolve_watermarker(True)
    recorder = Recorder()
    monkeypatch.setattr(watermark, "perth_available", lambda: True)
    monkeypatch.setattr(watermark, "load_perth_watermarker", lambda: recorder)
    assert resolve_watermarker(None) is recorder
    assert resolve_watermarker(True) is recorder
