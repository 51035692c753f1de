"""Streaming windows with bounded cost: the whole-utterance window, bounded left context and
prompt share, the fixed set of flow shapes, and plug-in vocoders on the streaming path.

Every expectation comes from :meth:`S3Gen.synthesize` / :meth:`S3Gen.synthesize_mels` (the
whole-utterance path that matches the reference), never from the streaming code itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3Gen, S3GenError, S3GenReference
from chatterbox_s3gen.errors import ConfigurationError
from chatterbox_s3gen.hift import draw_source_noise
from chatterbox_s3gen.streaming import (
    S3GenStream,
    StreamingConfig,
    prepare_stream_graphs,
    prepare_stream_kernels,
    stream_flow_shapes,
    stream_kernel_shapes,
    stream_source_noise,
    synthesize_windows,
)
from chatterbox_s3gen.vocoders import GriffinLimVocoder, register_vocoder
from vllm_cpu_test_support.signals import chirp

HOP = 480
Tokens = Callable[[int, int], list[int]]


@pytest.fixture(scope="module")
def voice_long(s3gen: S3Gen) -> S3GenReference:
    """A 3 s voice: 75 prompt tokens, more than the default ``prompt_tokens`` (50)."""
    voice = s3gen.embed_ref(chirp(3.0, 16_000, seed=2), 16_000)
    assert voice.num_prompt_tokens > StreamingConfig().prompt_tokens  # type: ignore[operator]
    return voice


@pytest.fixture(scope="module")
def voice_odd(s3gen: S3Gen, tone) -> S3GenReference:
    voice = s3gen.embed_ref(tone(1.5, 24_000, (180.0, 360.0), seed=4), 24_000)
    assert voice.num_prompt_frames % 2 == 1
    return voice


def drive(
    model: S3Gen,
    streams: list[S3GenStream],
    token_lists: list[list[int]],
    rate: int = 9,
    bucket: bool | None = None,
):
    """Advance streams together (tokens arrive ``rate`` per round), every round's ready windows
    in one synthesize_windows call; returns each stream's chunks."""
    out: list[list[torch.Tensor]] = [[] for _ in streams]
    by_id = {s.stream_id: i for i, s in enumerate(streams)}
    while not all(s.done for s in streams):
        windows = []
        for i, (stream, ids) in enumerate(zip(streams, token_lists)):
            if stream.num_tokens < len(ids):
                stream.add_tokens(ids[stream.num_tokens : stream.num_tokens + rate])
            elif not stream.finished:
                stream.end_of_tokens()
            window = stream.next_window()
            if window is not None:
                windows.append(window)
            elif stream.finished and stream.pending is None and not stream.done:
                out[i] += stream.flush()
        for result in synthesize_windows(model, windows, bucket=bucket):
            i = by_id[result.stream_id]
            out[i] += streams[i].accept(result)
    return out


@torch.inference_mode()
def whole_reference(s3gen: S3Gen, ids: list[int], voice: S3GenReference, seed: int):
    """Whole-utterance mel and waveform with the stream's vocoder randomness."""
    (mel,) = s3gen.synthesize_mels([ids], [voice])
    harmonics = s3gen.mel2wav.num_harmonics
    frames = mel.shape[1]
    phases, _ = draw_source_noise([0], [seed], harmonics)
    noise = stream_source_noise(seed, 0, frames * HOP, harmonics)[None]
    wav = s3gen.mel2wav(mel[None], torch.tensor([frames]), phases, noise)[0].float()
    fade = s3gen.trim_fade.to("cpu")
    wav[: fade.numel()] *= fade[: wav.numel()]
    return mel, wav


# -- whole-utterance windows ------------------------------------------------------------------------


def test_whole_window_equals_synthesize_exactly(s3gen, voice_a, voice_odd, tokens) -> None:
    n_timesteps = 3
    for voice, n, seed in [(voice_a, 57, 5), (voice_odd, 23, 9)]:
        ids = tokens(n, seed)
        (expected,) = s3gen.synthesize([ids], [voice], n_timesteps=n_timesteps, seeds=[seed])
        stream = S3GenStream(
            s3gen, voice, seed=seed, n_timesteps=n_timesteps, config=StreamingConfig(whole=True)
        )
        stream.add_tokens(ids)
        assert stream.next_window() is None  # nothing before end_of_tokens
        stream.end_of_tokens()
        window = stream.next_window()
        assert window is not None and window.whole and window.final
        (result,) = synthesize_windows(s3gen, [window])
        chunks = stream.accept(result)
        assert stream.next_window() is None
        chunks += stream.flush()
        assert len(chunks) == 1 and stream.done
        assert torch.equal(chunks[0], expected)


def test_whole_windows_batched_with_streamed_ones(s3gen, voice_a, voice_long, tokens) -> None:
    """Whole windows of two requests in the same batches as two streamed utterances: each whole
    result equals its synthesize() call to float rounding (padding is masked)."""
    whole_ids = [tokens(44, 1), tokens(71, 2)]
    whole_voices = [voice_long, voice_a]
    streamed_ids = [tokens(90, 3), tokens(130, 4)]
    streams = [
        S3GenStream(s3gen, v, seed=10 + i, n_timesteps=3, config=StreamingConfig(whole=True))
        for i, v in enumerate(whole_voices)
    ] + [
        S3GenStream(s3gen, v, seed=20 + i, n_timesteps=3)
        for i, v in enumerate([voice_a, voice_long])
    ]
    out = drive(s3gen, streams, whole_ids + streamed_ids)
    expected = s3gen.synthesize(whole_ids, whole_voices, n_timesteps=3, seeds=[10, 11])
    for chunks, wav in zip(out[:2], expected):
        assert len(chunks) == 1
        torch.testing.assert_close(chunks[0], wav, rtol=0, atol=1e-5)
    for chunks, ids in zip(out[2:], streamed_ids):
        assert sum(c.numel() for c in chunks) == 2 * len(ids) * HOP


# -- bounded windows -----------------------------------------------------------------------------------


def test_bounded_windows_stay_close_and_exact_in_length(s3gen, voice_long, tokens) -> None:
    """A 12 s utterance after a 3 s voice: every window re-runs at most prompt_tokens +
    left_context_tokens + chunk_tokens + lookahead_tokens tokens (not the growing history),
    later windows start mid-utterance on the last 50 prompt tokens, and the audio stays within
    the README's bound of whole-utterance synthesis (its table: peak 1.4e-2, rms 2.7e-3
    for a 16 s utterance after the same voice)."""
    cfg = StreamingConfig()
    assert cfg.left_context_tokens is not None and cfg.prompt_tokens is not None
    bound = cfg.prompt_tokens + cfg.left_context_tokens + cfg.chunk_tokens + cfg.lookahead_tokens
    ids = tokens(300, 17)
    mel, expected = whole_reference(s3gen, ids, voice_long, seed=4)
    stream = S3GenStream(s3gen, voice_long, seed=4, config=cfg)
    stream.add_tokens(ids)
    stream.end_of_tokens()
    chunks: list[torch.Tensor] = []
    starts = []
    while (window := stream.next_window()) is not None:
        assert window.flow_tokens().numel() <= bound
        assert window.prompt_tokens == cfg.prompt_tokens
        starts.append(window.token_start)
        (result,) = synthesize_windows(s3gen, [window])
        # the window's mel is the whole mel's frames, to the streaming error
        reference = mel[:, window.mel_start : window.mel_stop]
        assert float((result.mel - reference).abs().max() / mel.abs().max()) < 0.4
        chunks += stream.accept(result)
    chunks += stream.flush()
    assert max(starts) > 0  # the left context really was cut
    wav = torch.cat(chunks)
    assert wav.numel() == expected.numel() == 2 * len(ids) * HOP
    diff = wav - expected
    peak = float(diff.abs().max() / expected.abs().max())
    rms = float(diff.pow(2).mean().sqrt() / expected.pow(2).mean().sqrt())
    print(f"bounded windows vs whole: peak {peak:.2e} rms {rms:.2e}")
    assert peak < 4e-2 and rms < 6e-3
    steps = (wav[1:] - wav[:-1]).abs()
    joins = torch.cumsum(torch.tensor([c.numel() for c in chunks]), 0)[:-1]
    assert float(steps[joins - 1].max()) <= float(torch.quantile(steps, 0.99))


@pytest.mark.parametrize("n", [1, 20, 61, 133])
def test_bounded_windows_length_with_odd_prompt(s3gen, voice_odd, tokens, n) -> None:
    cfg = StreamingConfig(first_chunk_tokens=8, chunk_tokens=16, left_context_tokens=9)
    ids = tokens(n, n)
    (expected,) = s3gen.synthesize([ids], [voice_odd], seeds=[0], n_timesteps=2)
    stream = S3GenStream(s3gen, voice_odd, seed=0, n_timesteps=2, config=cfg)
    (chunks,) = drive(s3gen, [stream], [ids], rate=5)
    assert sum(c.numel() for c in chunks) == expected.numel()


def test_unbounded_config_reruns_the_history(s3gen, voice_a, tokens) -> None:
    """left_context_tokens=None, prompt_tokens=None: the previous behaviour (every window
    re-runs the prompt and all tokens so far), whose final window is the whole flow."""
    cfg = StreamingConfig(left_context_tokens=None, prompt_tokens=None)
    ids = tokens(80, 3)
    stream = S3GenStream(s3gen, voice_a, n_timesteps=2, config=cfg)
    stream.add_tokens(ids)
    stream.end_of_tokens()
    while (window := stream.next_window()) is not None:
        assert window.token_start == 0
        assert window.flow_tokens().numel() == voice_a.num_prompt_tokens + len(window.tokens)
        (result,) = synthesize_windows(s3gen, [window])
        stream.accept(result)
    assert window is None and result is not None
    (whole,) = s3gen.synthesize_mels([ids], [voice_a], n_timesteps=2)
    torch.testing.assert_close(result.mel, whole[:, -result.mel.shape[1] :], rtol=0, atol=2e-5)


# -- the fixed shape set ---------------------------------------------------------------------------------


def test_mixed_streams_use_only_prepared_shapes(
    tiny_checkpoint: Path, s3gen, voice_a, voice_long, voice_odd, tokens
) -> None:
    """After prepare_stream_graphs (capture=False on CPU: the same bookkeeping), five streams of
    mixed lengths, voices and arrival rates batched together (bucketed, as on CUDA) run every
    flow batch on a prepared shape and meet no encoder or HiFT shape the warm-up did not run:
    nothing eager, nothing captured, nothing cold after sealing; the padded static-buffer solves
    give the unprepared model's audio."""
    model = S3Gen.from_checkpoint(tiny_checkpoint)
    cfg = StreamingConfig()
    report = prepare_stream_graphs(model, cfg, max_rows=4, n_timesteps=2)
    assert report.shapes == tuple(stream_flow_shapes(cfg, 4))
    assert report.captures == len(report.shapes) == 18  # rows 1, 2, 4 x frames 64..384
    # rows 1, 2, 4 x (encoder: tokens 32..192 (the longest window's 178); HiFT: frames 16..240
    # (the longest window's 2 x 103 + 8 + 10 + 1 = 225))
    assert report.warmed == 3 * 6 + 3 * 15
    stats = model.graph_stats()
    assert stats["sealed"] and stats["captures"] == 18
    voices = [voice_a, voice_long, voice_odd, voice_long, voice_a]
    token_lists = [tokens(n, 40 + n) for n in (30, 210, 97, 5, 160)]

    def streams(on: S3Gen) -> list[S3GenStream]:
        return [S3GenStream(on, v, seed=i, n_timesteps=2) for i, v in enumerate(voices)]

    prepared = drive(model, streams(model), token_lists, rate=7, bucket=True)
    stats = model.graph_stats()
    assert stats["eager_after_seal"] == 0 and stats["captures_after_seal"] == 0
    assert stats["captures"] == 18 and stats["cold_shapes_after_seal"] == 0
    plain = drive(s3gen, streams(s3gen), token_lists, rate=7)
    for a, b in zip(prepared, plain):
        assert [c.numel() for c in a] == [c.numel() for c in b]
        torch.testing.assert_close(torch.cat(a), torch.cat(b), rtol=0, atol=2e-5)
    # A whole-utterance window longer than every prepared shape runs eagerly and is counted.
    whole = S3GenStream(model, voice_a, seed=1, n_timesteps=2, config=StreamingConfig(whole=True))
    (chunks,) = drive(model, [whole], [tokens(200, 5)])
    assert model.graph_stats()["eager_after_seal"] == 1
    assert model.graph_stats()["captures_after_seal"] == 0
    (expected,) = s3gen.synthesize([tokens(200, 5)], [voice_a], n_timesteps=2, seeds=[1])
    assert torch.equal(chunks[0], expected)


def test_warm_up_runs_every_eager_shape_and_later_ones_are_counted_cold(
    tiny_checkpoint: Path, voice_a, tokens
) -> None:
    """The warm-up itself (on CUDA by default) runs on any device; a shape a server meets that
    it did not run is counted once in graph_stats (what /metrics reports)."""
    model = S3Gen.from_checkpoint(tiny_checkpoint)
    cfg = StreamingConfig(first_chunk_tokens=8, chunk_tokens=16)
    encoder, vocoder = stream_kernel_shapes(cfg, 1, max_frames=model.max_frames)
    # flow tokens up to 50 + 25 + 16 + 3 = 94 -> 96; frames up to 2 x 19 + 8 + 10 + 1 = 57 -> 64
    assert encoder == [(1, 32), (1, 64), (1, 96)]
    assert vocoder == [(1, 16), (1, 32), (1, 48), (1, 64)]
    assert prepare_stream_kernels(model, cfg, 1, run=True) == 7
    assert model.graph_stats()["cold_shapes_after_seal"] == 0
    # Two streams in one round: rows 2, which a warm-up for one row did not run.
    streams = [S3GenStream(model, voice_a, seed=i, n_timesteps=2, config=cfg) for i in range(2)]
    drive(model, streams, [tokens(30, 1), tokens(30, 2)], rate=30, bucket=True)
    cold = model.graph_stats()["cold_shapes_after_seal"]
    assert cold == len(model.warm_shapes.encoder) + len(model.warm_shapes.vocoder) - 7 > 0
    with pytest.raises(ValueError, match="max_rows"):
        stream_kernel_shapes(cfg, 0)


def test_a_failing_warm_up_leaves_the_rest_cold_and_the_model_usable(
    tiny_checkpoint: Path, voice_a, tokens, monkeypatch, caplog
) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint)
    cfg = StreamingConfig(first_chunk_tokens=8, chunk_tokens=16)
    forward = model.mel2wav.forward

    def out_of_memory(mel, *args, **kwargs):
        if mel.shape[2] == 48:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(mel, *args, **kwargs)

    monkeypatch.setattr(model.mel2wav, "forward", out_of_memory)
    with caplog.at_level("WARNING", logger="chatterbox_s3gen.graphs"):
        assert prepare_stream_kernels(model, cfg, 1, run=True) == 3 + 2  # HiFT stopped at 48
    assert "anchored HiFT stopped at [(1, 80, 48)" in caplog.text
    assert "(CUDA out of memory (simulated))" in caplog.text
    monkeypatch.setattr(model.mel2wav, "forward", forward)
    stream = S3GenStream(model, voice_a, seed=0, n_timesteps=2, config=cfg)
    (chunks,) = drive(model, [stream], [tokens(30, 1)], rate=30, bucket=True)
    assert sum(c.numel() for c in chunks) > 0
    assert model.graph_stats()["cold_shapes_after_seal"] >= 1  # the 48- or 64-frame batches


def test_stream_flow_shapes_are_bounded() -> None:
    default = stream_flow_shapes(StreamingConfig(), 64)
    assert len(default) == 42  # rows 1..64 (7) x frames 64, 128, ..., 384
    assert max(f for _, f in default) == 384
    assert {r for r, _ in stream_flow_shapes(StreamingConfig(), 5)} == {1, 2, 4, 8}
    # the first window on the whole prompt: shapes cover the longest (10 s) prompt
    full_first = stream_flow_shapes(StreamingConfig(first_window_full_prompt=True), 1)
    assert max(f for _, f in full_first) >= 2 * (250 + 16)
    with pytest.raises(ConfigurationError, match="left_context_tokens"):
        stream_flow_shapes(StreamingConfig(left_context_tokens=None), 8)
    with pytest.raises(ValueError, match="max_rows"):
        stream_flow_shapes(StreamingConfig(), 0)


# -- vocoder plug-ins -----------------------------------------------------------------------------------


class _Recording:
    """Griffin-Lim that records what it was asked to vocode."""

    def __init__(self) -> None:
        self.inner = GriffinLimVocoder(n_iter=4)
        self.calls: list[list[int]] = []

    sample_rate = 24_000
    hop_length = HOP

    def vocode(self, mels: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]:
        self.calls.append([int(n) for n in mel_lengths])
        return self.inner.vocode(mels, mel_lengths)


def test_streaming_uses_a_plugin_vocoder(tiny_checkpoint: Path, voice_a, tokens) -> None:
    recording = _Recording()
    register_vocoder("test-recording", lambda context: recording, replace=True)
    model = S3Gen.from_checkpoint(tiny_checkpoint, vocoder="test-recording")
    ids = tokens(120, 6)
    stream = S3GenStream(model, voice_a, seed=2, n_timesteps=2)
    (chunks,) = drive(model, [stream], [ids], rate=200)
    assert sum(c.numel() for c in chunks) == 2 * len(ids) * HOP
    assert len(recording.calls) == len(chunks) >= 3  # one vocoder call per window
    # every window's mel, with the vocoder's left context: 2 frames per kept token + context
    assert recording.calls[0] == [2 * StreamingConfig().first_chunk_tokens]
    # its audio, not HiFT's: the whole-window path equals synthesize with the plug-in
    recording.calls.clear()
    whole = S3GenStream(model, voice_a, seed=2, n_timesteps=2, config=StreamingConfig(whole=True))
    (whole_chunks,) = drive(model, [whole], [ids], rate=200)
    (expected,) = model.synthesize([ids], [voice_a], n_timesteps=2, seeds=[2])
    assert torch.equal(whole_chunks[0], expected)
    assert len(recording.calls) == 2  # one for the whole window, one for synthesize


# -- config errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"left_context_tokens": 8}, ValueError, "left_context_tokens"),  # 16 < 8 + 4 + 6 frames
        ({"left_context_tokens": -1}, ValueError, "left_context_tokens"),
        ({"prompt_tokens": -5}, ValueError, "prompt_tokens"),
        ({"prompt_tokens": 2.5}, TypeError, "prompt_tokens"),
        ({"whole": 1}, TypeError, "whole"),
        ({"first_window_full_prompt": "no"}, TypeError, "first_window_full_prompt"),
    ],
)
def test_bad_bounded_configs_name_the_field(kwargs, error, field) -> None:
    with pytest.raises(error, match=rf"StreamingConfig\.{field}") as raised:
        StreamingConfig(**kwargs)
    assert isinstance(raised.value, S3GenError)
