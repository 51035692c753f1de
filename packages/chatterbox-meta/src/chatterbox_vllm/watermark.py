"""Optional Perth watermark, applied to every generated waveform as the reference does.

The reference always runs ``perth.PerthImplicitWatermarker().apply_watermark(wav, sample_rate=24000)``
on its output. Here it is on by default when ``resemble-perth`` is importable (install the
``chatterbox-vllm[watermark]`` extra) and off otherwise (logged once); ``watermark=False`` on
:class:`~chatterbox_vllm.ChatterboxTTS` turns it off explicitly.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)


class Watermarker(Protocol):
    """Anything with perth's ``apply_watermark`` signature."""

    def apply_watermark(self, wav: np.ndarray, sample_rate: int) -> np.ndarray: ...


def perth_available() -> bool:
    return importlib.util.find_spec("perth") is not None


def load_perth_watermarker() -> Watermarker:
    """Perth's implicit (neural) watermarker, as the reference uses."""
    import perth

    watermarker_class = getattr(perth, "PerthImplicitWatermarker", None)
    if watermarker_class is None:
        raise ImportError(
            "resemble-perth is installed but PerthImplicitWatermarker failed to import "
            "(it needs librosa and setuptools' pkg_resources): install chatterbox-vllm[watermark]"
        )
    return watermarker_class()


def resolve_watermarker(watermark: bool | None | Watermarker) -> Watermarker | None:
    """``None``: Perth if importable; ``True``: Perth or an ImportError; ``False``: none; an object
    with ``apply_watermark``: that object."""
    if watermark is False:
        logger.info("watermarking disabled (watermark=False)")
        return None
    if watermark is None:
        if not perth_available():
            logger.warning(
                "resemble-perth is not installed: output is NOT watermarked "
                "(install chatterbox-vllm[watermark] to match the reference)"
            )
            return None
        return load_perth_watermarker()
    if watermark is True:
        if not perth_available():
            raise ImportError(
                "watermark=True needs resemble-perth: pip install 'chatterbox-vllm[watermark]'"
            )
        return load_perth_watermarker()
    if callable(getattr(watermark, "apply_watermark", None)):
        return watermark
    raise TypeError(
        "watermark must be True, False, None or an object with apply_watermark(wav, sample_rate)"
    )


def apply_watermark(
    watermarker: Watermarker, waveform: torch.Tensor, sample_rate: int
) -> torch.Tensor:
    marked = watermarker.apply_watermark(
        waveform.detach().to("cpu", torch.float32).numpy(), sample_rate=sample_rate
    )
    return torch.from_numpy(np.ascontiguousarray(marked, dtype=np.float32)).reshape(-1)
