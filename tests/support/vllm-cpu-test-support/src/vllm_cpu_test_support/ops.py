"""Pure-PyTorch definitions of the compiled vLLM ops reached on the CPU path.

The CUDA wheel's ``_C`` extension cannot load without libcuda, so these op schemas would not exist.
Schemas follow vLLM 0.9.2's ``csrc/torch_bindings.cpp``."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

_libraries: list[torch.library.Library] = []


def _write_kv_into_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> None:
    # key/value: [tokens, heads, head_size], possibly padded past len(slot_mapping);
    # caches: [blocks, block_size, heads, head_size]; slot -1 marks a padding token.
    num_tokens = slot_mapping.shape[0]
    slots = slot_mapping.to(torch.long)
    keep = slots >= 0
    heads, head_size = key_cache.shape[-2:]
    flat_keys = key_cache.view(-1, heads, head_size)
    flat_values = value_cache.view(-1, heads, head_size)
    flat_keys.index_copy_(0, slots[keep], key[:num_tokens][keep].to(flat_keys.dtype))
    flat_values.index_copy_(0, slots[keep], value[:num_tokens][keep].to(flat_values.dtype))


def _gated(activation: Callable[[torch.Tensor], torch.Tensor], gate_first: bool = True):
    def kernel(out: torch.Tensor, x: torch.Tensor) -> None:
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        out.copy_(activation(a) * b if gate_first else a * activation(b))

    return kernel


def _elementwise(activation: Callable[[torch.Tensor], torch.Tensor]):
    def kernel(out: torch.Tensor, x: torch.Tensor) -> None:
        out.copy_(activation(x))

    return kernel


def _fatrelu_and_mul(out: torch.Tensor, x: torch.Tensor, threshold: float) -> None:
    half = x.shape[-1] // 2
    a = x[..., :half]
    out.copy_(torch.where(a > threshold, a, torch.zeros_like(a)) * x[..., half:])


def _init_cpu_threads_env(cpu_ids: str) -> str:
    cpus: set[int] = set()
    for part in cpu_ids.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    return f"vllm-cpu-test-support: bound to CPUs {sorted(cpus)}"


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_GATED_ACTIVATIONS = {
    "silu_and_mul": _gated(F.silu),
    "mul_and_silu": _gated(F.silu, gate_first=False),
    "gelu_and_mul": _gated(F.gelu),
    "gelu_tanh_and_mul": _gated(_tanh_gelu),
}
_ELEMENTWISE_ACTIVATIONS = {
    "gelu_new": _elementwise(_tanh_gelu),
    "gelu_fast": _elementwise(_tanh_gelu),
    "gelu_quick": _elementwise(lambda x: x * torch.sigmoid(1.702 * x)),
}


def register() -> None:
    """Define the ops once per process (vLLM calls plugins in each of its processes)."""
    if _libraries:
        return
    cache_ops = torch.library.Library("_C_cache_ops", "FRAGMENT")
    cache_ops.define(
        "reshape_and_cache_flash(Tensor key, Tensor value, Tensor(a!) key_cache,"
        " Tensor(b!) value_cache, Tensor slot_mapping, str kv_cache_dtype,"
        " Tensor k_scale, Tensor v_scale) -> ()"
    )
    cache_ops.impl("reshape_and_cache_flash", _write_kv_into_cache, "CPU")

    activations = torch.library.Library("_C", "FRAGMENT")
    for name, kernel in {**_GATED_ACTIVATIONS, **_ELEMENTWISE_ACTIVATIONS}.items():
        activations.define(f"{name}(Tensor(a!) out, Tensor input) -> ()")
        activations.impl(name, kernel, "CPU")
    activations.define("fatrelu_and_mul(Tensor(a!) out, Tensor input, float threshold) -> ()")
    activations.impl("fatrelu_and_mul", _fatrelu_and_mul, "CPU")

    utils = torch.library.Library("_C_utils", "FRAGMENT")
    utils.define("init_cpu_threads_env(str cpu_ids) -> str")
    utils.impl("init_cpu_threads_env", _init_cpu_threads_env, "CompositeExplicitAutograd")
    _libraries.extend([cache_ops, activations, utils])
