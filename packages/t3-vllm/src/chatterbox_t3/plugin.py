"""vLLM plugin entry point (``vllm.general_plugins``): registers T3 with vLLM in every process.

vLLM's engine core runs in a spawned process, so registration must come from the entry point
rather than from user code. Importing :mod:`chatterbox_t3.vllm_model` also registers the
multimodal processor (class decorator).

In the engine-core process the plugin also starts a watchdog that ends the process when its
parent is gone: vLLM 0.9.2 shuts the engine core down only when the parent asks, so a parent
killed with SIGKILL (or by the OOM killer) would leave it running, holding the GPU, forever.
"""

from __future__ import annotations

import logging
import os
import threading
import time

logger = logging.getLogger(__name__)

ENGINE_CORE_PROCESS_PREFIX = "EngineCore"
"""vLLM 0.9.2 names its engine-core processes ``EngineCore_N`` (``vllm/v1/engine/utils.py``)."""
PARENT_POLL_SECONDS = 0.5

_watchdog: threading.Thread | None = None
_registered: tuple[int, float] | None = None


def register() -> None:
    global _registered
    # In the engine process this ends its imports in the start-up timeline (registered_at).
    if _registered is None or _registered[0] != os.getpid():
        _registered = (os.getpid(), time.time())
    from vllm import ModelRegistry

    from chatterbox_t3.turbo_model import TURBO_ARCHITECTURE, ChatterboxT3TurboForCausalLM
    from chatterbox_t3.vllm_model import ARCHITECTURE, ChatterboxT3ForCausalLM

    supported = ModelRegistry.get_supported_archs()
    if ARCHITECTURE not in supported:
        ModelRegistry.register_model(ARCHITECTURE, ChatterboxT3ForCausalLM)
    if TURBO_ARCHITECTURE not in supported:
        ModelRegistry.register_model(TURBO_ARCHITECTURE, ChatterboxT3TurboForCausalLM)
    exit_with_parent()


def registered_at() -> float | None:
    """When vLLM first loaded this plugin in this process (:func:`time.time`); ``None`` if it
    has not, or did so only in a parent this process was forked from. In vLLM's engine-core
    process that is the end of its imports: the engine core loads its plugins as soon as it has
    greeted its caller, before it builds its executor."""
    if _registered is None or _registered[0] != os.getpid():
        return None
    return _registered[1]


def exit_with_parent() -> None:
    """In a vLLM engine-core process: a daemon thread that exits the process once its parent
    has died (the process is re-parented, so ``os.getppid()`` changes). Polling works wherever
    the process was started from (``PR_SET_PDEATHSIG`` would fire when the *thread* that
    spawned it ends, and the product spawns the engine from an event-loop thread)."""
    global _watchdog
    import multiprocessing

    parent = multiprocessing.parent_process()
    name = multiprocessing.current_process().name
    if parent is None or not name.startswith(ENGINE_CORE_PROCESS_PREFIX) or _watchdog is not None:
        return
    parent_pid = parent.pid
    _watchdog = threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="chatterbox-parent-watchdog", daemon=True
    )
    _watchdog.start()


def _watch_parent(parent_pid: int | None) -> None:
    stop = threading.Event()
    while os.getppid() == parent_pid:
        stop.wait(PARENT_POLL_SECONDS)
    logger.error(
        "the process that started this vLLM engine core (pid %s) is gone; exiting", parent_pid
    )
    # No clean shutdown is possible without the parent (it owns the request queues); exiting
    # at once releases the GPU memory and the port-less sockets this process holds.
    os._exit(1)
