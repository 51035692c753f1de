"""``speed``: speech made faster or slower without changing its pitch (OpenAI's 0.25-4.0).

The stretching itself is Rubber Band's (through pedalboard's ``time_stretch``), chosen by
measurement on real speech against audiotsm's WSOLA and librosa's phase vocoder
(``bench/time_stretch_bench.py``, ``bench/results/time-stretch.md``). ``speed == 1.0`` never
reaches this module: the audio is returned untouched, bit for bit.

Streams arrive in pieces, and an offline stretcher run on each piece alone would click at every
join (each run starts and ends its own analysis windows). :class:`SpeedStretcher` therefore keeps
state across pieces: every run sees ``CONTEXT_SECONDS`` of already emitted input before the new
audio and holds back ``LOOKAHEAD_SECONDS`` at its end until the next piece (or the end) arrives,
emits only the middle, and crossfades ``CROSSFADE_SECONDS`` where one run's output meets the
next. The output's length is kept on the exact total ``round(input / speed)``, so a stream and a
whole-text ``generate`` have the same duration.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from chatterbox_vllm.errors import InvalidParameterError

CONTEXT_SECONDS = 0.25
"""Input already emitted that each run sees again (Rubber Band's analysis windows settle)."""
LOOKAHEAD_SECONDS = 0.25
"""Input held back at the end of a piece until more arrives (its windows need the future)."""
MIN_RUN_SECONDS = 0.1
"""The least new input a run emits (shorter runs cost more than they give)."""
CROSSFADE_SECONDS = 0.02
"""Where one run's output meets the next, an equal-power crossfade this long (output time)."""


def _rubber_band(audio: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    import pedalboard

    if audio.size == 0:
        return audio
    out = pedalboard.time_stretch(
        np.ascontiguousarray(audio, dtype=np.float32)[None, :], sample_rate, stretch_factor=speed
    )
    return np.asarray(out[0], dtype=np.float32)


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    """``audio`` cut or zero-padded to ``length`` samples."""
    if audio.size >= length:
        return audio[:length]
    return np.concatenate([audio, np.zeros(length - audio.size, np.float32)])


def check_speed(speed: float) -> float:
    # The range itself is the controls contract's (CONTROLS["speed"]); this guards direct callers.
    if not 0.25 <= speed <= 4.0:
        raise InvalidParameterError(f"speed must be in [0.25, 4] (playback speed), got {speed!r}")
    require_time_stretch(speed)
    return float(speed)


def require_time_stretch(speed: float) -> None:
    """A speed other than 1.0 needs pedalboard (the ``speed`` extra): checked when the request is
    made, before any model work, so a missing library is a clear error rather than lost work."""
    if speed != 1.0 and importlib.util.find_spec("pedalboard") is None:
        raise InvalidParameterError(
            f"speed {speed:g} needs the time-stretch library pedalboard (Rubber Band, GPL-3.0), "
            "which is not installed: pip install 'chatterbox-vllm[speed]' (speed 1.0 needs nothing)"
        )


def change_speed(audio: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """A whole recording at ``speed`` (2.0: half as long), pitch unchanged; ``speed == 1.0``
    returns ``audio`` itself. The result has ``round(len(audio) / speed)`` samples."""
    if speed == 1.0:
        return audio
    check_speed(speed)
    return _fit(_rubber_band(audio, sample_rate, speed), round(audio.size / speed))


class SpeedStretcher:
    """Stretches a stream piece by piece: :meth:`process` takes each piece of input (``final``
    on the last) and returns the output that is ready. Pieces may have any length; the output
    of a whole stream is ``round(total input / speed)`` samples with no discontinuity at the
    joins of the pieces. At ``speed == 1.0`` every piece is returned as it came."""

    def __init__(self, speed: float, sample_rate: int) -> None:
        self.speed = speed if speed == 1.0 else check_speed(speed)
        self.sample_rate = sample_rate
        empty: np.ndarray = np.zeros(0, np.float32)
        self._context = empty  # emitted input the next run sees again
        self._pending = empty  # input not emitted yet
        self._fade_tail = empty  # last run's output past its end, to fade out
        self._taken = 0  # input samples emitted so far
        self._given = 0  # output samples returned so far
        self._lookahead = round(LOOKAHEAD_SECONDS * sample_rate)
        self._context_limit = round(CONTEXT_SECONDS * sample_rate)
        self._crossfade = round(CROSSFADE_SECONDS * sample_rate)
        self._min_run = round(MIN_RUN_SECONDS * sample_rate)
        self._done = False

    def process(self, piece: np.ndarray, *, final: bool = False) -> np.ndarray:
        if self._done:
            raise RuntimeError("SpeedStretcher.process called after the final piece")
        piece = np.asarray(piece, dtype=np.float32).reshape(-1)
        if self.speed == 1.0:
            self._done = final
            return piece
        self._pending = np.concatenate([self._pending, piece])
        self._done = final
        # Emit all but the look-ahead, once that is at least MIN_RUN_SECONDS of input.
        take = self._pending.size if final else self._pending.size - self._lookahead
        if take <= 0 or (not final and take < self._min_run):
            return np.zeros(0, np.float32)
        return self._run(take, final)

    def _run(self, take: int, final: bool) -> np.ndarray:
        segment = np.concatenate([self._context, self._pending])
        stretched = _rubber_band(segment, self.sample_rate, self.speed)
        scale = stretched.size / max(segment.size, 1)  # output samples per input sample
        start = round(self._context.size * scale)
        target = round((self._taken + take) / self.speed)  # exact total output after this run
        count = target - self._given
        emitted = _fit(stretched[start:], count + (0 if final else self._crossfade))
        out, fade_tail = emitted[:count].copy(), emitted[count:]
        overlap = min(self._fade_tail.size, out.size)
        if overlap:
            # The previous run's output past its end and this run's start are the same stretch of
            # input rendered twice, nearly in phase: a raised-cosine fade (gains summing to one;
            # an equal-power fade would bump the level by up to 3 dB here).
            fade_in = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, overlap, dtype=np.float32))
            out[:overlap] = self._fade_tail[:overlap] * (1 - fade_in) + out[:overlap] * fade_in
        self._fade_tail = fade_tail.copy()
        emitted_input = self._pending[:take]
        self._context = np.concatenate([self._context, emitted_input])[-self._context_limit :]
        self._pending = self._pending[take:]
        self._taken += take
        self._given += count
        return out
