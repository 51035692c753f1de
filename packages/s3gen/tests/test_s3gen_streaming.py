"""Streaming synthesis (chatterbox_s3gen.streaming) against the non-streamed path.

The non-streamed comparison is always built from :meth:`S3Gen.synthesize_mels` (the flow that
matches the reference to ~3e-7) and HiFT run once over the whole mel. Its vocoder randomness is
the same as the stream's (the seed's reference phases, noise from ``stream_source_noise`` over the
whole length), so differences measure streaming, not different noise draws. The tiny random
model's F0 predictor outputs < 1 Hz (all unvoiced: the excitation is pure noise), so the sine
phase carry is also tested on a copy whose F0 head is set to a voiced 155-200 Hz."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3Gen, S3GenError, S3GenInputError, S3GenReference, streaming
from chatterbox_s3gen.hift import draw_source_noise
from chatterbox_s3gen.streaming import (
    NOISE_BLOCK_SAMPLES,
    S3GenStream,
    SourceNoise,
    StreamingConfig,
    StreamStateError,
    StreamWindow,
    WindowResult,
    flow_windows,
    stream_source_noise,
    stream_synthesize,
    synthesize_windows,
    vocode_windows,
)

HOP = 480
Tokens = Callable[[int, int], list[int]]


@torch.inference_mode()
def non_streamed(
    s3gen: S3Gen, ids: list[int], voice: S3GenReference, seed: int, n_timesteps: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mel, waveform) of the whole utterance at once, with the stream's vocoder randomness."""
    (mel,) = s3gen.synthesize_mels([ids], [voice], n_timesteps=n_timesteps)
    return mel, vocode_whole(s3gen, mel, seed)


@torch.inference_mode()
def vocode_whole(s3gen: S3Gen, mel: torch.Tensor, seed: int) -> torch.Tensor:
    harmonics = s3gen.mel2wav.num_harmonics
    frames = mel.shape[1]
    phases, _ = draw_source_noise([0], [seed], harmonics)
    noise = stream_source_noise(seed, 0, frames * HOP, harmonics)[None]
    wav = s3gen.mel2wav(mel[None], torch.tensor([frames]), phases, noise)[0].float()
    fade = s3gen.trim_fade.to("cpu")
    wav[: fade.numel()] *= fade[: wav.numel()]
    return wav


def boundaries(chunks: list[torch.Tensor]) -> list[int]:
    return torch.cumsum(torch.tensor([c.numel() for c in chunks]), 0)[:-1].tolist()


def join_jumps(wav: torch.Tensor, joins: list[int]) -> tuple[list[float], float]:
    """|x[b] - x[b-1]| at every join, and the signal's own 99th-percentile sample-to-sample jump."""
    steps = (wav[1:] - wav[:-1]).abs()
    return [float(steps[b - 1]) for b in joins], float(torch.quantile(steps, 0.99))


def relative_errors(wav: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    diff = wav - reference
    peak = float(diff.abs().max() / reference.abs().max())
    rms = float(diff.pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
    return peak, rms


@pytest.fixture(scope="module")
def voiced(tiny_checkpoint: Path) -> S3Gen:
    """The tiny model with its F0 head moved into the voiced range (155-200 Hz on these inputs)."""
    model = S3Gen.from_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        head = model.mel2wav.f0_predictor.classifier
        head.bias.fill_(160.0)
        head.weight.mul_(300.0)
    return model


@pytest.fixture(scope="module")
def voice_odd(s3gen: S3Gen, tone) -> S3GenReference:
    voice = s3gen.embed_ref(tone(1.5, 24_000, (180.0, 360.0), seed=4), 24_000)
    assert voice.num_prompt_frames % 2 == 1  # the generated mel is one frame short
    return voice


# -- exactness where nothing is streamed ----------------------------------------------------------


def test_a_single_final_window_is_the_non_streamed_synthesis(s3gen, voice_a, tokens) -> None:
    ids = tokens(40, 1)
    mel, expected = non_streamed(s3gen, ids, voice_a, seed=5)
    stream = S3GenStream(
        s3gen, voice_a, seed=5, config=StreamingConfig(first_chunk_tokens=64, chunk_tokens=64)
    )
    assert stream.push(ids) == []  # 40 < 64 + 3 tokens: nothing can be final yet
    chunks = stream.finish()
    assert len(chunks) == 1 and stream.done
    torch.testing.assert_close(chunks[0], expected, rtol=0, atol=1e-6)
    # and the vocoder randomness differs from synthesize() only through the noise sequence:
    (reference_noise,) = s3gen.synthesize([ids], [voice_a], seeds=[5])
    assert reference_noise.shape == expected.shape
    assert float((reference_noise - expected).abs().max()) > 1e-3


def test_stream_source_noise_is_one_sequence() -> None:
    # Overlapping vocoder windows must see the same samples: any range is a slice, bit for bit.
    whole = stream_source_noise(7, 0, 3 * NOISE_BLOCK_SAMPLES + 100, 9)
    for start, stop in [(0, 5), (NOISE_BLOCK_SAMPLES - 3, NOISE_BLOCK_SAMPLES + 4), (1000, 60_000)]:
        torch.testing.assert_close(
            stream_source_noise(7, start, stop, 9), whole[:, start:stop], rtol=0, atol=0
        )
    assert not torch.equal(stream_source_noise(8, 0, 100, 9), whole[:, :100])
    with pytest.raises(ValueError, match="start"):
        stream_source_noise(7, 10, 5, 9)


def test_a_streams_noise_keeps_only_the_blocks_ahead_and_gives_the_same_samples() -> None:
    noise = SourceNoise(3, 9)
    first = torch.empty(9, 2 * NOISE_BLOCK_SAMPLES + 7)
    noise.fill(first, 1000)
    again = torch.empty(9, 25_000)
    noise.fill(again, 5000)  # blocks 0 and 1 again: from the stream's cache
    torch.testing.assert_close(first[:, 4000:29_000], again, rtol=0, atol=0)
    torch.testing.assert_close(again, stream_source_noise(3, 5000, 30_000, 9), rtol=0, atol=0)
    later = torch.empty(9, 10)
    noise.fill(later, 2 * NOISE_BLOCK_SAMPLES + 5)  # a window from block 2 on: 0 and 1 go
    assert sorted(noise._cpu_blocks) == [2]
    offset = 2 * NOISE_BLOCK_SAMPLES + 5 - 1000
    torch.testing.assert_close(later, first[:, offset : offset + 10], rtol=0, atol=0)


def test_stream_source_noise_is_white_standard_normal() -> None:
    """The excitation's noise: N(0, 1), uncorrelated across samples, harmonics and seeds."""
    noise = stream_source_noise(11, 3_000_000, 3_200_000, 9).double()
    other = stream_source_noise(12, 3_000_000, 3_200_000, 9).double()
    flat = noise.flatten()
    assert abs(float(flat.mean())) < 0.005 and abs(float(flat.std()) - 1) < 0.005
    kurtosis = float(((flat - flat.mean()) ** 4).mean() / flat.var() ** 2)
    assert abs(kurtosis - 3) < 0.05  # a normal's tails, not a uniform's (1.8)
    assert abs(float((flat.abs() > 3).double().mean()) - 0.0027) < 0.0005
    limit = 0.01  # ~4.5 standard errors of a correlation over 200k samples

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    for h in range(9):
        assert abs(corr(noise[h, 1:], noise[h, :-1])) < limit  # neighbouring samples
        assert abs(corr(noise[h], other[h])) < limit  # two streams
        assert abs(corr(noise[h], noise[(h + 1) % 9])) < limit  # two harmonics
    spectrum = torch.fft.rfft(noise[0]).abs().pow(2)
    quarters = [float(q.mean()) for q in spectrum[1:].chunk(4)]
    assert max(quarters) / min(quarters) < 1.05  # flat: white noise


# -- (a) streamed vs non-streamed ---------------------------------------------------------------------


def test_a_streamed_waveform_close_to_non_streamed(s3gen, voice_a, tokens) -> None:
    """Default config, 150 tokens (6 s): measured peak 1.5e-2, rms 2.3e-3 (random weights).

    The difference is the flow's: a non-final window's mel has not seen the tokens after its
    look-ahead, and the random model's full attention spreads every token over every frame, so
    the first window's mel is off by ~18% of the mel's peak, later ones by less (the final
    window is exact); see the README."""
    ids = tokens(150, 7)
    mel, expected = non_streamed(s3gen, ids, voice_a, seed=3)
    chunks = stream_synthesize(s3gen, ids, voice_a, seed=3)
    assert len(chunks) == 4  # windows of 16, 32, 50 tokens, then the final 52
    wav = torch.cat(chunks)
    peak, rms = relative_errors(wav, expected)
    print(f"streamed vs non-streamed: peak {peak:.2e} rms {rms:.2e}")
    assert peak < 4e-2 and rms < 6e-3


def test_a_vocoder_joins_alone_are_nearly_exact(voiced, voice_a, tokens) -> None:
    """Feed the stream's vocoder windows the non-streamed mel: what is left is the windowed
    vocoder (edges, crossfades, phase anchoring). Voiced F0, so a wrong sine phase would show:
    measured peak 3e-4, rms 1e-4 with the defaults."""
    ids = tokens(150, 7)
    mel, expected = non_streamed(voiced, ids, voice_a, seed=3)
    stream = S3GenStream(voiced, voice_a, seed=3)
    stream.add_tokens(ids)
    stream.end_of_tokens()
    chunks: list[torch.Tensor] = []
    while (window := stream.next_window()) is not None:
        (result,) = vocode_windows(voiced, [window], [mel[:, window.mel_start : window.mel_stop]])
        chunks += stream.accept(result)
    chunks += stream.flush()
    peak, rms = relative_errors(torch.cat(chunks), expected)
    print(f"vocoder windows on the non-streamed mel: peak {peak:.2e} rms {rms:.2e}")
    assert peak < 3e-3 and rms < 5e-4


def test_a_without_phase_anchoring_the_voiced_joins_are_wrong(voiced, voice_a, tokens) -> None:
    """Negative control for the test above: restart every window's sine at the seed's phases
    (anchor ignored), and the same comparison fails by a wide margin."""
    ids = tokens(150, 7)
    mel, expected = non_streamed(voiced, ids, voice_a, seed=3)
    stream = S3GenStream(voiced, voice_a, seed=3)
    stream.add_tokens(ids)
    stream.end_of_tokens()
    chunks: list[torch.Tensor] = []
    while (window := stream.next_window()) is not None:
        (result,) = vocode_windows(voiced, [window], [mel[:, window.mel_start : window.mel_stop]])
        if window.index > 0:  # what the sine would be without the anchor
            unanchored = dataclasses.replace(
                window, anchor_frame=window.mel_start, anchor_cycles=torch.zeros(9).double()
            )
            (wrong,) = vocode_windows(voiced, [unanchored], [result.mel])
            result = dataclasses.replace(result, wav=wrong.wav)
        chunks += stream.accept(result)
    chunks += stream.flush()
    peak, rms = relative_errors(torch.cat(chunks), expected)
    assert peak > 0.1 and rms > 0.02


# -- (b) no clicks at joins ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["s3gen", "voiced"])
def test_b_no_clicks_at_joins(model_name, request, voice_a, voice_b, tokens) -> None:
    """The jump across every join stays within the signal's own 99th-percentile jump (measured
    at most 0.64x of it), and the metric does flag a click (a 0.1 step inserted at a join)."""
    model = request.getfixturevalue(model_name)
    for voice, n, seed in [(voice_a, 150, 3), (voice_b, 97, 11)]:
        chunks = stream_synthesize(model, tokens(n, seed), voice, seed=seed)
        wav = torch.cat(chunks)
        joins = boundaries(chunks)
        assert len(joins) >= 2
        jumps, typical = join_jumps(wav, joins)
        print(f"{model_name}: max join jump / p99 jump = {max(jumps) / typical:.2f}")
        assert max(jumps) <= 1.0 * typical
        clicked = wav.clone()
        clicked[joins[1] :] += 0.1
        click_jumps, _ = join_jumps(clicked, joins)
        assert click_jumps[1] > 1.0 * typical


# -- (c) length ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 18, 19, 20, 35, 67, 68, 120])
def test_c_total_length_equals_non_streamed(s3gen, voice_a, voice_odd, tokens, n) -> None:
    for voice in (voice_a, voice_odd):
        ids = tokens(n, n)
        (expected,) = s3gen.synthesize([ids], [voice], seeds=[0])
        chunks = stream_synthesize(s3gen, ids, voice, seed=0, n_timesteps=2)
        assert sum(c.numel() for c in chunks) == expected.numel()
        assert all(c.dim() == 1 and c.dtype == torch.float32 and c.numel() > 0 for c in chunks)


def test_first_chunk_timing_and_size(s3gen, voice_a, tokens) -> None:
    """Default: the first chunk comes with token 16 + 3 and holds 2*16 - 4 - 6 frames (0.44 s)."""
    cfg = StreamingConfig()
    stream = S3GenStream(s3gen, voice_a, seed=1, n_timesteps=2)
    ids = tokens(200, 2)
    sizes = []
    for i, token in enumerate(ids):
        out = stream.push([token])
        if out:
            sizes.append((i + 1, out[0].numel()))
    needed = cfg.first_chunk_tokens + cfg.lookahead_tokens
    assert sizes[0] == (needed, (2 * cfg.first_chunk_tokens - cfg.held_frames) * HOP)
    # later windows double (32, 64, then 100 tokens): each emits 2 frames per token
    assert sizes[1] == (needed + 32, 64 * HOP)
    assert sizes[2] == (needed + 32 + 64, 128 * HOP)
    assert [cfg.window_tokens(i) for i in range(5)] == [16, 32, 64, 100, 100]


def test_push_pattern_does_not_change_the_audio(s3gen, voice_b, tokens) -> None:
    ids = tokens(90, 4)
    one_by_one = stream_synthesize(s3gen, ids, voice_b, seed=2, n_timesteps=3)
    all_at_once = stream_synthesize(s3gen, ids, voice_b, seed=2, n_timesteps=3, push_sizes=[90])
    ragged = stream_synthesize(
        s3gen, ids, voice_b, seed=2, n_timesteps=3, push_sizes=[5, 1, 30, 2, 17, 40]
    )
    assert len(one_by_one) == len(all_at_once) == len(ragged)
    for a, b, c in zip(one_by_one, all_at_once, ragged):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    other_seed = stream_synthesize(s3gen, ids, voice_b, seed=3, n_timesteps=3)
    assert float((torch.cat(other_seed) - torch.cat(one_by_one)).abs().max()) > 1e-3


# -- (d) errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"first_chunk_tokens": 0}, ValueError, "first_chunk_tokens"),
        ({"first_chunk_tokens": 5}, ValueError, "first_chunk_tokens"),  # 10 frames <= 10 held
        ({"chunk_tokens": 8}, ValueError, "chunk_tokens"),  # smaller than the first window
        ({"lookahead_tokens": -1}, ValueError, "lookahead_tokens"),
        ({"crossfade_frames": -2}, ValueError, "crossfade_frames"),
        ({"context_frames": -1}, ValueError, "context_frames"),
        ({"lookahead_frames": 1.5}, TypeError, "lookahead_frames"),
        ({"chunk_tokens": True}, TypeError, "chunk_tokens"),
        ({"first_chunk_tokens": "16"}, TypeError, "first_chunk_tokens"),
    ],
)
def test_d_bad_configs_name_the_field(kwargs, error, field) -> None:
    with pytest.raises(error, match=rf"StreamingConfig\.{field}") as raised:
        StreamingConfig(**kwargs)
    assert isinstance(raised.value, S3GenError)


def test_d_smallest_valid_config_works(s3gen, voice_odd, tokens) -> None:
    cfg = StreamingConfig(
        first_chunk_tokens=1, chunk_tokens=1, lookahead_tokens=0, crossfade_frames=0,
        context_frames=0, lookahead_frames=0,
    )  # fmt: skip
    ids = tokens(9, 9)
    chunks = stream_synthesize(s3gen, ids, voice_odd, seed=0, n_timesteps=2, config=cfg)
    (expected,) = s3gen.synthesize([ids], [voice_odd], seeds=[0], n_timesteps=2)
    assert sum(c.numel() for c in chunks) == expected.numel()


def test_d_misuse_gives_clear_errors(s3gen, voice_a, tokens) -> None:
    stream = S3GenStream(s3gen, voice_a, seed=0, n_timesteps=2)
    with pytest.raises(S3GenInputError, match="outside"):
        stream.push([1, 2, 6561])
    with pytest.raises(ValueError, match="outside"):
        stream.push([-1])
    with pytest.raises(TypeError, match="ints"):
        stream.push([1.0, 2.0])
    with pytest.raises(TypeError, match="str"):
        stream.push("abc")
    with pytest.raises(ValueError, match="1-D"):
        stream.push(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="no pending window"):
        stream.accept(WindowResult(stream.stream_id, 0, *[torch.zeros(0)] * 4))
    assert stream.num_tokens == 0  # rejected pushes add nothing
    ids = tokens(30, 5)
    good = stream.push(ids) + stream.finish()
    with pytest.raises(StreamStateError, match="finished"):
        stream.push([1])
    with pytest.raises(RuntimeError, match="already finished"):  # StreamStateError is one
        stream.finish()
    # the failed calls changed nothing: same audio as a clean stream
    clean = stream_synthesize(s3gen, ids, voice_a, seed=0, n_timesteps=2)
    torch.testing.assert_close(torch.cat(good), torch.cat(clean), rtol=0, atol=0)

    with pytest.raises(ValueError, match="n_timesteps"):
        S3GenStream(s3gen, voice_a, n_timesteps=0)
    with pytest.raises(TypeError, match="S3GenReference"):
        S3GenStream(s3gen, "voice")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="StreamingConfig"):
        S3GenStream(s3gen, voice_a, config={"first_chunk_tokens": 4})  # type: ignore[arg-type]
    too_long = S3GenStream(s3gen, voice_a)
    with pytest.raises(ValueError, match="CFM noise"):
        too_long.push([0] * (s3gen.max_frames // 2))


def test_d_results_go_to_their_own_stream(s3gen, voice_a, voice_b, tokens) -> None:
    a = S3GenStream(s3gen, voice_a, n_timesteps=2)
    b = S3GenStream(s3gen, voice_b, n_timesteps=2)
    a.add_tokens(tokens(20, 1))
    b.add_tokens(tokens(20, 2))
    wa, wb = a.next_window(), b.next_window()
    assert wa is not None and wb is not None
    assert a.next_window() is None  # one window in flight per stream
    ra, rb = synthesize_windows(s3gen, [wa, wb])
    with pytest.raises(ValueError, match="given to stream"):
        a.accept(rb)
    with pytest.raises(ValueError, match="twice"):
        synthesize_windows(s3gen, [wa, wa])
    with pytest.raises(TypeError, match="StreamWindow"):
        synthesize_windows(s3gen, [wa, "window"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="mels"):
        vocode_windows(s3gen, [wa], [torch.zeros(80, wa.frames + 1)])
    assert a.accept(ra) and b.accept(rb)
    with pytest.raises(RuntimeError, match="end_of_tokens"):
        a.flush()


def test_zero_tokens_give_no_audio(s3gen, voice_a) -> None:
    stream = S3GenStream(s3gen, voice_a)
    assert stream.finish() == [] and stream.done and stream.emitted_samples == 0


# -- (e) batched multi-stream == single streams ----------------------------------------------------------


def test_e_batched_streams_equal_single_streams(s3gen, voice_a, voice_b, voice_odd, tokens) -> None:
    """Four streams (three voices, different lengths, seeds, step counts, configs) advanced
    together: every ready window of every stream in one synthesize_windows call per round, with
    tokens arriving at different rates."""
    specs = [
        (voice_a, tokens(70, 21), 1, 3, StreamingConfig()),
        (voice_b, tokens(45, 22), 2, 3, StreamingConfig(first_chunk_tokens=8, chunk_tokens=20)),
        (voice_odd, tokens(23, 23), 3, 2, StreamingConfig()),
        (voice_a, tokens(101, 24), 4, 3, StreamingConfig(crossfade_frames=8, context_frames=0)),
    ]
    streams = [S3GenStream(s3gen, v, seed=s, n_timesteps=n, config=c) for v, _, s, n, c in specs]
    batched: list[list[torch.Tensor]] = [[] for _ in specs]
    rates = [7, 3, 11, 5]
    batch_sizes = []
    for _step in range(40):
        for i, (stream, (_, ids, *_rest)) in enumerate(zip(streams, specs)):
            got = stream.num_tokens
            if got < len(ids):
                stream.add_tokens(ids[got : got + rates[i]])
            elif not stream.finished:
                stream.end_of_tokens()
        windows = []
        for i, stream in enumerate(streams):
            window = stream.next_window()
            if window is not None:
                windows.append(window)
            elif stream.finished and stream.pending is None and not stream.done:
                batched[i] += stream.flush()  # all tokens synthesized: release the held tail
        if windows:
            batch_sizes.append(len(windows))
            for result in synthesize_windows(s3gen, windows):
                stream = next(s for s in streams if s.stream_id == result.stream_id)
                batched[streams.index(stream)] += stream.accept(result)
        if all(s.done for s in streams):
            break
    assert all(s.done for s in streams)
    assert max(batch_sizes) >= 3  # windows of different streams really ran together
    for (voice, ids, seed, n, cfg), chunks in zip(specs, batched):
        alone = stream_synthesize(s3gen, ids, voice, seed=seed, n_timesteps=n, config=cfg)
        assert [c.numel() for c in chunks] == [c.numel() for c in alone]
        for a, b in zip(chunks, alone):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_e_flow_windows_batch_equals_alone(s3gen, voice_a, voice_b, tokens) -> None:
    a = S3GenStream(s3gen, voice_a, n_timesteps=2)
    b = S3GenStream(s3gen, voice_b, n_timesteps=2)
    a.add_tokens(tokens(40, 1))
    b.add_tokens(tokens(15, 2))
    b.end_of_tokens()  # too few for a non-final window: b's window is final (no look-ahead trim) in the same batch
    wa, wb = a.next_window(), b.next_window()
    assert isinstance(wa, StreamWindow) and isinstance(wb, StreamWindow)
    assert not wa.final and wb.final
    together = flow_windows(s3gen, [wa, wb])
    for window, mel in zip([wa, wb], together):
        (alone,) = flow_windows(s3gen, [window])
        assert mel.shape == (80, window.frames)
        torch.testing.assert_close(mel, alone, rtol=0, atol=2e-5)
    # the final window's mel is the non-streamed mel
    (whole,) = s3gen.synthesize_mels([wb.tokens.tolist()], [voice_b], n_timesteps=2)
    torch.testing.assert_close(together[1], whole, rtol=0, atol=2e-5)


def test_lookahead_tokens_shape_the_kept_frames(s3gen, voice_a, tokens) -> None:
    """Without look-ahead a non-final window is exactly the non-streamed flow of the tokens it
    has; with the default 3 the extra tokens change the kept frames (they reach the encoder)."""
    ids = tokens(60, 8)
    mels = {}
    for lookahead in (0, 3):
        stream = S3GenStream(
            s3gen, voice_a, n_timesteps=2, config=StreamingConfig(lookahead_tokens=lookahead)
        )
        stream.add_tokens(ids)
        window = stream.next_window()
        assert window is not None and not window.final
        assert window.tokens.numel() == window.keep_tokens + lookahead
        (mels[lookahead],) = flow_windows(s3gen, [window])
    (prefix,) = s3gen.synthesize_mels([ids[:16]], [voice_a], n_timesteps=2)
    torch.testing.assert_close(mels[0], prefix, rtol=0, atol=2e-5)
    assert mels[3].shape == prefix.shape
    assert float((mels[3] - prefix).abs().max()) > 1e-3


def test_shape_bucketing_does_not_change_results(
    s3gen, voice_a, voice_b, voice_odd, tokens
) -> None:
    """CUDA rounds rows and lengths up (masked padding, repeated rows); forced here on CPU."""
    streams = [
        S3GenStream(s3gen, voice, seed=i, n_timesteps=2)
        for i, voice in enumerate([voice_a, voice_b, voice_odd])
    ]
    for i, stream in enumerate(streams):
        stream.add_tokens(tokens(19 + 7 * i, i))
    streams[2].end_of_tokens()  # a final window among non-final ones
    windows = [w for s in streams if (w := s.next_window()) is not None]
    assert len(windows) == 3  # 3 rows -> 4 when bucketed
    plain = synthesize_windows(s3gen, windows, bucket=False)
    bucketed = synthesize_windows(s3gen, windows, bucket=True)
    assert len(bucketed) == 3
    for a, b in zip(plain, bucketed):
        assert (a.stream_id, a.index) == (b.stream_id, b.index)
        torch.testing.assert_close(a.mel, b.mel, rtol=0, atol=2e-5)
        torch.testing.assert_close(a.wav, b.wav, rtol=0, atol=2e-5)
        torch.testing.assert_close(a.cycles, b.cycles, rtol=0, atol=1e-9)


# -- CUDA (-m gpu; skipped without a GPU) ---------------------------------------------------------


def _drive_together(model: S3Gen, specs, *, bucket: bool | None) -> list[torch.Tensor]:
    """All streams advanced together, every round's ready windows in one batch; concatenated audio."""
    streams = [S3GenStream(model, v, seed=s, n_timesteps=3) for v, _, s in specs]
    out: list[list[torch.Tensor]] = [[] for _ in specs]
    for stream, (_, ids, _) in zip(streams, specs):
        stream.add_tokens(ids)
        stream.end_of_tokens()
    while not all(s.done for s in streams):
        windows = []
        for i, stream in enumerate(streams):
            window = stream.next_window()
            if window is not None:
                windows.append(window)
            elif stream.pending is None and not stream.done:
                out[i] += stream.flush()
        for result in synthesize_windows(model, windows, bucket=bucket):
            i = next(i for i, s in enumerate(streams) if s.stream_id == result.stream_id)
            out[i] += streams[i].accept(result)
    return [torch.cat(chunks) for chunks in out]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_streams_match_cpu_with_buckets_and_graphs(
    s3gen, tiny_checkpoint, voice_a, voice_b, voice_odd, tokens, monkeypatch
) -> None:
    """On CUDA, with CUDA-graph Euler loops and row/length buckets (the defaults there), batched
    streams give the eager CUDA audio, and with the CPU's noise sequence the CPU float32 audio,
    to float rounding (the tiny model is unvoiced: its audio is mostly the source noise, which
    each device draws with its own generator)."""
    specs = [(voice_a, tokens(90, 31), 1), (voice_b, tokens(41, 32), 2)]
    specs.append((voice_odd, tokens(67, 33), 3))
    graphs = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda")
    eager = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda", cuda_graphs=False)
    cuda_specs = [(v.to("cuda"), ids, seed) for v, ids, seed in specs]
    on_graphs = _drive_together(graphs, cuda_specs, bucket=None)
    on_eager = _drive_together(eager, cuda_specs, bucket=False)
    for a, b in zip(on_graphs, on_eager):
        assert a.shape == b.shape
        assert float((a - b).abs().max() / b.abs().max()) < 1e-3
    draw = streaming._noise_block
    monkeypatch.setattr(
        streaming,
        "_noise_block",
        lambda seed, block, harmonics, device: draw(seed, block, harmonics, torch.device("cpu")).to(
            device
        ),
    )
    on_graphs = _drive_together(graphs, cuda_specs, bucket=None)
    on_cpu = _drive_together(s3gen, specs, bucket=False)
    for a, c in zip(on_graphs, on_cpu):
        assert a.shape == c.shape
        assert float((a - c).abs().max() / c.abs().max()) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_stream_noise_is_one_sequence_drawn_on_the_gpu() -> None:
    whole = stream_source_noise(7, 0, 2 * NOISE_BLOCK_SAMPLES + 100, 9, device="cuda")
    assert whole.is_cuda
    part = stream_source_noise(7, NOISE_BLOCK_SAMPLES - 3, NOISE_BLOCK_SAMPLES + 40, 9, "cuda")
    torch.testing.assert_close(
        part, whole[:, NOISE_BLOCK_SAMPLES - 3 : NOISE_BLOCK_SAMPLES + 40], rtol=0, atol=0
    )
    assert abs(float(whole.mean())) < 0.01 and abs(float(whole.std()) - 1) < 0.01


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_start_up_warm_up_leaves_no_cold_shape(
    tiny_checkpoint, voice_a, voice_b, voice_odd, tokens, dtype
) -> None:
    """What a GPU server does at start-up (capture the flow shapes, the encoder and HiFT
    shapes) in the product's dtypes, then mixed streams in rounds of up to 4: nothing captured,
    nothing cold, nothing eager while serving, and the eager model's audio."""
    from chatterbox_s3gen.streaming import prepare_stream_graphs

    model = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda", dtype=dtype)
    report = prepare_stream_graphs(model, StreamingConfig(), max_rows=4, n_timesteps=3)
    assert report.warmed == 3 * 6 + 3 * 15 and report.captures == len(report.shapes)
    specs = [(voice_a.to("cuda"), tokens(230, 41), 1), (voice_b.to("cuda"), tokens(97, 42), 2)]
    specs += [(voice_odd.to("cuda"), tokens(160, 43), 3), (voice_a.to("cuda"), tokens(12, 44), 4)]
    audio = _drive_together(model, specs, bucket=None)
    assert all(bool(torch.isfinite(a).all()) and a.numel() > 0 for a in audio)
    stats = model.graph_stats()
    assert stats["cold_shapes_after_seal"] == 0 and stats["kernel_graphs"] == 3 * 6 + 3 * 15
    assert stats["captures_after_seal"] == 0 and stats["eager_after_seal"] == 0
    assert model.flow.encoder_graphs.eager_runs == 0
    assert model.anchored_hift_graphs.eager_runs == 0
    # The captured encoder, HiFT and CFM loops give the eager model's streamed audio.
    eager = S3Gen.from_checkpoint(tiny_checkpoint, device="cuda", dtype=dtype, cuda_graphs=False)
    for a, b in zip(audio, _drive_together(eager, specs, bucket=True)):
        assert a.shape == b.shape
        assert float((a - b).abs().max() / b.abs().max()) < (
            1e-3 if dtype == torch.float32 else 2e-2
        )
