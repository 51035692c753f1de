"""One replica: a :class:`~chatterbox_vllm.tts.ChatterboxTTS` (one T3 vLLM engine + one S3Gen) in
a Ray actor.

:class:`ReplicaWorker` is a plain class; the pool turns it into an actor with
``ray.remote(ReplicaWorker).options(num_gpus=1, ...)`` so Ray picks the node and the GPU (it sets
``CUDA_VISIBLE_DEVICES`` for the actor, so the engine inside sees exactly one device).

The driver sends plan items, never text to re-split: each :class:`ChunkSpec` is one
:class:`~chatterbox_vllm.planner.PlanItem` (its text, seed and token cap) plus its voice's key.
The replica runs a batch of them with :meth:`ChatterboxTTS.execute_items` - the local executor
itself, one vLLM batch, S3Gen pipelined - so its audio for an item is exactly what a single
``ChatterboxTTS`` produces for that item. An input error about one item comes back as the typed
:class:`~chatterbox_vllm.errors.ChunkInputError` (with the item's order). Joining, crossfading and
watermarking happen in the driver.

Voices travel through Ray's object store: the driver ``ray.put``\\ s each prepared voice once and
sends only its reference; a replica fetches a voice the first time it needs it and keeps it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from cachetools import LRUCache

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE
from chatterbox_vllm.hub import DEFAULT_REPO_ID, DEFAULT_REVISION
from chatterbox_vllm.models import ModelKind
from chatterbox_vllm.planner import PlanItem
from chatterbox_vllm.results import ChunkAudio
from chatterbox_vllm.voices import Voice

if TYPE_CHECKING:
    from chatterbox_vllm.config import EngineConfig
    from chatterbox_vllm.tts import ChatterboxTTS

logger = logging.getLogger(__name__)


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
    model: ModelKind = "english"
    """Which model to download without ``model_dir`` (a directory's model is detected)."""

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
            model=self.model,
        )


@dataclass(frozen=True)
class ChunkSpec:
    """One plan item for a replica, with its voice's key in the call's voice table (``None``:
    the checkpoint's built-in voice)."""

    item: PlanItem
    voice: str | None

    @property
    def order(self) -> int:
        return self.item.order


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
    model: ModelKind = "english"


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
        self._voices: LRUCache[str, Voice] = LRUCache(maxsize=max(1, config.voice_cache_size))
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
            model=self._tts.model,
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
        call_voices = self._fetch_voices(voices)
        default = self._tts.default_voice
        item_voices = []
        for chunk in chunks:
            voice = default if chunk.voice is None else call_voices[chunk.voice]
            assert voice is not None, "the driver checked that every replica has a default voice"
            item_voices.append(voice)
        audio, _ = self._tts.execute_items([c.item for c in chunks], item_voices)
        return [audio[chunk.order] for chunk in chunks]

    def _fetch_voices(self, voices: dict[str, Any]) -> dict[str, Voice]:
        """This call's voices by key, fetching (once) those not cached here."""
        found = {key: self._voices.get(key) for key in voices}
        missing = {key: ref for key, ref in voices.items() if found[key] is None}
        if missing:
            import ray

            for key, voice in zip(missing, ray.get(list(missing.values()))):
                found[key] = voice
                self._voices[key] = voice
            self._voices_fetched += len(missing)
            logger.debug("fetched %d voice(s) from the object store", len(missing))
        return {key: voice for key, voice in found.items() if voice is not None}

    def shutdown(self) -> None:
        """Stops the vLLM engine (its engine-core process) and the event loop thread."""
        self._tts.close()
