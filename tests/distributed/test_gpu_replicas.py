"""ReplicatedChatterboxTTS with one replica on one GPU (run with ``nox -s gpu`` on a CUDA machine).

Checks what the CPU tests cannot: Ray gives the replica the GPU (``num_gpus=1``, its own
``CUDA_VISIBLE_DEVICES``), the engines inside the actor run on CUDA, the audio matches a
``ChatterboxTTS`` on the same GPU, and a killed replica's GPU is freed for its replacement.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from chatterbox_vllm import ChatterboxTTS, ReplicatedChatterboxTTS
from chatterbox_vllm.distributed.bench import kill_when_busy

pytestmark = pytest.mark.gpu

# float32 and eager mode: comparable numerics between the two engines, and what the GPU harness
# supports.
GPU_ENGINE = {
    "dtype": "float32",
    "cuda_graphs": "off",
    "gpu_memory_utilization": 0.3,
    "max_num_seqs": 8,
    "max_new_tokens": 200,
    "max_chunk_chars": 60,
}
CAP = 25.0
TEXT = " ".join(
    f"This is sentence {n} of a text that is long enough to keep the replica busy for a while."
    for n in ("one two three four five six seven eight nine ten eleven twelve".split())
)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    with ChatterboxTTS.from_local(tiny_checkpoint, watermark=False, **GPU_ENGINE) as tts:
        return tts.generate(TEXT, seed=3, max_tokens_per_expected_second=CAP, progress=False)


def test_one_gpu_replica_matches_chatterbox_tts_and_survives_a_kill(tiny_checkpoint, reference):
    with ReplicatedChatterboxTTS.from_local(
        tiny_checkpoint,
        replicas=1,
        address="local",
        watermark=False,
        max_chunks_per_call=4,
        **GPU_ENGINE,
    ) as tts:
        (replica,) = tts.replicas
        assert replica.info.device == "cuda" and len(replica.info.gpu_ids) == 1
        result = tts.generate(TEXT, seed=3, max_tokens_per_expected_second=CAP, progress=False)
        assert result.chunks == reference.chunks
        assert result.speech_tokens == reference.speech_tokens
        torch.testing.assert_close(result.waveform, reference.waveform, rtol=0, atol=1e-4)

        # Kill the only replica mid-call: its replacement (on the freed GPU) finishes the text.
        stop, killed = threading.Event(), []
        killer = threading.Thread(target=kill_when_busy, args=(tts, replica.name, stop, killed))
        killer.start()
        try:
            again = tts.generate(TEXT, seed=3, max_tokens_per_expected_second=CAP, progress=False)
        finally:
            stop.set()
            killer.join()
        assert killed == [replica.name]
        report = tts.last_stats.dispatch
        assert report.failed_replicas == [replica.name] and len(report.started_replicas) == 1
        assert report.duplicates_discarded == 0 and report.retried_chunks >= 1
        assert again.speech_tokens == reference.speech_tokens
        torch.testing.assert_close(again.waveform, reference.waveform, rtol=0, atol=1e-4)
