"""vLLM plugin entry point (``vllm.general_plugins``): registers T3 with vLLM in every process.

vLLM's engine core runs in a spawned process, so registration must come from the entry point
rather than from user code. Importing :mod:`chatterbox_t3.vllm_model` also registers the
multimodal processor (class decorator).
"""

from __future__ import annotations


def register() -> None:
    from vllm import ModelRegistry

    from chatterbox_t3.vllm_model import ARCHITECTURE, ChatterboxT3ForCausalLM

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, ChatterboxT3ForCausalLM)
