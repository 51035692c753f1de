"""T3's engine core in this process, S3Gen on a CUDA stream of its own (``-m gpu``; skipped
without a GPU).

With ``t3_process="in-process"`` the S3Gen scheduler runs its rounds on its own CUDA stream, beside
the T3 engine thread's kernels on the default stream. A missing dependency between the two
streams (a voice's tensors read before they are written, a buffer freed while a kernel still
reads it) would change the audio or fail; the same requests through the default layout (vLLM's
engine process) must give the same samples: ``generate`` and several streams at once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from chatterbox_vllm import ChatterboxTTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# float32: both layouts run the same kernels, so the samples must be equal.
GPU_ENGINE: dict[str, Any] = {
    "dtype": "float32",
    "gpu_memory_utilization": 0.2,
    "max_num_seqs": 8,
    "max_new_tokens": 120,
}
TEXTS = (
    "The first stream speaks while the others decode.",
    "A second voice of the same engine, a little longer than the first one.",
    "Third.",
    "And a fourth stream, to keep several windows in each round.",
)
OPTIONS: dict[str, Any] = {"seed": 5, "temperature": 0.8, "max_new_tokens": 90}


def _speak(tts: ChatterboxTTS) -> tuple[torch.Tensor, list[torch.Tensor]]:
    whole = tts.generate(TEXTS[0], **OPTIONS).waveform
    streamed: list[torch.Tensor | None] = [None] * len(TEXTS)

    def listen(index: int) -> None:
        chunks = [chunk.waveform for chunk in tts.stream(TEXTS[index], **OPTIONS)]
        streamed[index] = torch.cat(chunks)

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(len(TEXTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(s is not None for s in streamed), "a stream did not finish"
    return whole, [s for s in streamed if s is not None]


def test_s3gen_on_its_own_stream_gives_the_default_layouts_audio(tiny_checkpoint: Path) -> None:
    with ChatterboxTTS.from_local(tiny_checkpoint, **GPU_ENGINE) as tts:
        assert not tts.scheduler.own_cuda_stream
        expected_whole, expected_streams = _speak(tts)
    with ChatterboxTTS.from_local(tiny_checkpoint, t3_process="in-process", **GPU_ENGINE) as tts:
        assert tts.scheduler.own_cuda_stream
        whole, streams = _speak(tts)
    assert torch.equal(whole, expected_whole)
    for index, (got, expected) in enumerate(zip(streams, expected_streams)):
        assert torch.equal(got, expected), f"stream {index} differs between the layouts"
