"""Run vLLM 0.9.2's own V1 engine on a CPU-only machine, for tests.

The vLLM wheel on the package index is a CUDA build; on a machine without a GPU it detects no
platform and its compiled kernels cannot be loaded. This plugin supplies:

* a platform (``vllm.platform_plugins``) derived from vLLM's ``CpuPlatform`` that routes every
  custom op to its plain-PyTorch ``forward_native`` and selects :mod:`.attention`;
* pure-PyTorch versions of the few compiled ops vLLM still looks up (:mod:`.ops`).

It activates only when vLLM finds no CUDA device; ``VLLM_CPU_TEST_SUPPORT=0/1`` overrides that.
"""

from __future__ import annotations

import functools
import os
import sys

__all__ = ["cpu_support_enabled", "platform_plugin", "register_ops"]


@functools.cache
def cpu_support_enabled() -> bool:
    setting = os.environ.get("VLLM_CPU_TEST_SUPPORT", "auto").strip().lower()
    if setting in {"0", "false", "off", "no"}:
        return False
    if setting in {"1", "true", "on", "yes"}:
        return True
    from vllm.platforms import cuda_platform_plugin

    try:
        return cuda_platform_plugin() is None
    except Exception:  # detection itself failing means there is no usable GPU
        return True


def platform_plugin() -> str | None:
    """``vllm.platform_plugins`` hook: the platform's qualified name, or None to stay out."""
    if not cpu_support_enabled():
        return None
    # The platform is resolved in every vLLM process (the engine core too), so this is the one
    # place that reliably runs before a model executes.
    register_ops()
    return "vllm_cpu_test_support.platform.CpuTestPlatform"


def register_ops() -> None:
    """``vllm.general_plugins`` hook; idempotent."""
    if not cpu_support_enabled():
        return
    # vllm/device_allocator/cumem.py tolerates only ModuleNotFoundError, while the CUDA build's
    # extension raises ImportError (libcuda missing); a None module entry turns it into the former.
    sys.modules.setdefault("vllm.cumem_allocator", None)
    from vllm_cpu_test_support import ops

    ops.register()
