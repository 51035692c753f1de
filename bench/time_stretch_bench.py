"""Which library stretches speech in time (``speed``) best: measured on real recordings.

For each recording (resampled to the product's 24 kHz) and each speed, every candidate's output
is compared with the original:

* duration: output length / (input length / speed) - 1;
* pitch: WORLD's F0 (pyworld dio + stonemask) of the output, its frames mapped back onto the
  original's time axis, against the original's: the median absolute difference in semitones over
  frames voiced in both, and the shift of the median F0;
* spectral distortion: log-mel spectra (80 bands) of the output, time-normalised to the
  original's frame count, against the original's: RMS difference in dB, averaged over frames;
* cost: seconds of CPU per second of input audio.

Candidates: Rubber Band through pedalboard's ``time_stretch`` (offline, and chunked the way
``chatterbox_vllm.speed`` streams it); audiotsm's WSOLA (a real-time stretcher); librosa's phase
vocoder (``librosa.effects.time_stretch``).

Run (the candidates are bench-only dependencies, not the product's)::

    uv venv /tmp/stretch-bench && VIRTUAL_ENV=/tmp/stretch-bench uv pip install pedalboard \
        audiotsm librosa pyworld soundfile numpy "setuptools<81"
    PYTHONPATH=packages/chatterbox-meta/src /tmp/stretch-bench/bin/python \
        bench/time_stretch_bench.py ../shared/data/*.wav ../shared/data/*.mp3 \
        --markdown bench/results/time-stretch.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RATE = 24_000
SPEEDS = (0.5, 0.75, 1.5, 2.0)


def load(path: Path) -> np.ndarray:
    import librosa

    audio, _ = librosa.load(str(path), sr=RATE, mono=True)
    return audio.astype(np.float32)


def rubberband(audio: np.ndarray, speed: float) -> np.ndarray:
    import pedalboard

    return pedalboard.time_stretch(audio[None, :], RATE, stretch_factor=speed)[0]


def rubberband_streamed(audio: np.ndarray, speed: float) -> np.ndarray:
    """The product's streamed path (0.5 s chunks, as S3Gen's windows arrive)."""
    from chatterbox_vllm.speed import SpeedStretcher

    stretcher = SpeedStretcher(speed, RATE)
    step = RATE // 2
    pieces = [
        stretcher.process(audio[start : start + step], final=start + step >= len(audio))
        for start in range(0, len(audio), step)
    ]
    return np.concatenate(pieces)


def wsola(audio: np.ndarray, speed: float) -> np.ndarray:
    from audiotsm import wsola as make_wsola
    from audiotsm.io.array import ArrayReader, ArrayWriter

    writer = ArrayWriter(channels=1)
    make_wsola(channels=1, speed=speed).run(ArrayReader(audio[None, :].astype(np.float64)), writer)
    return writer.data[0].astype(np.float32)


def phase_vocoder(audio: np.ndarray, speed: float) -> np.ndarray:
    import librosa

    return librosa.effects.time_stretch(audio, rate=speed)


CANDIDATES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "pedalboard time_stretch (Rubber Band)": rubberband,
    "pedalboard, streamed in 0.5 s chunks (product)": rubberband_streamed,
    "audiotsm WSOLA": wsola,
    "librosa phase vocoder": phase_vocoder,
}


def f0_track(audio: np.ndarray) -> np.ndarray:
    import pyworld

    signal = audio.astype(np.float64)
    f0, times = pyworld.dio(signal, RATE, frame_period=5.0)
    return pyworld.stonemask(signal, f0, times, RATE)


def log_mel(audio: np.ndarray) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=audio, sr=RATE, n_fft=1024, hop_length=240, n_mels=80)
    return 10 * np.log10(np.maximum(mel, 1e-10))


def onto(track: np.ndarray, frames: int) -> np.ndarray:
    """A track (frames on its last axis) resampled onto ``frames`` frames (nearest frame)."""
    index = np.round(np.linspace(0, track.shape[-1] - 1, frames)).astype(int)
    return track[..., index]


def compare(original: np.ndarray, stretched: np.ndarray, speed: float) -> dict[str, float]:
    duration_error = len(stretched) / (len(original) / speed) - 1
    f0_a = f0_track(original)
    f0_b = onto(f0_track(stretched), len(f0_a))
    voiced = (f0_a > 0) & (f0_b > 0)
    semitones = 12 * np.abs(np.log2(f0_b[voiced] / f0_a[voiced]))
    median_shift = 12 * np.log2(np.median(f0_b[f0_b > 0]) / np.median(f0_a[f0_a > 0]))
    mel_a = log_mel(original)
    mel_b = onto(log_mel(stretched), mel_a.shape[1])
    loud = mel_a.max(axis=0) > mel_a.max() - 60  # frames within 60 dB of the loudest
    distortion = np.sqrt(np.mean((mel_a - mel_b) ** 2, axis=0))[loud].mean()
    return {
        "duration_error": float(duration_error),
        "pitch_semitones": float(np.median(semitones)),
        "median_f0_shift": float(median_shift),
        "spectral_db": float(distortion),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("recordings", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path, help="write the results table here")
    args = parser.parse_args()
    rows: dict[tuple[str, float], list[dict[str, float]]] = {}
    for path in args.recordings:
        audio = load(path)
        print(f"{path.name}: {len(audio) / RATE:.1f} s", file=sys.stderr)
        for speed in SPEEDS:
            for name, stretch in CANDIDATES.items():
                started = time.process_time()
                stretched = stretch(audio, speed)
                cost = (time.process_time() - started) / (len(audio) / RATE)
                result = compare(audio, stretched, speed) | {"cost": cost}
                rows.setdefault((name, speed), []).append(result)
    total = sum(len(load(p)) for p in args.recordings) / RATE
    lines = [
        f"{len(args.recordings)} recordings ({', '.join(p.name for p in args.recordings)}; "
        f"{total:.0f} s in all, at 24 kHz). Means over the recordings; pitch is the median "
        "absolute F0 difference (semitones) over frames voiced in both, after mapping the "
        "output's frames onto the original's time axis; spectral distortion is the RMS log-mel "
        "difference (dB) of the time-normalised spectra; cost is CPU seconds per second of input.",
        "",
        "| candidate | speed | duration error | pitch diff (st) | median F0 shift (st) "
        "| spectral distortion (dB) | cost (s/s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, speed), results in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
        mean = {key: float(np.mean([r[key] for r in results])) for key in results[0]}
        lines.append(
            f"| {name} | {speed:g} | {mean['duration_error']:+.2%} | "
            f"{mean['pitch_semitones']:.2f} | {mean['median_f0_shift']:+.2f} | "
            f"{mean['spectral_db']:.2f} | {mean['cost']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
