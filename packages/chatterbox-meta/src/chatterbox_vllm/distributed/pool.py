"""The replica actors: :class:`ReplicaPool` starts, replaces and stops them
(:mod:`chatterbox_vllm.distributed.dispatch` runs a call's chunks on them).

What the driver loop guarantees on top of this pool:

* a replica whose process or node dies (``RayActorError``), or whose engine fails with anything
  but an input error, is killed and forgotten; the chunks it had not returned go back to the head
  of the queue and are sent to the remaining replicas, and a replacement replica is started (it
  takes work as soon as it has loaded);
* every chunk is delivered exactly once: a chunk's audio is accepted only from the call it was last
  sent in, results of calls to a failed replica are never read, and the loop ends only when every
  chunk has its audio;
* an input error raised by a replica (:class:`~chatterbox_vllm.errors.ChatterboxError`, e.g. a
  character T3's tokenizer has no id for) fails the call with that same error; the replicas stay
  usable;
* a chunk that has failed on ``max_chunk_attempts`` replicas (it crashes every engine it meets)
  fails the call instead of killing the whole pool.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatterbox_vllm.distributed.replica import (
    CheckpointSource,
    ReplicaInfo,
    ReplicaWorker,
)
from chatterbox_vllm.errors import ChatterboxError

if TYPE_CHECKING:
    from chatterbox_vllm.config import EngineConfig

logger = logging.getLogger(__name__)

WAIT_TICK_SECONDS = 2.0
"""How often the driver loop wakes up while waiting, to notice replicas that take too long to
start."""


class ReplicaError(ChatterboxError, RuntimeError):
    """Replicas failed and no replica is left (or could be started) to finish the work."""


@dataclass
class ReplicaHandle:
    """One replica actor as the driver sees it."""

    name: str
    actor: Any
    """The Ray actor handle (``ray.kill(handle.actor)`` simulates a crash)."""
    info: ReplicaInfo | None = None
    """Set once the replica has loaded its engine."""
    started_at: float = field(default_factory=time.monotonic)
    alive: bool = True
    completed_chunks: int = 0
    completed_tokens: int = 0

    @property
    def ready(self) -> bool:
        return self.alive and self.info is not None


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica for monitoring (see ``ReplicatedChatterboxTTS.replica_status``)."""

    name: str
    state: str
    """``starting``, ``ready`` or ``dead``."""
    hostname: str | None
    gpu_ids: tuple[str, ...]
    pending_tokens: int
    """Estimated speech tokens of the chunks it is working on in the current call."""
    in_flight_chunks: int
    completed_chunks: int
    """Chunks it returned since it started."""


class ReplicaPool:
    """Starts replica actors with the right resources and replaces failed ones."""

    def __init__(
        self,
        source: CheckpointSource,
        config: EngineConfig,
        *,
        num_gpus: float,
        num_cpus: float,
        actor_options: dict[str, Any] | None = None,
        max_replacements: int = 8,
        startup_timeout_s: float = 1800.0,
    ) -> None:
        import ray

        self.source = source
        self.config = config
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.max_replacements = max_replacements
        self.startup_timeout_s = startup_timeout_s
        self.replacements = 0
        self.failed: list[str] = []
        options: dict[str, Any] = {
            "num_gpus": num_gpus,
            "num_cpus": num_cpus,
            # Failures are handled here (requeue + replacement), not by Ray's actor restarts,
            # which would re-run a dead replica's calls behind the driver's back.
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        options.update(actor_options or {})
        self._actor_class: Any = ray.remote(ReplicaWorker).options(**options)
        self._names = itertools.count()
        self.handles: list[ReplicaHandle] = []
        self._starting: dict[Any, ReplicaHandle] = {}  # info() ObjectRef -> handle
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self, count: int) -> list[ReplicaHandle]:
        """Creates ``count`` actors; they load in parallel (see :meth:`wait_until_ready`)."""
        started = []
        for _ in range(count):
            name = f"replica-{next(self._names)}"
            actor = self._actor_class.remote(self.source, self.config)
            handle = ReplicaHandle(name=name, actor=actor)
            with self.lock:
                self.handles.append(handle)
                self._starting[actor.info.remote()] = handle
            started.append(handle)
            logger.info("starting %s (%s)", name, self.source.describe())
        return started

    @property
    def ready(self) -> list[ReplicaHandle]:
        return [handle for handle in self.handles if handle.ready]

    @property
    def starting(self) -> list[ReplicaHandle]:
        return list(self._starting.values())

    @property
    def starting_refs(self) -> list[Any]:
        return list(self._starting)

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Blocks until every starting replica has loaded (or failed: failures raise
        :class:`ReplicaError` naming the replica and the cause)."""
        import ray

        deadline = time.monotonic() + (self.startup_timeout_s if timeout_s is None else timeout_s)
        while self._starting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(h.name for h in self._starting.values())
                raise ReplicaError(
                    f"{names} did not finish loading within {timeout_s or self.startup_timeout_s:.0f}"
                    " s; the cluster may lack the resources they ask for "
                    f"(num_gpus={self.num_gpus}, num_cpus={self.num_cpus} each) - see `ray status`"
                )
            ready, _ = ray.wait(self.starting_refs, num_returns=1, timeout=min(remaining, 10.0))
            for ref in ready:
                _, error = self.finish_start(ref)
                if error is not None:
                    raise error

    def finish_start(self, ref: Any) -> tuple[ReplicaHandle, ReplicaError | None]:
        """Records the outcome of a replica's load (``ref`` is its ``info()`` call); returns the
        replica and, if it failed (it is then dead), the error."""
        import ray

        with self.lock:
            handle = self._starting.pop(ref)
        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as error:
            self.retire(handle, f"failed to start: {describe_failure(error)}")
            return handle, ReplicaError(
                f"{handle.name} failed to load the model: {describe_failure(error)}"
            )
        handle.info = info
        logger.info(
            "%s ready on %s (GPUs %s, %.1f s to load)",
            handle.name,
            info.hostname,
            ",".join(info.gpu_ids) or "none",
            info.load_seconds,
        )
        return handle, None

    def expire_slow_starts(self) -> list[ReplicaHandle]:
        """Kills replicas that have been loading longer than ``startup_timeout_s``."""
        now = time.monotonic()
        expired = [
            (ref, handle)
            for ref, handle in self._starting.items()
            if now - handle.started_at > self.startup_timeout_s
        ]
        for ref, handle in expired:
            with self.lock:
                self._starting.pop(ref, None)
            self.retire(handle, f"still loading after {self.startup_timeout_s:.0f} s")
        return [handle for _, handle in expired]

    def retire(self, handle: ReplicaHandle, reason: str) -> None:
        """Kills a failed replica's actor (if it still runs) and marks it dead."""
        import ray

        if not handle.alive:
            return
        logger.warning(
            "%s failed (%s); its unfinished chunks go to other replicas", handle.name, reason
        )
        handle.alive = False
        self.failed.append(handle.name)
        try:
            ray.kill(handle.actor, no_restart=True)
        except Exception as error:  # already gone
            logger.debug("ray.kill(%s): %s", handle.name, error)

    def replace(self, handle: ReplicaHandle) -> ReplicaHandle | None:
        """Starts a replacement for a failed replica unless the replacement budget is spent."""
        if self.replacements >= self.max_replacements:
            logger.error(
                "not replacing %s: %d replacements already started (max_replacements)",
                handle.name,
                self.replacements,
            )
            return None
        self.replacements += 1
        (new,) = self.start(1)
        logger.info("%s replaces %s", new.name, handle.name)
        return new

    def stop(self, handle: ReplicaHandle, timeout_s: float = 60.0) -> None:
        """Shuts a replica down cleanly (its vLLM engine first), then removes the actor."""
        import ray

        if handle.alive:
            try:
                ray.get(handle.actor.shutdown.remote(), timeout=timeout_s)
            except Exception as error:
                logger.debug("%s shutdown: %s", handle.name, error)
            handle.alive = False
            ray.kill(handle.actor, no_restart=True)
        with self.lock:
            for ref, starting in list(self._starting.items()):
                if starting is handle:
                    del self._starting[ref]
            if handle in self.handles:
                self.handles.remove(handle)

    def stop_all(self) -> None:
        for handle in list(self.handles):
            self.stop(handle)

    def prune_dead(self) -> None:
        with self.lock:
            self.handles = [handle for handle in self.handles if handle.alive]


def describe_failure(error: BaseException) -> str:
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause
        return f"{type(cause).__name__}: {cause}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
