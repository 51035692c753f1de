"""The engine's one S3Gen scheduler: what it runs first, and ``generate`` as whole-chunk lanes of
it (CPU, the tiny checkpoint's real S3Gen)."""

from __future__ import annotations

import threading
import time

import torch

from chatterbox_s3gen import StreamingConfig
from chatterbox_vllm import ChatterboxTTS
from chatterbox_vllm.audio import equal_power_crossfade_join
from chatterbox_vllm.scheduler import Listener, S3GenScheduler

# Tokens that make exactly one (the first) window of a stream.
FIRST_WINDOW_TOKENS = StreamingConfig().first_chunk_tokens + StreamingConfig().lookahead_tokens


class Deliveries:
    """Which lane delivered audio, in order (``deliver`` runs on the scheduler thread)."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        self.expected = 0

    def lane(self, name: str):
        def deliver(chunks, done, error) -> None:
            if error is not None:
                self.errors.append(error)
            if chunks or error is not None:
                self.order.append(name)
            if len(self.order) >= self.expected:
                self.done.set()

        return deliver


def _playing(seconds_ago: float, delivered_s: float) -> Listener:
    """A stream that started playing ``seconds_ago`` with ``delivered_s`` of audio so far."""
    now = time.perf_counter()
    return Listener(
        opened_at=now - seconds_ago - 0.2,
        first_audio_at=now - seconds_ago,
        delivered={0: delivered_s},
    )


def _first_runs(tts: ChatterboxTTS, lanes: dict[str, dict], count: int) -> list[str]:
    """Opens the lanes and posts all their tokens while the scheduler thread is held, so its next
    rounds see them all at once; returns the names in the order their first ``count`` pieces of
    audio arrived (one window per batch)."""
    scheduler = S3GenScheduler(tts._s3gen, max_batch=1, n_timesteps=2)
    deliveries = Deliveries()
    deliveries.expected = count
    reference = tts.default_voice.s3gen
    try:
        with scheduler._lock:
            for name, spec in lanes.items():
                if spec.get("whole"):
                    lane = scheduler.open_whole(reference, seed=1, deliver=deliveries.lane(name))
                else:
                    lane = scheduler.open_stream(
                        reference,
                        seed=1,
                        config=None,
                        listener=spec["listener"],
                        order=0,
                        deliver=deliveries.lane(name),
                    )
                scheduler._lanes[lane].inbox.append(
                    ("tokens", list(range(100, 100 + spec["tokens"])))
                )
                if spec.get("whole"):
                    scheduler._lanes[lane].inbox.append(("end", None))
        assert deliveries.done.wait(120), deliveries.order
    finally:
        scheduler.close()
    assert not deliveries.errors
    return deliveries.order[:count]


def test_a_new_streams_first_window_goes_before_playing_streams_with_slack(
    tts: ChatterboxTTS,
) -> None:
    order = _first_runs(
        tts,
        {
            # Playing, with seconds of audio still buffered: the newcomer's first audio first.
            "old": {"listener": _playing(1.0, 6.0), "tokens": FIRST_WINDOW_TOKENS},
            "new": {"listener": Listener(), "tokens": FIRST_WINDOW_TOKENS},
        },
        count=2,
    )
    assert order == ["new", "old"]


def test_a_player_about_to_run_dry_goes_before_a_new_stream(tts: ChatterboxTTS) -> None:
    order = _first_runs(
        tts,
        {
            "old": {"listener": _playing(1.0, 1.05), "tokens": FIRST_WINDOW_TOKENS},
            "new": {"listener": Listener(), "tokens": FIRST_WINDOW_TOKENS},
        },
        count=2,
    )
    assert order == ["old", "new"]


def test_the_stream_whose_buffer_runs_out_first_is_served_first(tts: ChatterboxTTS) -> None:
    order = _first_runs(
        tts,
        {
            "ahead": {"listener": _playing(1.0, 9.0), "tokens": FIRST_WINDOW_TOKENS},
            "behind": {"listener": _playing(1.0, 1.3), "tokens": FIRST_WINDOW_TOKENS},
            "middle": {"listener": _playing(1.0, 4.0), "tokens": FIRST_WINDOW_TOKENS},
        },
        count=3,
    )
    assert order == ["behind", "middle", "ahead"]


def test_streamed_windows_go_before_whole_chunks(tts: ChatterboxTTS) -> None:
    order = _first_runs(
        tts,
        {
            "file": {"whole": True, "tokens": 20},
            "listener": {"listener": _playing(1.0, 5.0), "tokens": FIRST_WINDOW_TOKENS},
        },
        count=2,
    )
    assert order == ["listener", "file"]


def test_generate_is_whole_chunk_synthesis_joined(tts: ChatterboxTTS) -> None:
    """``generate`` runs each chunk as one whole window of the scheduler: the result equals
    S3Gen's own synthesis of the same tokens with the chunks' seeds (one batch, longest first,
    as the scheduler batches them), joined by the crossfade."""
    text = "First sentence is here. A second one follows it! And a third, to make three chunks."
    result = tts.generate(text, seed=5, max_new_tokens=20, progress=False)
    assert len(result.chunks) >= 2
    seeds = [5 + index for index in range(len(result.chunks))]  # the planner's chunk seeds
    reference = tts.default_voice.s3gen
    tokens = [list(chunk.token_ids) for chunk in result.speech_tokens]
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]), reverse=True)
    synthesized = tts._s3gen.synthesize(
        [tokens[i] for i in order],
        [reference] * len(order),
        n_timesteps=tts.config.cfm_steps,
        seeds=[seeds[i] for i in order],
    )
    expected = [synthesized[order.index(i)] for i in range(len(tokens))]
    crossfade = round(tts.config.crossfade_seconds * tts.sample_rate)
    assert torch.equal(result.waveform, equal_power_crossfade_join(expected, crossfade))


def test_generate_and_streams_share_one_scheduler(tts: ChatterboxTTS) -> None:
    scheduler = tts.scheduler
    before = scheduler.stats.whole_batches
    tts.generate("One scheduler for all.", max_new_tokens=10, progress=False)
    assert scheduler.stats.whole_batches > before
    windows = scheduler.stats.windows
    list(tts.stream("One scheduler for all.", max_new_tokens=30, seed=3))
    assert tts.scheduler is scheduler and scheduler.stats.windows > windows


class RecordingVocoder:
    """A vocoder plug-in (Griffin-Lim inside) that records every batch it is given."""

    sample_rate = 24_000
    hop_length = 480

    def __init__(self) -> None:
        from chatterbox_s3gen.vocoders import GriffinLimVocoder

        self.inner = GriffinLimVocoder(n_iter=2)
        self.batches = 0

    def vocode(self, mels: torch.Tensor, mel_lengths: torch.Tensor) -> list[torch.Tensor]:
        self.batches += 1
        return self.inner.vocode(mels, mel_lengths)


def test_a_plugin_vocoder_serves_generate_and_streams(tts: ChatterboxTTS) -> None:
    """The vocoder seam is on every path of the scheduler: whole chunks and streamed windows."""
    recording = RecordingVocoder()
    tts._s3gen.set_vocoder(recording)
    try:
        result = tts.generate("A plug-in vocoder.", seed=2, max_new_tokens=20, progress=False)
        assert recording.batches >= 1 and result.duration_s > 0
        before = recording.batches
        chunks = list(tts.stream("A plug-in vocoder, streamed.", seed=2, max_new_tokens=60))
        assert sum(c.waveform.numel() for c in chunks) > 0
        assert recording.batches - before >= 2  # one per streamed window batch
    finally:
        tts._s3gen.set_vocoder("hift-torch")


def test_a_round_that_paid_one_off_work_is_not_a_cost_sample(
    tts: ChatterboxTTS, monkeypatch
) -> None:
    """A round whose shape ran for the first time (on a GPU: kernel selection, a graph capture)
    costs far more than that shape will; the deadline policy's round costs and the capacity model
    learn from the other rounds only."""
    s3gen = tts._s3gen
    real_stats = s3gen.graph_stats
    calls = {"n": 0}

    def first_round_meets_a_cold_shape() -> dict:
        calls["n"] += 1  # read once before and once after each round
        return {**real_stats(), "cold_shapes_after_seal": 0 if calls["n"] == 1 else 1}

    monkeypatch.setattr(s3gen, "graph_stats", first_round_meets_a_cold_shape)
    scheduler = S3GenScheduler(s3gen, max_batch=1, n_timesteps=2)
    samples: list[tuple] = []
    rates: list[tuple] = []
    observe, observe_s3gen = scheduler.costs.observe, scheduler.capacity.observe_s3gen
    monkeypatch.setattr(scheduler.costs, "observe", lambda *a: (samples.append(a), observe(*a)))
    monkeypatch.setattr(
        scheduler.capacity, "observe_s3gen", lambda *a: (rates.append(a), observe_s3gen(*a))
    )
    done = threading.Event()
    try:
        # Three windows: every token is there at once, so each window takes the most it can
        # (100 tokens, then 100) and the last 50 are the final one.
        lane = scheduler.open_stream(
            tts.default_voice.s3gen,
            seed=1,
            config=None,
            listener=Listener(),
            order=0,
            deliver=lambda chunks, finished, error: finished and done.set(),
        )
        scheduler.add_tokens(lane, list(range(100, 100 + 250)))
        scheduler.end(lane)
        assert done.wait(120)
    finally:
        scheduler.close()
    assert scheduler.stats.batches == 3
    assert len(samples) == len(rates) == 2  # the first round is left out
    assert [rows for rows, _, _ in samples] == [1, 1]
