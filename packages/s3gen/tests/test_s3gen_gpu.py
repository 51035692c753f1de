"""CUDA checks (``-m gpu``; skipped without a GPU): the padded batch equals unbatched runs on the
GPU too, CUDA float32 agrees with CPU float32, low-precision flows stay finite and close, the
vocoder noise is reproducible per seed on the device, and the CUDA-graph Euler loop (row and
frame buckets, graph reuse, eviction) gives the eager mels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3Gen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(autouse=True)
def full_float32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in float32 rather than TF32 (PyTorch's default for them): TF32 keeps
    10 mantissa bits, so two batch shapes that pick different conv algorithms (a padded graph
    and an exact eager batch) differ by ~1e-4 relative from that rounding alone, which would
    hide what these tests check (padding, graphs and batching do not change the math)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def gpu_model(tiny_checkpoint: Path) -> S3Gen:
    return S3Gen.from_checkpoint(tiny_checkpoint, device="cuda", cuda_graphs=False)


@pytest.fixture(scope="module")
def graph_model(tiny_checkpoint: Path) -> S3Gen:
    model = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda")
    assert model.cuda_graphs
    return model


def _max_relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def test_graph_euler_loop_gives_the_eager_mels(
    graph_model: S3Gen, gpu_model: S3Gen, voice_a, voice_b, tokens
) -> None:
    graphs = graph_model.flow.decoder.graphs
    assert graphs is not None
    # 3 items -> 4 captured rows; 5 -> 8 (padded rows are copies, discarded); lengths that fall
    # inside one 64-frame bucket and across buckets.
    for sizes in [(3, 50, 21), (40, 41, 7, 33, 12)]:
        sequences = [tokens(n, n + 7) for n in sizes]
        voices = [voice_a if i % 2 else voice_b for i in range(len(sizes))]
        before = graphs.captures
        mels = graph_model.synthesize_mels(sequences, voices)
        assert graphs.captures == before + 1
        again = graph_model.synthesize_mels(sequences, voices)  # replay, no new capture
        assert graphs.captures == before + 1
        eager = gpu_model.synthesize_mels(sequences, voices)
        for m, e in zip(mels, eager):
            assert m.shape == e.shape
        assert _max_relative(mels, eager) < 1e-4
        for a, b in zip(mels, again):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Another step count is another graph; its result still matches eager.
    ids = [tokens(30, 3)]
    four = graph_model.synthesize_mels(ids, [voice_a], n_timesteps=4)
    assert _max_relative(four, gpu_model.synthesize_mels(ids, [voice_a], n_timesteps=4)) < 1e-4


def test_graph_waveforms_and_eviction(
    tiny_checkpoint: Path, gpu_model: S3Gen, voice_a, tokens
) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda")
    model.set_cuda_graphs(True, max_graphs=2)
    graphs = model.flow.decoder.graphs
    assert graphs is not None
    for n in (10, 80, 150, 10):  # three frame buckets through a cache of two
        ids = [tokens(n, n)]
        (wav,) = model.synthesize(ids, [voice_a], seeds=[5])
        (eager,) = gpu_model.synthesize(ids, [voice_a], seeds=[5])
        torch.testing.assert_close(wav, eager, rtol=0, atol=1e-4)
    assert len(graphs._graphs) == 2
    assert graphs.captures == 4  # the first shape was evicted and captured again
    model.set_cuda_graphs(False)
    assert not model.cuda_graphs


def test_gpu_batches_split_where_padding_would_dominate(gpu_model: S3Gen, voice_a) -> None:
    long = [list(range(200))] * 8
    short = [list(range(20))] * 3
    sequences = long + short
    batches = gpu_model._batches(
        [torch.tensor(s) for s in sequences], [voice_a] * len(sequences), None
    )
    assert [len(b) for b in batches] == [8, 3]
    assert sorted(i for b in batches for i in b) == list(range(len(sequences)))


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


def test_captured_encoder_and_hift_replay_their_eager_results(tiny_checkpoint: Path) -> None:
    """A streaming server's encoder and anchored-HiFT graphs (captured at start-up) give what
    the eager parts give for new inputs at a prepared shape, replay after replay."""
    from chatterbox_s3gen.streaming import (
        StreamingConfig,
        anchored_hift,
        prepare_stream_kernels,
    )

    model = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda")
    prepared = prepare_stream_kernels(
        model, StreamingConfig(first_chunk_tokens=8, chunk_tokens=16), 2
    )
    assert model.graph_stats()["kernel_graphs"] == prepared == 2 * 3 + 2 * 4
    encoder, vocoder = model.flow.encoder_graphs, model.anchored_hift_graphs
    assert encoder is not None and vocoder is not None
    generator = torch.Generator(device="cuda").manual_seed(0)
    hift = model.mel2wav
    harmonics = hift.num_harmonics
    for lengths in ([64, 37], [5, 64]):
        tokens = torch.randint(0, 6561, (2, 64), device="cuda", generator=generator)
        token_lengths = torch.tensor(lengths, device="cuda")
        mu, mel_lengths = (t.clone() for t in model.flow.encode(tokens, token_lengths))
        with torch.inference_mode():  # as the flow runs it (its cached tables are made so)
            eager_mu, eager_lengths = model.flow.encode_eager(tokens, token_lengths)
        assert torch.equal(mel_lengths, eager_lengths)
        torch.testing.assert_close(mu, eager_mu, rtol=1e-5, atol=1e-5)

        frames = [48, 20] if lengths[0] == 64 else [7, 48]
        inputs = (
            torch.randn(2, 80, 48, device="cuda", generator=generator) - 5,
            torch.tensor(frames, device="cuda"),
            torch.randn(2, harmonics, 48 * 480, device="cuda", generator=generator),
            torch.tensor([10, 3], device="cuda"),
            torch.rand(2, harmonics, device="cuda", dtype=torch.float64, generator=generator),
            torch.rand(2, harmonics, device="cuda", dtype=torch.float64, generator=generator),
        )
        replayed = [t.clone() for t in vocoder.run(*inputs)]
        with torch.inference_mode():
            eager = anchored_hift(hift, *inputs)
        for got, want in zip(replayed, eager):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert encoder.eager_runs == 0 and vocoder.eager_runs == 0
