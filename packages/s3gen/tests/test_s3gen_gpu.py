"""CUDA checks (``-m gpu``; skipped without a GPU): the padded batch equals unbatched runs on the
GPU too, CUDA float32 agrees with CPU float32, low-precision flows stay finite and close, and the
vocoder noise is reproducible per seed on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3Gen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def gpu_model(tiny_checkpoint: Path) -> S3Gen:
    return S3Gen.from_checkpoint(tiny_checkpoint, device="cuda")


def test_cuda_float32_matches_cpu(gpu_model: S3Gen, s3gen: S3Gen, voice_a, tokens) -> None:
    ids = tokens(40, 1)
    cpu_mel = s3gen.synthesize_mels([ids], [voice_a])[0]
    gpu_voice = voice_a.to("cuda")
    gpu_mel = gpu_model.synthesize_mels([ids], [gpu_voice])[0].cpu()
    # TF32 may be on for matmuls on Ampere+ GPUs: compare loosely.
    assert float((gpu_mel - cpu_mel).abs().max() / cpu_mel.abs().max()) < 1e-2
    gpu_embed = gpu_model.embed_ref(torch.sin(torch.arange(24_000) * 0.05) * 0.3, 24_000)
    assert gpu_embed.device.type == "cuda"


def test_cuda_batch_equals_unbatched(gpu_model: S3Gen, voice_a, voice_b, tokens) -> None:
    sequences = [tokens(n, n) for n in (3, 50, 21, 37)]
    voices = [voice_a, voice_b, voice_a, voice_b]
    batched = gpu_model.synthesize(sequences, voices, seeds=[1, 2, 3, 4])
    for ids, voice, seed, wav in zip(sequences, voices, [1, 2, 3, 4], batched):
        (alone,) = gpu_model.synthesize([ids], [voice], seeds=[seed])
        torch.testing.assert_close(wav, alone, rtol=0, atol=1e-4)
    again = gpu_model.synthesize(sequences, voices, seeds=[1, 2, 3, 4])
    for a, b in zip(batched, again):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision(
    tiny_checkpoint: Path, gpu_model: S3Gen, voice_a, tokens, dtype
) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda", dtype=dtype, vocoder_dtype=dtype)
    ids = tokens(30, 2)
    reference = gpu_model.synthesize_mels([ids], [voice_a])[0]
    mel = model.synthesize_mels([ids], [voice_a])[0]
    assert bool(torch.isfinite(mel).all())
    assert float((mel - reference).abs().max() / reference.abs().max()) < 0.1
    (wav,) = model.synthesize([ids], [voice_a], seeds=[0])
    assert bool(torch.isfinite(wav).all())
