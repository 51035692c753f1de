"""Prometheus metrics of the server (``GET /metrics``), next to vLLM's own ``vllm:*`` metrics
(running requests, KV-cache usage...) from the same process registry."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

_PREFIX = "chatterbox_"


def _get_or_create(kind: Any, name: str, documentation: str, **kwargs: Any) -> Any:
    # One set per process even if several apps are created (tests): reuse registered collectors.
    existing = REGISTRY._names_to_collectors.get(name)
    if existing is not None:
        return existing
    return kind(name, documentation, **kwargs)


class Metrics:
    def __init__(self) -> None:
        self.requests = _get_or_create(
            Counter,
            _PREFIX + "requests",
            "HTTP requests by route and status",
            labelnames=("route", "status"),
        )
        self.audio_seconds = _get_or_create(
            Counter, _PREFIX + "audio_seconds", "seconds of audio produced"
        )
        self.speech_tokens = _get_or_create(
            Counter, _PREFIX + "t3_speech_tokens", "speech tokens T3 generated"
        )
        self.running_streams = _get_or_create(
            Gauge, _PREFIX + "running_streams", "speech requests being served"
        )
        self.queue_depth = _get_or_create(
            Gauge,
            _PREFIX + "s3gen_open_streams",
            "text chunks with an open S3Gen stream (queued for S3Gen windows)",
        )
        self.t3_unfinished = _get_or_create(
            Gauge, _PREFIX + "t3_unfinished_requests", "T3 requests vLLM is still serving"
        )
        self.t3_tokens_per_second = _get_or_create(
            Gauge,
            _PREFIX + "t3_tokens_per_second",
            "T3 speech tokens per second since the last scrape",
        )
        self.first_audio = _get_or_create(
            Histogram,
            _PREFIX + "first_audio_seconds",
            "time from request to first audio bytes",
            buckets=(0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
        )
        self.stream_min_buffer = _get_or_create(
            Histogram,
            _PREFIX + "stream_min_buffer_seconds",
            "per finished stream: the least audio its player had buffered when new audio "
            "arrived (below 0: the player stalled that long)",
            buckets=(-1.0, -0.25, -0.05, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
        )
        self.captures_after_startup = _get_or_create(
            Gauge,
            _PREFIX + "s3gen_graph_captures_after_startup_total",
            "CUDA graphs S3Gen captured after start-up (on the request path; should stay 0)",
        )
        self.eager_after_startup = _get_or_create(
            Gauge,
            _PREFIX + "s3gen_eager_solves_after_startup_total",
            "S3Gen flow batches of a shape outside the captured set, run without a CUDA graph",
        )
        self.cold_shapes_after_startup = _get_or_create(
            Gauge,
            _PREFIX + "s3gen_cold_shapes_after_startup_total",
            "S3Gen encoder/vocoder batch shapes first met while serving (not run by the start-up "
            "warm-up; on a GPU each one's first batch waits for kernel selection)",
        )
        self.s3gen_busy = _get_or_create(
            Gauge,
            _PREFIX + "s3gen_busy_seconds_total",
            "seconds the S3Gen scheduler spent running batches (streamed windows and whole chunks)",
        )
        self.s3gen_batches = _get_or_create(
            Gauge, _PREFIX + "s3gen_batches_total", "batches the S3Gen scheduler ran"
        )
        self.s3gen_windows = _get_or_create(
            Gauge, _PREFIX + "s3gen_windows_total", "windows and whole chunks those batches held"
        )
        self.deadline_misses = _get_or_create(
            Counter,
            _PREFIX + "window_deadline_misses",
            "streamed windows whose audio came after they were due (kind: first = a stream's "
            "first audio later than the target, next = a playing stream ran dry; cause: t3 = "
            "its tokens came late, s3gen = they were there in time)",
            labelnames=("kind", "cause"),
        )
        self.windows_total = _get_or_create(
            Counter, _PREFIX + "windows", "streamed windows delivered", labelnames=("kind",)
        )
        self.window_lateness = _get_or_create(
            Histogram,
            _PREFIX + "window_lateness_seconds",
            "per streamed window: when its audio came minus when it was due (below 0: early)",
            labelnames=("kind",),
            buckets=(-2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
        )
        self.window_s3gen_wait = _get_or_create(
            Histogram,
            _PREFIX + "window_s3gen_wait_seconds",
            "per streamed window: from its tokens being complete to S3Gen taking it",
            buckets=(0.0, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
        )
        self.capacity = _get_or_create(
            Gauge,
            _PREFIX + "capacity_streams",
            "real-time streams the server estimates it holds (measured S3Gen and T3 rates; "
            "-1 until measured)",
        )
        self.admission_limit = _get_or_create(
            Gauge, _PREFIX + "admission_limit_streams", "streams admitted at once now"
        )
        self.queued_streams = _get_or_create(
            Gauge, _PREFIX + "queued_streams", "requests waiting in the admission queue"
        )
        self.queued_total = _get_or_create(
            Gauge, _PREFIX + "queued_streams_total", "requests that waited in the queue"
        )
        self.rejected_total = _get_or_create(
            Gauge,
            _PREFIX + "rejected_streams_total",
            "requests refused over capacity (429) or after the max queue wait (503)",
        )
        self.buffered_audio = _get_or_create(
            Histogram,
            _PREFIX + "stream_buffered_audio_seconds",
            "at each scrape, every open stream's buffered audio (0: not playing yet or dry)",
            buckets=(0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
        )
        self._last = (time.perf_counter(), 0.0)

    def observe_window(self, timeline: Any) -> None:
        """A streamed window's timeline (called on the S3Gen scheduler thread)."""
        kind = "first" if timeline.first else "next"
        self.windows_total.labels(kind=kind).inc()
        self.window_lateness.labels(kind=kind).observe(timeline.lateness_s)
        self.window_s3gen_wait.observe(max(0.0, timeline.taken_at - timeline.tokens_at))
        if timeline.missed:
            self.deadline_misses.labels(kind=kind, cause=timeline.cause).inc()

    def refresh_admission(self, admission: Any) -> None:
        estimate = admission.capacity_estimate()
        self.capacity.set(-1 if estimate is None else estimate)
        self.admission_limit.set(admission.limit())
        self.queued_streams.set(admission.queued)
        self.queued_total.set(admission.queued_total)
        self.rejected_total.set(admission.rejected_total + admission.timed_out_total)

    def observe_stream(self, listener: Any) -> None:
        """A stream finished (called on the S3Gen scheduler thread). A stream whose audio came
        in one piece never had less buffered than all of it."""
        self.stream_min_buffer.observe(min(listener.min_buffer_s, sum(listener.delivered.values())))

    def refresh(self, tts: Any) -> None:
        """Gauges read at scrape time."""
        scheduler = tts._scheduler
        self.queue_depth.set(scheduler.stats.open_streams if scheduler is not None else 0)
        if scheduler is not None:
            for seconds in scheduler.buffered_audio():
                self.buffered_audio.observe(seconds)
            self.s3gen_busy.set(scheduler.stats.busy_seconds)
            self.s3gen_batches.set(scheduler.stats.batches)
            self.s3gen_windows.set(scheduler.stats.windows)
        graphs = tts.s3gen_graph_stats()
        if graphs is not None:
            self.captures_after_startup.set(graphs.get("captures_after_seal", 0))
            self.eager_after_startup.set(graphs.get("eager_after_seal", 0))
            self.cold_shapes_after_startup.set(graphs.get("cold_shapes_after_seal", 0))
        probe = getattr(tts._t3, "num_unfinished_requests", None)
        if callable(probe):
            self.t3_unfinished.set(probe())
        idle_stats = getattr(tts._t3, "refresh_idle_stats", None)
        if callable(idle_stats):  # vLLM's own gauges, stale after aborts (see the method)
            idle_stats()
        now, tokens = time.perf_counter(), self._total_tokens()
        then, before = self._last
        if now > then:
            self.t3_tokens_per_second.set((tokens - before) / (now - then))
        self._last = (now, tokens)

    def _total_tokens(self) -> float:
        for metric in self.speech_tokens.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    return float(sample.value)
        return 0.0
