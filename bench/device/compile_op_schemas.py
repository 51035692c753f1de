"""Op stand-ins that vLLM 0.9.2's compilation passes reference at import time (device harness only).

``vllm/compilation/fusion.py`` and friends look up fp8-quantisation ops as pattern-matching
targets when torch.compile is on. The device's torch cannot load vLLM's compiled ``_C``, so these
schemas (copied from vLLM 0.9.2's csrc/torch_bindings.cpp) are defined here; the fp8 kernels are
never executed for bf16/fp32 models and raise if they ever are.
"""

from __future__ import annotations

import torch

SCHEMAS = {
    "static_scaled_fp8_quant": "(Tensor(a!) result, Tensor input, Tensor scale) -> ()",
    "dynamic_scaled_fp8_quant": "(Tensor(a!) result, Tensor input, Tensor(b!) scale) -> ()",
    "dynamic_per_token_scaled_fp8_quant": (
        "(Tensor(a!) result, Tensor input, Tensor(b!) scale, Tensor? scale_ub) -> ()"
    ),
    "rms_norm_static_fp8_quant": (
        "(Tensor(a!) result, Tensor input, Tensor weight, Tensor scale, float epsilon) -> ()"
    ),
    "fused_add_rms_norm_static_fp8_quant": (
        "(Tensor(a!) result, Tensor input, Tensor(b!) residual, Tensor weight, Tensor scale,"
        " float epsilon) -> ()"
    ),
    "rms_norm_dynamic_per_token_quant": (
        "(Tensor(a!) result, Tensor input, Tensor weight, Tensor(b!) scale, float epsilon,"
        " Tensor? scale_ub, Tensor(c!)? residual) -> ()"
    ),
    "silu_and_mul_quant": "(Tensor(a!) result, Tensor input, Tensor scale) -> ()",
}
_libraries: list[torch.library.Library] = []


def _apply_repetition_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_mask: torch.Tensor,
    repetition_penalties: torch.Tensor,
) -> None:
    """vLLM's sampler calls this CUDA kernel for every batch with a repetition penalty."""
    penalties = torch.where(
        prompt_mask | output_mask, repetition_penalties.unsqueeze(1), torch.ones_like(logits)
    )
    logits.mul_(torch.where(logits > 0, 1.0 / penalties, penalties))


def _gelu_new(out: torch.Tensor, x: torch.Tensor) -> None:
    """GPT-2's tanh GELU (vLLM's ``NewGELU`` calls this kernel on CUDA; Chatterbox Turbo's T3)."""
    out.copy_(torch.nn.functional.gelu(x, approximate="tanh"))


def _not_available(name: str):
    def kernel(*args: object, **kwargs: object) -> None:
        raise NotImplementedError(f"_C.{name} (fp8) is not available under the device harness")

    return kernel


def register() -> None:
    library = torch.library.Library("_C", "FRAGMENT")
    for name, schema in SCHEMAS.items():
        if hasattr(torch.ops._C, name):
            continue  # already defined (a real vLLM build)
        library.define(name + schema)
        for key in ("CUDA", "CPU"):
            library.impl(name, _not_available(name), key)
    if not hasattr(torch.ops._C, "apply_repetition_penalties_"):
        library.define(
            "apply_repetition_penalties_(Tensor(a!) logits, Tensor prompt_mask,"
            " Tensor output_mask, Tensor repetition_penalties) -> ()"
        )
        for key in ("CUDA", "CPU"):
            library.impl("apply_repetition_penalties_", _apply_repetition_penalties, key)
    if not hasattr(torch.ops._C, "gelu_new"):
        library.define("gelu_new(Tensor(a!) out, Tensor input) -> ()")
        for key in ("CUDA", "CPU"):
            library.impl("gelu_new", _gelu_new, key)
    _libraries.append(library)


register()
