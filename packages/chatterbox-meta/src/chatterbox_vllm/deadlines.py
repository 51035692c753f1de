"""Deadlines, not batches: which streamed windows S3Gen runs next, how many, and how many streams
the engine holds. Pure and clock-injected (every method takes ``now``), so the policy is tested
on a simulated clock; :class:`~chatterbox_vllm.scheduler.S3GenScheduler` drives it with real time.

* Every window has a **deadline**: for a playing stream, when its player runs dry (the audio
  delivered so far, played in real time from the first audio, plus the time it already stalled);
  for a stream that has not played yet, its arrival plus a first-audio target.
* A round is a prefix of the ready windows in deadline order (earliest first), sized from the
  batch shapes S3Gen runs (rows 1, 2, 4, ... up to ``max_batch``): :meth:`DeadlinePolicy.choose`
  picks the size whose expected duration (:class:`RoundCosts`, an EWMA of measured round times
  per shape) makes the fewest playing streams miss (then the least late), then the latest first
  window the least late, over this round and the full rounds every other ready window would then
  take; among equals the largest (throughput). A small urgent round therefore
  beats a large late one, a new stream's first window is added only while the playing streams
  keep their slack, and nothing ever waits for a batch to fill (a ready window always runs).
* **Capacity** (:class:`CapacityModel`): the real-time streams S3Gen holds at its full batch,
  from the same per-shape costs over a typical stream's windows, and the streams T3 feeds at
  real time once its per-request token rate is measured to bind.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

SPEECH_TOKENS_PER_SECOND = 25.0
"""T3's speech tokens per second of audio (S3Gen's 25 Hz tokens)."""
FIRST_AUDIO_TARGET_S = 0.4
"""A new stream's first window is due this long after the stream opened."""
TOKEN_BUCKET = 32
"""Round widths are costed in buckets of this many flow tokens (the flow pads to them on CUDA)."""
DEFAULT_UTILISATION = 0.8
"""Share of S3Gen's (and T3's) full-batch rate that admitted streams may use: rounds are not
always full and windows of different sizes pad to the widest."""


def row_bucket(rows: int) -> int:
    """The batch shape a round of ``rows`` windows runs as (the next power of two)."""
    return 1 << max(0, rows - 1).bit_length()


def token_bucket(tokens: int) -> int:
    return max(TOKEN_BUCKET, -(-tokens // TOKEN_BUCKET) * TOKEN_BUCKET)


UNMEASURED_EXPONENT = 0.5
"""A shape not measured yet costs the nearest measured one times (work ratio) ** this: batched
GPU work grows sublinearly with rows, and an optimistic guess gets the shape tried (and so
measured) where a pessimistic one would keep rounds small for ever."""


@dataclass
class RoundCosts:
    """Measured seconds of an S3Gen round per shape ``(row bucket, token bucket)``: an EWMA of
    each shape's rounds. A shape not measured yet is estimated from the measured shape of nearest
    work (rows x tokens) by :data:`UNMEASURED_EXPONENT`; with nothing measured, rounds are free
    (the first ones measure)."""

    alpha: float = 0.2
    """Weight of the newest measurement."""
    seconds: dict[tuple[int, int], float] = field(default_factory=dict)

    @staticmethod
    def shape(rows: int, tokens: int) -> tuple[int, int]:
        return row_bucket(rows), token_bucket(tokens)

    def observe(self, rows: int, tokens: int, seconds: float) -> None:
        key = self.shape(rows, tokens)
        old = self.seconds.get(key)
        self.seconds[key] = seconds if old is None else old + self.alpha * (seconds - old)

    def estimate(self, rows: int, tokens: int) -> float:
        if rows <= 0:
            return 0.0
        key = self.shape(rows, tokens)
        known = self.seconds.get(key)
        if known is not None:
            return known
        if not self.seconds:
            return 0.0
        work = key[0] * key[1]
        nearest = min(self.seconds, key=lambda k: (abs(math.log(k[0] * k[1] / work)), -k[0]))
        return self.seconds[nearest] * (work / (nearest[0] * nearest[1])) ** UNMEASURED_EXPONENT

    def at_rows(self, rows: int, tokens: int) -> float | None:
        """A round of ``rows`` windows ``tokens`` wide, from measurements of that row bucket
        only (in proportion to the width); None if that row bucket was never measured."""
        bucket, width = self.shape(rows, tokens)
        known = {t: c for (r, t), c in self.seconds.items() if r == bucket}
        if not known:
            return None
        nearest = min(known, key=lambda t: abs(math.log(t / width)))
        return known[nearest] * width / nearest


@dataclass(frozen=True)
class ReadyWindow:
    """A streamed window whose tokens are complete, as the policy sees it."""

    key: Hashable
    deadline: float
    playing: bool
    """False for a stream's first window (its deadline is the first-audio target)."""
    tokens: int
    """Tokens the flow runs for it (prompt part included): the round's width."""


@dataclass
class DeadlinePolicy:
    """Sizes S3Gen rounds to the earliest deadlines (module docstring)."""

    costs: RoundCosts
    max_batch: int

    def expected_seconds(self, windows: Sequence[ReadyWindow]) -> float:
        if not windows:
            return 0.0
        return self.costs.estimate(len(windows), max(w.tokens for w in windows))

    def choose(
        self,
        windows: Sequence[ReadyWindow],
        now: float,
        upcoming: Sequence[ReadyWindow] = (),
    ) -> list[ReadyWindow]:
        """The windows of the next round (never empty when ``windows`` is not): a prefix of
        the windows in deadline order, or of the playing streams' windows first (a new
        stream's first window may be due earlier, yet it only goes first while the players
        keep their slack), whichever prefix is best by :meth:`_judge`. ``upcoming``: playing
        streams' next windows whose tokens are not complete yet; each must still fit in a
        round of its own after this one (a long round must not run a player dry meanwhile)."""
        if not windows:
            return []
        by_deadline = sorted(windows, key=lambda w: (w.deadline, not w.playing))
        players_first = sorted(by_deadline, key=lambda w: not w.playing)
        best: tuple[int, float, float, int, int, int] | None = None
        chosen: list[ReadyWindow] = []
        for rank, ordered in enumerate((by_deadline, players_first)):
            most = min(len(ordered), self.max_batch)
            for size in sorted({min(1 << i, most) for i in range(most.bit_length() + 1)}):
                batch = ordered[:size]
                key = (*self._judge(batch, ordered[size:], upcoming, now), -size, rank)
                if best is None or key < best:
                    best, chosen = key, batch
        return chosen

    def _judge(
        self,
        batch: list[ReadyWindow],
        rest: list[ReadyWindow],
        upcoming: Sequence[ReadyWindow],
        now: float,
    ) -> tuple[int, float, float, int]:
        """How good running ``batch`` now is, smaller is better: (playing streams that miss,
        the players' total lateness, the latest first window's lateness, first windows that
        miss), if ``batch`` runs now, every other ready window (``rest``, in order) in full
        rounds after it, and each upcoming window alone after this round.

        Players come first: an admitted stream must not stall because of newcomers. Among new
        streams the latest first audio counts before how many make their target: counting
        misses first made the policy serve one or two first windows per round whenever only a
        few could still make it, and everyone after them came later (a burst's p95 is what
        its listeners see). Every candidate is judged on every ready window: judged on fewer
        (the next round only), a small round looked better than a full one whenever more than
        two rounds' windows were waiting, and a burst of streams was served in rounds of one or
        two windows (measured on an H200: 1.6 windows per round at 64 streams)."""
        done = now + self.expected_seconds(batch)
        late = [(w, done) for w in batch]
        then = done
        for start in range(0, len(rest), self.max_batch):
            group = rest[start : start + self.max_batch]
            then += self.expected_seconds(group)
            late += [(w, then) for w in group]
        late += [(w, done + self.expected_seconds([w])) for w in upcoming]
        playing = sum(1 for w, t in late if w.playing and t > w.deadline)
        lateness = sum(max(0.0, t - w.deadline) for w, t in late if w.playing)
        worst_first = max((t - w.deadline for w, t in late if not w.playing), default=0.0)
        first = sum(1 for w, t in late if not w.playing and t > w.deadline)
        return playing, round(lateness, 6), round(max(0.0, worst_first), 6), first


def window_deadline(
    *,
    opened_at: float,
    first_audio_at: float | None,
    stalled_s: float,
    audio_before_s: float,
    first_audio_target_s: float = FIRST_AUDIO_TARGET_S,
) -> float:
    """When a stream's next window is due: before any audio, ``opened_at`` plus the first-audio
    target; then when the ``audio_before_s`` delivered ahead of it has played (from the first
    audio, shifted by the time the player already stalled)."""
    if first_audio_at is None:
        return opened_at + first_audio_target_s
    return first_audio_at + stalled_s + audio_before_s


def typical_stream_windows(
    *,
    first_tokens: int = 16,
    largest_tokens: int = 100,
    lookahead: int = 3,
    left_context: int = 25,
    prompt_tokens: int = 50,
    audio_s: float = 12.0,
) -> list[tuple[int, float]]:
    """``(flow tokens, audio seconds)`` of the windows of a typical stream (a 25-45 word
    paragraph, ``audio_s`` of speech) cut as :class:`chatterbox_s3gen.StreamingConfig` cuts it:
    windows doubling from ``first_tokens`` up to ``largest_tokens``, each re-running the prompt,
    up to ``left_context`` earlier tokens and a ``lookahead``."""
    total = round(audio_s * SPEECH_TOKENS_PER_SECOND)
    kept, index, windows = 0, 0, []
    while kept < total:
        hop = min(largest_tokens, first_tokens * 2**index, total - kept)
        windows.append(
            (
                prompt_tokens + min(left_context, kept) + hop + lookahead,
                hop / SPEECH_TOKENS_PER_SECOND,
            )
        )
        kept += hop
        index += 1
    return windows


@dataclass
class CapacityModel:
    """How many real-time streams the engine holds (module docstring).

    * S3Gen: a full round of ``max_batch`` windows costs what such rounds measured (scaled to
      the window's width); a typical stream needs ``sum(cost / max_batch)`` busy seconds for its
      ``sum(audio)`` seconds, so S3Gen feeds ``utilisation * sum(audio) * max_batch / sum(cost)``
      streams at real time. Unknown (``None``) until a full round was measured: smaller rounds
      say little about a full one (their cost is mostly fixed), and a guess could admit too many.
    * T3: per-request token rate and aggregate rate (EWMA over :meth:`observe_t3` intervals).
      While each request gets more than ``t3_margin`` times the real-time rate, T3 does not bind
      (its aggregate grows with the batch: the rate measured at a small batch says nothing about
      a large one); once it gets less, T3 holds ``utilisation * aggregate / 25`` streams.
    """

    costs: RoundCosts
    max_batch: int
    windows: list[tuple[int, float]] = field(default_factory=typical_stream_windows)
    utilisation: float = DEFAULT_UTILISATION
    t3_margin: float = 1.5
    alpha: float = 0.3
    t3_tokens_per_request_s: float | None = None
    t3_tokens_per_s: float | None = None
    s3gen_audio_per_busy_s: float | None = None
    """Measured audio seconds per second of S3Gen busy time (reported; the model uses costs)."""

    def observe_t3(self, tokens: int, seconds: float, requests: float) -> None:
        """``tokens`` T3 produced in ``seconds`` while ``requests`` (mean) were decoding."""
        if seconds <= 0 or requests <= 0:
            return
        aggregate = tokens / seconds
        self.t3_tokens_per_s = self._mix(self.t3_tokens_per_s, aggregate)
        self.t3_tokens_per_request_s = self._mix(self.t3_tokens_per_request_s, aggregate / requests)

    def observe_s3gen(self, audio_s: float, busy_s: float) -> None:
        if busy_s > 0:
            self.s3gen_audio_per_busy_s = self._mix(self.s3gen_audio_per_busy_s, audio_s / busy_s)

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def s3gen_streams(self) -> float | None:
        costs = [self.costs.at_rows(self.max_batch, t) for t, _ in self.windows]
        if not costs or any(c is None for c in costs):
            return None
        busy = sum(c or 0.0 for c in costs)
        if busy <= 0:
            return None
        audio = sum(seconds for _, seconds in self.windows)
        return self.utilisation * audio * self.max_batch / busy

    def t3_streams(self) -> float | None:
        per_request, aggregate = self.t3_tokens_per_request_s, self.t3_tokens_per_s
        if per_request is None or aggregate is None:
            return None
        if per_request >= self.t3_margin * SPEECH_TOKENS_PER_SECOND:
            return None
        return self.utilisation * aggregate / SPEECH_TOKENS_PER_SECOND

    def streams(self) -> float | None:
        """The estimate: the smaller of the two that are known (``None``: nothing measured)."""
        known = [v for v in (self.s3gen_streams(), self.t3_streams()) if v is not None]
        return min(known) if known else None


__all__ = [
    "FIRST_AUDIO_TARGET_S",
    "CapacityModel",
    "DeadlinePolicy",
    "ReadyWindow",
    "RoundCosts",
    "row_bucket",
    "typical_stream_windows",
    "window_deadline",
]
