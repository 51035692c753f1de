"""Streaming audio encoders for the server: float chunks in, encoded bytes out as they are ready.

``wav`` is 16-bit PCM in a RIFF container written by Python's :mod:`wave` module, with the
"unknown length" sizes streaming servers use (players read to the end of the stream); ``pcm`` is
raw 16-bit little-endian samples (what OpenAI's ``pcm`` format is). ``flac``, ``mp3``, ``opus``
(Ogg) and ``aac`` (ADTS) are encoded by FFmpeg's encoders through PyAV, and sent as they are
encoded. FLAC is encoded as it comes too but sent once complete: its STREAMINFO header, written
last, holds the length that decoders such as libsndfile need.
"""

from __future__ import annotations

import io
import logging
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from chatterbox_vllm.errors import UnsupportedAudioFormatError

logger = logging.getLogger(__name__)

SAMPLE_WIDTH = 2  # 16-bit PCM


@dataclass(frozen=True)
class ResponseFormat:
    name: str
    media_type: str
    container: str | None = None
    """PyAV container (``None``: not a PyAV format)."""
    codec: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    streamable: bool = True
    """False: the bytes are sent when the audio is complete (FLAC's header holds the length,
    which decoders such as libsndfile need)."""


RESPONSE_FORMATS: dict[str, ResponseFormat] = {
    f.name: f
    for f in (
        ResponseFormat("wav", "audio/wav"),
        ResponseFormat("pcm", "audio/pcm"),
        ResponseFormat("flac", "audio/flac", "flac", "flac", streamable=False),
        ResponseFormat(
            "mp3", "audio/mpeg", "mp3", "libmp3lame", (("write_xing", "0"), ("id3v2_version", "0"))
        ),
        ResponseFormat("opus", "audio/ogg", "ogg", "libopus"),
        ResponseFormat("aac", "audio/aac", "adts", "aac"),
    )
}
"""OpenAI's ``response_format`` values, in the order OpenAI lists them."""


def available_formats() -> list[str]:
    """The formats this installation can encode (PyAV's FFmpeg must have the codec)."""
    names = []
    for fmt in RESPONSE_FORMATS.values():
        if fmt.codec is None:
            names.append(fmt.name)
            continue
        try:
            import av

            av.codec.Codec(fmt.codec, "w")
            names.append(fmt.name)
        except Exception:  # PyAV missing or built without that encoder
            continue
    return names


def _pcm16(waveform: torch.Tensor) -> np.ndarray:
    data = waveform.detach().to("cpu", torch.float32).reshape(-1).clamp(-1.0, 1.0).numpy()
    return np.round(data * 32767.0).astype("<i2")


class _Sink(io.RawIOBase):
    """A write-only, seekable byte sink that hands out what has been written since the last
    :meth:`take`. Writes at positions already handed out are dropped (see the module docs)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._position = 0
        self._sent = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        end = self._position + len(data)
        if end > self._sent:
            start = max(self._position, self._sent)
            piece = data[start - self._position :]
            offset = start - self._sent
            if len(self._data) < offset + len(piece):
                self._data.extend(b"\0" * (offset + len(piece) - len(self._data)))
            self._data[offset : offset + len(piece)] = piece
        self._position = end
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {
            io.SEEK_SET: 0,
            io.SEEK_CUR: self._position,
            io.SEEK_END: self._sent + len(self._data),
        }
        self._position = base[whence] + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        out = bytes(self._data)
        self._sent += len(out)
        self._data.clear()
        return out


class StreamEncoder:
    """Encodes one response: :meth:`encode` per chunk, then :meth:`finish`; each returns the
    bytes that are ready (possibly none)."""

    def __init__(self, format_name: str, sample_rate: int) -> None:
        if format_name not in RESPONSE_FORMATS:
            raise UnsupportedAudioFormatError(
                f"response_format {format_name!r} is not supported; use one of "
                f"{', '.join(available_formats())}"
            )
        self.format = RESPONSE_FORMATS[format_name]
        self.sample_rate = sample_rate
        self._encode: Callable[[np.ndarray], bytes]
        self._finish: Callable[[], bytes]
        if self.format.name == "pcm":
            self._encode, self._finish = (lambda pcm: pcm.tobytes()), (lambda: b"")
        elif self.format.name == "wav":
            self._open_wav()
        else:
            self._open_av()

    def _open_wav(self) -> None:
        self._sink = _Sink()
        self._wave = wave.open(self._sink, "wb")  # type: ignore[call-overload]  # noqa: SIM115
        self._wave.setnchannels(1)
        self._wave.setsampwidth(SAMPLE_WIDTH)
        self._wave.setframerate(self.sample_rate)
        # The length is unknown while streaming: the header claims the most a RIFF file holds.
        # wave rewrites the sizes when it is closed; the sink drops that rewrite of bytes
        # already sent.
        self._wave.setnframes((0x7FFFFFFF - 36) // SAMPLE_WIDTH)
        self._encode, self._finish = self._wav_chunk, self._wav_finish

    def _wav_chunk(self, pcm: np.ndarray) -> bytes:
        self._wave.writeframesraw(pcm.tobytes())
        return self._sink.take()

    def _wav_finish(self) -> bytes:
        self._wave.close()
        return self._sink.take()

    def _open_av(self) -> None:
        import av

        self._sink = _Sink()
        self._container = av.open(
            self._sink, mode="w", format=self.format.container, options=dict(self.format.options)
        )
        assert self.format.codec is not None
        self._stream: Any = self._container.add_stream(self.format.codec, rate=self.sample_rate)
        self._stream.layout = "mono"
        self._samples = 0
        self._encode, self._finish = self._av_chunk, self._av_finish

    def _av_chunk(self, pcm: np.ndarray) -> bytes:
        import av

        if pcm.size:
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._samples
            self._samples += pcm.size
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take() if self.format.streamable else b""

    def _av_finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def encode(self, waveform: torch.Tensor) -> bytes:
        return self._encode(_pcm16(waveform))

    def finish(self) -> bytes:
        return self._finish()

    def close(self) -> None:
        """Ends an encoder whose response ended early (no :meth:`finish`): its writer is closed
        now, while its sink is open, instead of by the garbage collector after the sink (the
        ``wave`` writer's finaliser then failed with "I/O operation on closed file")."""
        writer = getattr(self, "_wave", None) or getattr(self, "_container", None)
        if writer is None:
            return
        try:
            writer.close()  # idempotent after finish()
        except Exception as error:  # an unfinished stream: what it would write is not wanted
            logger.debug("closing an unfinished %s encoder: %s", self.format.name, error)


def encode_whole(format_name: str, waveform: torch.Tensor, sample_rate: int) -> bytes:
    """One complete file of ``waveform`` in ``format_name``."""
    encoder = StreamEncoder(format_name, sample_rate)
    return encoder.encode(waveform) + encoder.finish()
