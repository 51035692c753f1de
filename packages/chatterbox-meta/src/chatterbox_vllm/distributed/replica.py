"""One replica: a :class:`~chatterbox_vllm.tts.ChatterboxTTS` (one T3 vLLM engine + one S3Gen) in
a Ray actor.

:class:`ReplicaWorker` is a plain class; the pool turns it into an actor with
``ray.remote(ReplicaWorker).options(num_gpus=1, ...)`` so Ray picks the node and the GPU (it sets
``CUDA_VISIBLE_DEVICES`` for the actor, so the engine inside sees exactly one device).

The driver sends chunks, never whole texts: each :class:`ChunkSpec` is one chunk that the driver
cut with :func:`~chatterbox_vllm.text.split_text`, carrying that chunk's own seed. The replica
speaks a batch of them with :meth:`ChatterboxTTS.generate_requests` - one vLLM batch, S3Gen
pipelined - as one-chunk requests: a chunk never exceeds the chunk size, so ``split_text`` returns
it unchanged, and the replica's audio for it is exactly what a single ``ChatterboxTTS`` produces
for that chunk inside the whole text. Joining, crossfading and watermarking happen in the driver.

Voices travel through Ray's object store: the driver ``ray.put``\\ s each prepared voice once and
sends only its reference; a replica fetches a voice the first time it needs it and keeps it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE
from chatterbox_vllm.errors import ChatterboxError
from chatterbox_vllm.hub import DEFAULT_REPO_ID, DEFAULT_REVISION
from chatterbox_vllm.params import GenerationParams
from chatterbox_vllm.voices import Voice

if TYPE_CHECKING:
    from chatterbox_vllm.tts import ChatterboxTTS, EngineConfig

logger = logging.getLogger(__name__)

_REQUEST_PREFIX = re.compile(r"^text (\d+): ")
"""How ChatterboxTTS names the failing request of a call with several."""


class ChunkInputError(ChatterboxError):
    """A replica rejected one chunk's input (e.g. a character T3's tokenizer cannot encode).

    ``error`` is what the replica's ``ChatterboxTTS`` raised, without its request prefix;
    ``order`` is the chunk's position in the driver's call (``None`` if it could not be told),
    so the driver can name the user's text as ``ChatterboxTTS`` would.
    """

    def __init__(self, order: int | None, error: ChatterboxError) -> None:
        super().__init__(order, error)
        self.order = order
        self.error = error

    def __str__(self) -> str:
        return f"chunk {self.order}: {self.error}"


def chunk_input_error(chunks: list[ChunkSpec], error: ChatterboxError) -> ChunkInputError:
    """Maps an input error of a multi-chunk replica call back to the chunk it is about."""
    message = str(error)
    if len(chunks) == 1:
        return ChunkInputError(chunks[0].order, error)
    match = _REQUEST_PREFIX.match(message)
    if match is None or int(match.group(1)) >= len(chunks):
        return ChunkInputError(None, error)
    return ChunkInputError(chunks[int(match.group(1))].order, type(error)(message[match.end() :]))


@dataclass(frozen=True)
class CheckpointSource:
    """Where every replica loads the checkpoint from.

    ``model_dir``: a checkpoint directory that exists at this path on every node that runs a
    replica (a shared filesystem, or the same copy on each node). Without it, each node downloads
    ``repo_id`` at ``revision`` into its own Hugging Face cache (``cache_dir``), as
    :meth:`ChatterboxTTS.from_pretrained` does.
    """

    model_dir: str | None = None
    repo_id: str = DEFAULT_REPO_ID
    revision: str | None = DEFAULT_REVISION
    cache_dir: str | None = None
    token: str | bool | None = None
    local_files_only: bool | None = None

    def describe(self) -> str:
        if self.model_dir is not None:
            return self.model_dir
        return f"{self.repo_id}@{self.revision or 'main'}"

    def load(self, config: EngineConfig) -> ChatterboxTTS:
        """Builds the replica's engine; never watermarks (the driver does, after joining)."""
        from chatterbox_vllm.tts import ChatterboxTTS

        if self.model_dir is not None:
            return ChatterboxTTS.from_local(self.model_dir, config=config, watermark=False)
        return ChatterboxTTS.from_pretrained(
            self.repo_id,
            self.revision,
            cache_dir=self.cache_dir,
            token=self.token,
            local_files_only=self.local_files_only,
            config=config,
            watermark=False,
        )


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk for a replica to speak."""

    order: int
    """Position of the chunk in the driver's call (only echoed back)."""
    text: str
    voice: str | None
    """Content hash of the chunk's voice in the call's voice table; ``None``: the checkpoint's
    built-in voice."""
    params: GenerationParams
    """The request's controls with ``seed`` already set to this chunk's seed."""


@dataclass(frozen=True)
class ChunkAudio:
    """A replica's audio for one chunk (float32 CPU waveform at 24 kHz)."""

    order: int
    waveform: torch.Tensor
    speech_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class ReplicaInfo:
    """Where a replica runs and what it loaded."""

    node_id: str
    hostname: str
    pid: int
    gpu_ids: tuple[str, ...]
    device: str
    has_default_voice: bool
    load_seconds: float


def voice_on_cpu(voice: Voice) -> Voice:
    """``voice`` with S3Gen's reference tensors on the CPU, so it can be shipped to any node
    (T3's part is CPU already)."""
    reference = voice.s3gen
    tensors = {
        name: getattr(reference, name).detach().cpu()
        for name in ("prompt_tokens", "prompt_mel", "speaker_embedding")
    }
    return replace(voice, s3gen=replace(reference, **tensors))


class ReplicaWorker:
    """The body of one replica actor (see the module docs)."""

    def __init__(self, source: CheckpointSource, config: EngineConfig) -> None:
        start = time.perf_counter()
        self._tts = source.load(config)
        self._voices: OrderedDict[str, Voice] = OrderedDict()
        self._voice_capacity = max(1, config.voice_cache_size)
        self._voices_fetched = 0
        gpu_ids: tuple[str, ...] = ()
        node_id = ""
        try:
            import ray

            context = ray.get_runtime_context()
            node_id = context.get_node_id()
            gpu_ids = tuple(str(i) for i in context.get_accelerator_ids().get("GPU", []))
        except Exception:  # outside Ray (tests of the class itself): no node, no Ray GPUs
            logger.debug("no Ray runtime context; replica runs outside an actor")
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._info = ReplicaInfo(
            node_id=node_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            gpu_ids=gpu_ids,
            device=device,
            has_default_voice=self._tts.default_voice is not None,
            load_seconds=time.perf_counter() - start,
        )
        logger.info(
            "replica ready on %s (pid %d, device %s, GPUs %s) in %.1f s",
            self._info.hostname,
            self._info.pid,
            device,
            ",".join(gpu_ids) or "none",
            self._info.load_seconds,
        )

    def info(self) -> ReplicaInfo:
        return self._info

    def voice_stats(self) -> dict[str, int]:
        """``prepared``: voices this replica computed from audio; ``fetched``: prepared voices it
        fetched from the object store (each once)."""
        return {"prepared": self._tts.voice_cache.misses, "fetched": self._voices_fetched}

    def default_voice(self) -> Voice | None:
        voice = self._tts.default_voice
        return None if voice is None else voice_on_cpu(voice)

    def prepare_voice(self, wav_24k: torch.Tensor) -> Voice:
        """Prepares a voice from validated mono 24 kHz samples (the driver decoded the file)."""
        return voice_on_cpu(self._tts.prepare_voice((wav_24k, S3GEN_SAMPLE_RATE)))

    def synthesize_chunks(
        self, chunks: list[ChunkSpec], voices: dict[str, Any]
    ) -> list[ChunkAudio]:
        """Speaks ``chunks`` as one batch. ``voices`` maps content hash -> ``ray.ObjectRef`` of
        the :class:`Voice`; only voices this replica has not seen yet are fetched."""
        from chatterbox_vllm.tts import TTSRequest

        self._fetch_voices(voices)
        requests = [
            TTSRequest(
                chunk.text,
                None if chunk.voice is None else self._voices[chunk.voice],
                chunk.params,
            )
            for chunk in chunks
        ]
        try:
            results = self._tts.generate_requests(requests, progress=False)
        except ChatterboxError as error:
            raise chunk_input_error(chunks, error) from None
        audio = []
        for chunk, result in zip(chunks, results):
            if result.chunks != (chunk.text,):
                # split_text returns a chunk that fits unchanged; a re-split means the driver and
                # this replica disagree on the chunk size, and the audio would not match.
                raise RuntimeError(
                    f"replica split chunk {chunk.order} ({len(chunk.text)} characters) into "
                    f"{len(result.chunks)} pieces; driver and replica chunk sizes differ"
                )
            audio.append(
                ChunkAudio(
                    order=chunk.order,
                    waveform=result.waveform,
                    speech_tokens=result.speech_tokens[0],
                    finish_reason=result.finish_reasons[0],
                )
            )
        return audio

    def _fetch_voices(self, voices: dict[str, Any]) -> None:
        missing = {key: ref for key, ref in voices.items() if key not in self._voices}
        if missing:
            import ray

            for key, voice in zip(missing, ray.get(list(missing.values()))):
                self._voices[key] = voice
            self._voices_fetched += len(missing)
            logger.debug("fetched %d voice(s) from the object store", len(missing))
        for key in voices:
            self._voices.move_to_end(key)
        # Keep the voices of this call even when they exceed the capacity.
        while len(self._voices) > max(self._voice_capacity, len(voices)):
            self._voices.popitem(last=False)

    def shutdown(self) -> None:
        """Stops the vLLM engine (its engine-core process) and the event loop thread."""
        self._tts.close()
