"""Scaling benchmark: throughput of 1..N replicas on one long text, then a run in which a replica
is killed mid-call, counting lost and duplicated chunks (both must be 0).

``chatterbox-vllm bench --replicas N`` calls :func:`bench_scaling`; it also runs from Python::

    from chatterbox_vllm.distributed.bench import bench_scaling
    report = bench_scaling("/models/chatterbox", text, max_replicas=4)
    print(report.format())

The replicas start once; the run for ``k`` replicas uses the first ``k`` (``scale(k)`` adds one
at a time), after a warm-up call that gives every replica a chunk. Every run uses the same seed;
the "same audio" column compares each run with the one-replica run: "yes" (bit-identical), the
largest sample difference (float32 rounding when S3Gen batches a chunk differently), or "NO"
(different speech tokens). With ``dtype="float32"`` every run must match; with bfloat16, vLLM's
batched kernels are not batch-invariant, so chunks decoded in other batches may sample other tokens.
Lost and duplicated chunks in the kill run must be 0 whatever the dtype.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatterbox_vllm.distributed.replica import CheckpointSource
    from chatterbox_vllm.distributed.replicated import ReplicatedChatterboxTTS
    from chatterbox_vllm.results import GenerationResult

logger = logging.getLogger(__name__)

WARMUP_TEXT = "A short warm-up sentence for this replica."
KILL_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ScalingRow:
    """One timed run."""

    replicas: int
    failed_replicas: int
    """Replicas that failed during the timed run (0 unless something broke)."""
    chunks: int
    audio_seconds: float
    wall_seconds: float
    speech_tokens: int
    chunks_per_replica: dict[str, int]
    difference_from_one_replica: float | None
    """Largest sample difference from the one-replica run (same seed), ``None`` if the speech
    tokens differ (see the module docs)."""

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.speech_tokens / self.wall_seconds if self.wall_seconds else float("nan")


@dataclass(frozen=True)
class KillRun:
    """The run in which one replica was killed while it had chunks in flight."""

    replicas: int
    killed: str | None
    """The replica killed, or ``None`` if the call ended before one could be (too little work)."""
    chunks: int
    delivered: int
    lost: int
    duplicated: int
    retried_chunks: int
    replacements: list[str]
    wall_seconds: float
    difference_from_undisturbed: float | None


@dataclass
class ScalingReport:
    text_chars: int
    load_seconds: float
    rows: list[ScalingRow] = field(default_factory=list)
    kill: KillRun | None = None
    device: str = ""

    def format(self) -> str:
        """A plain-text table (what ``bench --replicas`` prints)."""
        lines = [
            f"text: {self.text_chars:,} characters; replicas on {self.device}; first replica "
            f"loaded in {self.load_seconds:.1f} s",
            f"{'replicas':>8}  {'chunks':>6}  {'audio s':>8}  {'wall s':>8}  {'RTF':>6}  "
            f"{'tokens/s':>9}  {'speedup':>7}  {'same audio':>10}  chunks per replica",
        ]
        base = self.rows[0].wall_seconds if self.rows else float("nan")
        for row in self.rows:
            spread = " ".join(f"{n}" for n in row.chunks_per_replica.values())
            lines.append(
                f"{row.replicas:>8}  {row.chunks:>6}  {row.audio_seconds:>8.2f}  "
                f"{row.wall_seconds:>8.2f}  {row.real_time_factor:>6.3f}  "
                f"{row.tokens_per_second:>9.1f}  {base / row.wall_seconds:>6.2f}x  "
                f"{_same(row.difference_from_one_replica):>10}  {spread}"
                + (f"  ({row.failed_replicas} replica(s) FAILED)" if row.failed_replicas else "")
            )
        if self.kill is not None:
            kill = self.kill
            if kill.killed is None:
                lines.append("kill run: the call finished before a replica could be killed")
            else:
                lines.append(
                    f"kill run ({kill.replicas} replicas, {kill.killed} killed mid-call): "
                    f"{kill.chunks} chunks, {kill.delivered} delivered, lost {kill.lost}, "
                    f"duplicated {kill.duplicated}, {kill.retried_chunks} re-sent, "
                    f"replacement(s) {', '.join(kill.replacements) or 'none'}, "
                    f"wall {kill.wall_seconds:.2f} s, same audio as undisturbed: "
                    f"{_same(kill.difference_from_undisturbed)}"
                )
        return "\n".join(lines)


def audio_difference(a: GenerationResult, b: GenerationResult) -> float | None:
    """Largest absolute sample difference of two results with the same chunks and speech tokens;
    ``None`` when the chunks or tokens differ (then the audio is simply different)."""
    if (a.chunks, a.speech_tokens, a.waveform.shape) != (
        b.chunks,
        b.speech_tokens,
        b.waveform.shape,
    ):
        return None
    if not a.waveform.numel():
        return 0.0
    return float((a.waveform - b.waveform).abs().max())


def _same(difference: float | None) -> str:
    if difference is None:
        return "NO"
    return "yes" if difference == 0 else f"{difference:.0e}"


def kill_when_busy(
    tts: ReplicatedChatterboxTTS, victim: str, stop: threading.Event, killed: list[str]
) -> None:
    """Kills ``victim`` (``ray.kill``) once some chunk of the running call has come back and the
    victim still has chunks in flight; gives up when ``stop`` is set."""
    import ray

    baseline = {s.name: s.completed_chunks for s in tts.replica_status()}
    while not stop.is_set():
        statuses = {s.name: s for s in tts.replica_status()}
        target = statuses.get(victim)
        progressed = any(s.completed_chunks > baseline.get(name, 0) for name, s in statuses.items())
        if target is not None and target.in_flight_chunks and progressed:
            handle = next(h for h in tts.replicas if h.name == victim)
            logger.info("killing %s with %d chunk(s) in flight", victim, target.in_flight_chunks)
            ray.kill(handle.actor, no_restart=True)
            killed.append(victim)
            return
        stop.wait(KILL_POLL_SECONDS)


def bench_scaling(
    source: str | CheckpointSource,
    text: str,
    *,
    max_replicas: int,
    voice: Any = None,
    seed: int = 0,
    max_tokens_per_expected_second: float | None = 25.0,
    controls: dict[str, Any] | None = None,
    kill_run: bool = True,
    address: str | None = None,
    progress: bool = False,
    **options: Any,
) -> ScalingReport:
    """Times ``text`` on 1..``max_replicas`` replicas, then (``kill_run``) once more on
    ``max_replicas`` with one replica killed mid-call.

    ``source``: a checkpoint directory (same path on every node) or a :class:`CheckpointSource`.
    ``max_tokens_per_expected_second`` caps each chunk's speech tokens as ``bench`` does (random
    weights never emit the stop token); ``controls``: other ``generate`` controls (temperature,
    cfg_weight, max_new_tokens...) for every run. ``options``: :class:`ReplicatedChatterboxTTS` options and
    engine overrides (the watermark is off: it is driver-side work that does not scale).
    """
    from chatterbox_vllm.distributed.replica import CheckpointSource
    from chatterbox_vllm.distributed.replicated import ReplicatedChatterboxTTS

    if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or max_replicas < 1:
        raise ValueError(f"max_replicas must be a positive int, got {max_replicas!r}")
    if not isinstance(source, CheckpointSource):
        source = CheckpointSource(model_dir=str(source))
    controls = {
        **(controls or {}),
        "seed": seed,
        "max_tokens_per_expected_second": max_tokens_per_expected_second,
    }
    load_start = time.perf_counter()
    with ReplicatedChatterboxTTS(
        source, replicas=1, address=address, watermark=False, **options
    ) as tts:
        load_seconds = time.perf_counter() - load_start
        first = tts.replicas[0].info
        report = ScalingReport(
            text_chars=len(text),
            load_seconds=load_seconds,
            device=f"{first.device} ({'GPU' if first.gpu_ids else 'CPU'} replicas)"
            if first
            else "?",
        )
        prepared = None if voice is None else tts.prepare_voice(voice)
        reference: GenerationResult | None = None
        for count in range(1, max_replicas + 1):
            _ready_and_warm(tts, count, prepared, controls)
            start = time.perf_counter()
            result = tts.generate(text, voice=prepared, progress=progress, **controls)
            wall = time.perf_counter() - start
            reference = reference or result
            stats = tts.last_stats
            dispatch = tts.dispatch_report
            assert dispatch is not None
            row = ScalingRow(
                replicas=count,
                failed_replicas=len(dispatch.failed_replicas),
                chunks=stats.chunks,
                audio_seconds=result.duration_s,
                wall_seconds=wall,
                speech_tokens=stats.speech_tokens,
                chunks_per_replica=dict(dispatch.chunks_per_replica),
                difference_from_one_replica=audio_difference(result, reference),
            )
            report.rows.append(row)
            logger.info(
                "%d replica(s): %.2f s wall for %.2f s of audio", count, wall, row.audio_seconds
            )
        if kill_run and reference is not None:
            _ready_and_warm(tts, max_replicas, prepared, controls)
            report.kill = _kill_run(tts, text, prepared, controls, reference, progress)
    return report


def _ready_and_warm(
    tts: ReplicatedChatterboxTTS, count: int, voice: Any, controls: dict[str, Any]
) -> None:
    """``count`` loaded replicas, each having spoken once (first-call costs are not timed); a
    replica that fails here is replaced before the timed run."""
    for _ in range(3):
        tts.scale(count)
        tts.generate([WARMUP_TEXT] * count, voice=voice, progress=False, **controls)
        report = tts.dispatch_report
        if report is not None and not report.failed_replicas:
            return
        tts.wait_for_replicas()
    raise RuntimeError(f"replicas keep failing during warm-up: {tts.replica_status()}")


def _kill_run(
    tts: ReplicatedChatterboxTTS,
    text: str,
    voice: Any,
    controls: dict[str, Any],
    reference: GenerationResult,
    progress: bool,
) -> KillRun:
    victim = tts.replicas[0].name
    replicas = len(tts.replicas)
    stop = threading.Event()
    killed: list[str] = []
    killer = threading.Thread(
        target=kill_when_busy, args=(tts, victim, stop, killed), name="replica-killer"
    )
    killer.start()
    start = time.perf_counter()
    try:
        result = tts.generate(text, voice=voice, progress=progress, **controls)
    finally:
        stop.set()
        killer.join()
    wall = time.perf_counter() - start
    dispatch = tts.dispatch_report
    assert dispatch is not None
    delivered = sum(dispatch.chunks_per_replica.values())
    return KillRun(
        replicas=replicas,
        killed=killed[0] if killed else None,
        chunks=dispatch.chunks,
        delivered=delivered,
        lost=dispatch.chunks - delivered,
        duplicated=dispatch.duplicates_discarded,
        retried_chunks=dispatch.retried_chunks,
        replacements=list(dispatch.started_replicas),
        wall_seconds=wall,
        difference_from_undisturbed=audio_difference(result, reference),
    )
