"""Chatterbox past one GPU: the same API as :class:`~chatterbox_vllm.tts.ChatterboxTTS`, served by
several replicas on a Ray cluster (one machine or many).

::

    from chatterbox_vllm import ReplicatedChatterboxTTS

    # 4 replicas (one GPU each) on the Ray cluster at head-node:6379 (or a local one without it)
    with ReplicatedChatterboxTTS.from_local("/models/chatterbox", replicas=4,
                                            address="head-node:6379") as tts:
        tts.generate(long_text, voice="me.wav", seed=7).save("chapter.wav")

A *replica* is one T3 vLLM engine plus one S3Gen on one GPU, in a Ray actor
(:mod:`chatterbox_vllm.distributed.replica`). This driver object holds no model. The call itself is
:class:`~chatterbox_vllm.front.SpeechFront`'s, shared with ``ChatterboxTTS``: the same plan
(:mod:`chatterbox_vllm.planner`: chunks, seeds, token caps), so a seeded call gives the same audio
as one ``ChatterboxTTS``, and the same join (crossfade, watermark). What this executor adds:
each voice is prepared once (on a replica) and shipped through Ray's object store, and the plan's
items are spread over the replicas by pending speech tokens
(:mod:`chatterbox_vllm.distributed.placement`); replicas run the items as they are. A replica that dies mid-call has
its unfinished chunks redone elsewhere and is replaced (:mod:`chatterbox_vllm.distributed.dispatch`).
See ``docs/multi-node.md`` for running a cluster.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE, AudioInput
from chatterbox_vllm.config import EngineConfig
from chatterbox_vllm.distributed.dispatch import ChunkDispatcher, DispatchReport
from chatterbox_vllm.distributed.pool import (
    ReplicaError,
    ReplicaHandle,
    ReplicaPool,
    ReplicaStatus,
)
from chatterbox_vllm.distributed.replica import CheckpointSource, ChunkSpec, voice_on_cpu
from chatterbox_vllm.errors import ChatterboxError, CheckpointError, InvalidParameterError
from chatterbox_vllm.front import SpeechFront
from chatterbox_vllm.hub import DEFAULT_REPO_ID, DEFAULT_REVISION
from chatterbox_vllm.models import ModelKind, check_model_kind
from chatterbox_vllm.planner import Plan
from chatterbox_vllm.results import ChunkAudio, GenerationStats, TTSRequest, VoiceLike
from chatterbox_vllm.voices import Voice, audio_content_hash, load_voice_audio_for
from chatterbox_vllm.watermark import Watermarker, resolve_watermarker

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointSource",
    "ReplicaError",
    "ReplicaHandle",
    "ReplicaStatus",
    "ReplicatedChatterboxTTS",
]


@dataclass(frozen=True)
class _VoiceHandle:
    """A request's voice on the Ray path: content hash and object-store reference (both
    ``None`` for the checkpoint's built-in voice, which every replica has)."""

    key: str | None
    ref: Any


class ReplicatedChatterboxTTS(SpeechFront[_VoiceHandle]):
    """:class:`~chatterbox_vllm.tts.ChatterboxTTS`'s API over Ray replicas (see the module docs).

    Build with :meth:`from_local` / :meth:`from_pretrained` (or the constructor with a
    :class:`CheckpointSource`); ``generate``, ``generate_requests`` and ``prepare_voice`` take the
    same arguments and return the same types as ``ChatterboxTTS``'s. :meth:`close` (or ``with``)
    stops the replicas (and the local Ray instance if this object started it). Calls are
    serialised; inside a call the chunks of all texts run on all replicas at once.

    Cluster and replica options:

    * ``address``: a Ray cluster to join (``"head-node:6379"``, ``"auto"``, ``"ray://..."``);
      ``None`` joins the cluster in ``RAY_ADDRESS`` or the one started on this machine with
      ``ray start``, else starts a private local one. Ignored when Ray is already initialised in
      this process.
    * ``replicas``: how many; default one per GPU in the cluster (one if it has no GPU).
    * ``num_gpus_per_replica``: default 1 when the cluster has GPUs, else 0 (CPU replicas);
      fractions share a GPU (lower ``gpu_memory_utilization`` accordingly).
    * ``num_cpus_per_replica``: Ray CPUs each replica reserves (1).
    * ``actor_options``: extra ``ray.remote`` options for the replica actors (placement groups,
      node affinity, ``runtime_env``, custom resources...).
    * ``ray_init_kwargs``: extra ``ray.init`` arguments.
    * ``max_chunks_per_call``: chunks per replica call (default ``max_num_seqs``, one vLLM batch).
    * ``max_calls_per_replica``: calls outstanding per replica (2: one decoding, one queued).
    * ``replace_failed`` / ``max_replacements``: start a new replica for each failed one, at most
      ``max_replacements`` times over this object's life (default twice the replica count).
    * ``max_chunk_attempts``: a chunk whose replica failed this many times fails the call.
    * ``startup_timeout_s``: longest a replica may take to load (downloads included).

    Engine knobs (``config`` or keyword overrides of :class:`EngineConfig` fields) apply to every
    replica.
    """

    def __init__(
        self,
        source: CheckpointSource,
        *,
        replicas: int | None = None,
        address: str | None = None,
        config: EngineConfig | None = None,
        watermark: bool | None | Watermarker = None,
        num_gpus_per_replica: float | None = None,
        num_cpus_per_replica: float = 1.0,
        actor_options: dict[str, Any] | None = None,
        ray_init_kwargs: dict[str, Any] | None = None,
        max_chunks_per_call: int | None = None,
        max_calls_per_replica: int = 2,
        max_chunk_attempts: int = 3,
        replace_failed: bool = True,
        max_replacements: int | None = None,
        startup_timeout_s: float = 1800.0,
        **config_overrides: Any,
    ) -> None:
        if not isinstance(source, CheckpointSource):
            raise InvalidParameterError(
                f"source must be a CheckpointSource, got {type(source).__name__}; use "
                "ReplicatedChatterboxTTS.from_local(directory) or .from_pretrained(repo_id)"
            )
        if replicas is not None and (
            isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1
        ):
            raise InvalidParameterError(f"replicas must be a positive int, got {replicas!r}")
        if num_gpus_per_replica is not None and not 0 <= num_gpus_per_replica <= 8:
            raise InvalidParameterError(
                f"num_gpus_per_replica must be in [0, 8], got {num_gpus_per_replica!r}"
            )
        if not num_cpus_per_replica >= 0:
            raise InvalidParameterError(
                f"num_cpus_per_replica must be >= 0, got {num_cpus_per_replica!r}"
            )
        super().__init__(
            (config or EngineConfig()).with_overrides(config_overrides),
            resolve_watermarker(watermark),
        )
        # One vLLM batch per call; replicas derive their own max_num_seqs when it is unset.
        chunks_per_call = max_chunks_per_call or self.config.max_num_seqs or 32
        if isinstance(chunks_per_call, bool) or not isinstance(chunks_per_call, int):
            raise InvalidParameterError(
                f"max_chunks_per_call must be a positive int, got {max_chunks_per_call!r}"
            )
        for name, value in (
            ("max_calls_per_replica", max_calls_per_replica),
            ("max_chunk_attempts", max_chunk_attempts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
        self.source = source

        import ray

        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            logger.info("connecting to Ray (%s)", address or "local / RAY_ADDRESS")
            ray.init(address=address, **(ray_init_kwargs or {}))
        elif address is not None:
            logger.warning(
                "Ray is already initialised in this process; using its cluster, not %s", address
            )
        try:
            num_gpus, count = self._plan_resources(
                replicas, num_gpus_per_replica, num_cpus_per_replica
            )
            self._pool = ReplicaPool(
                source,
                self.config,
                num_gpus=num_gpus,
                num_cpus=num_cpus_per_replica,
                actor_options=actor_options,
                max_replacements=2 * count if max_replacements is None else max_replacements,
                startup_timeout_s=startup_timeout_s,
            )
            logger.info(
                "starting %d replica(s) of %s (%g GPU, %g CPU each)",
                count,
                source.describe(),
                num_gpus,
                num_cpus_per_replica,
            )
            self._pool.start(count)
            self._pool.wait_until_ready()
        except BaseException:
            self._shutdown()
            raise
        self._dispatcher = ChunkDispatcher(
            self._pool,
            max_chunks_per_call=chunks_per_call,
            max_calls_per_replica=max_calls_per_replica,
            max_chunk_attempts=max_chunk_attempts,
            replace_failed=replace_failed,
        )
        self._has_default_voice = all(
            handle.info is not None and handle.info.has_default_voice for handle in self._pool.ready
        )
        models = {handle.info.model for handle in self._pool.ready if handle.info is not None}
        if len(models) > 1:
            self._shutdown()
            raise CheckpointError(
                f"the replicas loaded different models ({', '.join(sorted(models))}); every "
                "node must hold the same checkpoint"
            )
        if models:
            self.model = models.pop()
        self._default_voice: Voice | None = None
        # content hash -> (voice, object ref)
        self._voices: LRUCache[str, tuple[Voice, Any]] = LRUCache(
            maxsize=max(1, self.config.voice_cache_size)
        )
        self._voice_lock = threading.Lock()
        self.voice_cache_hits = 0
        self.voice_cache_misses = 0

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_local(
        cls,
        directory: str | os.PathLike,
        *,
        replicas: int | None = None,
        address: str | None = None,
        config: EngineConfig | None = None,
        watermark: bool | None | Watermarker = None,
        **options: Any,
    ) -> ReplicatedChatterboxTTS:
        """Replicas that each load ``directory`` (the same path on every node that runs one).
        ``options``: the constructor's replica options and :class:`EngineConfig` overrides."""
        return cls(
            CheckpointSource(model_dir=os.fspath(directory)),
            replicas=replicas,
            address=address,
            config=config,
            watermark=watermark,
            **options,
        )

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str = DEFAULT_REPO_ID,
        revision: str | None = DEFAULT_REVISION,
        *,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        replicas: int | None = None,
        address: str | None = None,
        config: EngineConfig | None = None,
        watermark: bool | None | Watermarker = None,
        model: ModelKind = "english",
        **options: Any,
    ) -> ReplicatedChatterboxTTS:
        """Replicas that each download (or reuse from their node's Hugging Face cache)
        ``model``'s files of ``repo_id`` at ``revision``, as :meth:`ChatterboxTTS.from_pretrained`
        does."""
        source = CheckpointSource(
            repo_id=repo_id,
            revision=revision,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            token=token,
            local_files_only=local_files_only,
            model=check_model_kind(model),
        )
        return cls(
            source,
            replicas=replicas,
            address=address,
            config=config,
            watermark=watermark,
            **options,
        )

    def _plan_resources(
        self, replicas: int | None, num_gpus: float | None, num_cpus: float
    ) -> tuple[float, int]:
        """GPUs per replica and the replica count, checked against the cluster's resources."""
        import ray

        resources = ray.cluster_resources()
        cluster_gpus = resources.get("GPU", 0.0)
        cluster_cpus = resources.get("CPU", 0.0)
        if num_gpus is None:
            num_gpus = 1.0 if cluster_gpus >= 1 else 0.0
        if replicas is None:
            replicas = max(1, int(cluster_gpus // num_gpus)) if num_gpus else 1
        if num_gpus and replicas * num_gpus > cluster_gpus:
            raise InvalidParameterError(
                f"{replicas} replica(s) with {num_gpus:g} GPU each need {replicas * num_gpus:g} "
                f"GPUs but the Ray cluster has {cluster_gpus:g}; add nodes (`ray start "
                "--address=...` on each) or ask for fewer replicas"
            )
        if replicas * num_cpus > cluster_cpus:
            raise InvalidParameterError(
                f"{replicas} replica(s) with {num_cpus:g} CPU each need {replicas * num_cpus:g} "
                f"CPUs but the Ray cluster has {cluster_cpus:g}; lower num_cpus_per_replica or "
                "the replica count"
            )
        if not num_gpus:
            logger.info("the Ray cluster has no GPU (or none was asked for): CPU replicas")
        return num_gpus, replicas

    # ------------------------------------------------------------------ replicas

    @property
    def replicas(self) -> list[ReplicaHandle]:
        """The replicas that have loaded and are alive (each with ``.actor`` and ``.info``)."""
        return self._pool.ready

    def replica_status(self) -> list[ReplicaStatus]:
        """Every replica's state and, during a call, its pending tokens and in-flight chunks."""
        return self._dispatcher.status()

    def scale(self, replicas: int, *, timeout_s: float | None = None) -> None:
        """Starts or stops replicas until ``replicas`` are alive; waits for new ones to load."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise InvalidParameterError(f"replicas must be a positive int, got {replicas!r}")
        self._check_open()
        with self._call_lock:
            self._pool.prune_dead()
            alive = [h for h in self._pool.handles if h.alive]
            if replicas > len(alive):
                self._pool.start(replicas - len(alive))
                self._pool.wait_until_ready(timeout_s)
            for handle in alive[replicas:]:
                logger.info("stopping %s (scaling to %d)", handle.name, replicas)
                self._pool.stop(handle)

    def wait_for_replicas(self, timeout_s: float | None = None) -> None:
        """Waits until replicas still loading (e.g. replacements of failed ones) are ready."""
        self._check_open()
        with self._call_lock:
            self._pool.wait_until_ready(timeout_s)

    def close(self) -> None:
        """Stops every replica (vLLM engines first) and, if this object started Ray, Ray."""
        if self._closed:
            return
        self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        import ray

        pool = getattr(self, "_pool", None)
        try:
            if pool is not None:
                pool.stop_all()
        finally:
            if self._owns_ray and ray.is_initialized():
                ray.shutdown()

    # ------------------------------------------------------------------ voices

    def prepare_voice(self, audio: AudioInput) -> Voice:
        """Prepares (or fetches from the cache) a voice from reference audio, as
        :meth:`ChatterboxTTS.prepare_voice`. The audio is decoded here, the voice is computed
        once on one replica, and stored in Ray's object store for every replica to use."""
        self._check_open()
        voice, _ = self._voice_ref_for_audio(audio)
        return voice

    @property
    def default_voice(self) -> Voice | None:
        """The checkpoint's built-in voice (``conds.pt``), or ``None`` if it has none."""
        if self._default_voice is None and self._has_default_voice:
            voice = self._on_a_replica("default_voice")
            self._default_voice = voice
        return self._default_voice

    def _voice_ref_for_audio(self, audio: AudioInput) -> tuple[Voice, Any]:
        # Decoding and validation errors (this model's length rule too) are raised here.
        wav_24k = load_voice_audio_for(audio, self.model)
        key = audio_content_hash(wav_24k)
        cached = self._cached_voice(key)
        if cached is not None:
            return cached
        logger.info(
            "preparing voice %s (%.2f s of audio) on a replica",
            key[:12],
            wav_24k.numel() / S3GEN_SAMPLE_RATE,
        )
        voice = self._on_a_replica("prepare_voice", wav_24k)
        return self._store_voice(key, voice)

    def _voice_ref(self, voice: Voice) -> tuple[Voice, Any]:
        cached = self._cached_voice(voice.content_hash)
        if cached is not None:
            return cached
        return self._store_voice(voice.content_hash, voice_on_cpu(voice))

    def _cached_voice(self, key: str) -> tuple[Voice, Any] | None:
        with self._voice_lock:
            entry = self._voices.get(key)
            if entry is not None:
                self.voice_cache_hits += 1
            else:
                self.voice_cache_misses += 1
            return entry

    def _store_voice(self, key: str, voice: Voice) -> tuple[Voice, Any]:
        import ray

        entry = (voice, ray.put(voice))
        with self._voice_lock:
            self._voices[key] = entry
        return entry

    def _on_a_replica(self, method: str, *args: Any) -> Any:
        """Runs ``method`` on a ready replica; a replica that dies meanwhile is replaced and the
        call goes to another. Input errors come back as the replica raised them."""
        import ray

        while True:
            ready = self._pool.ready
            if not ready:
                if not self._pool.starting:
                    raise ReplicaError("no replica is alive (all failed); create a new object")
                self._pool.wait_until_ready()
                continue
            handle = min(ready, key=lambda h: h.completed_chunks)
            try:
                return ray.get(getattr(handle.actor, method).remote(*args))
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, ChatterboxError):
                    raise error.cause from None
                raise
            except ray.exceptions.RayActorError as error:
                self._pool.retire(handle, f"{type(error).__name__} during {method}")
                if self._pool.replace(handle) is None and not self._pool.ready:
                    raise ReplicaError(f"no replica left to run {method}") from error

    def _resolve_voice(self, voice: VoiceLike) -> _VoiceHandle:
        if voice is None:
            if not self._has_default_voice:
                raise ChatterboxError(
                    "no voice given and the checkpoint has no conds.pt default voice; "
                    "pass voice=<audio path | saved voice .pt | (waveform, sample_rate) | Voice>"
                )
            return _VoiceHandle(None, None)
        if isinstance(voice, str | os.PathLike) and str(voice).lower().endswith(".pt"):
            voice = Voice.load(voice)
        if isinstance(voice, Voice):
            prepared, ref = self._voice_ref(voice)
        else:
            prepared, ref = self._voice_ref_for_audio(voice)
        return _VoiceHandle(prepared.content_hash, ref)

    def _resolve_voices(self, requests: Sequence[TTSRequest]) -> list[_VoiceHandle]:
        return [self._resolve_voice(request.voice) for request in requests]

    # ------------------------------------------------------------------ execution

    def _execute(
        self, plan: Plan, voices: list[_VoiceHandle], stats: GenerationStats, progress: bool
    ) -> dict[int, ChunkAudio]:
        # Refs held for this call even if the cache evicts them meanwhile.
        voice_refs = {v.key: v.ref for v in voices if v.key is not None}
        specs = [ChunkSpec(item, voices[item.request_index].key) for item in plan.items]
        logger.info("running %d chunk(s) on %d replica(s)", len(specs), len(self._pool.ready))
        audio, report = self._dispatcher.run(specs, voice_refs, progress=progress)
        stats.dispatch = report
        return audio

    @property
    def dispatch_report(self) -> DispatchReport | None:
        """Where the last call's chunks ran (replicas, retries, failures)."""
        report = self.last_stats.dispatch
        return report if isinstance(report, DispatchReport) else None
