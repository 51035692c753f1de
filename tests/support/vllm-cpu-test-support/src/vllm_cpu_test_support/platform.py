"""A vLLM platform for CPU-only test machines."""

from __future__ import annotations

import os
from typing import Any

from vllm.platforms.cpu import CpuPlatform

ATTENTION_BACKEND = "vllm_cpu_test_support.attention.PagedSdpaBackend"


class CpuTestPlatform(CpuPlatform):
    """vLLM's CPU platform without IPEX or compiled kernels: every CustomOp runs
    ``forward_native`` and attention is :class:`~vllm_cpu_test_support.attention.PagedSdpaBackend`."""

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: Any,
        head_size: int,
        dtype: Any,
        kv_cache_dtype: str | None,
        block_size: int,
        use_v1: bool,
        use_mla: bool,
    ) -> str:
        if not use_v1 or use_mla:
            raise NotImplementedError("vllm-cpu-test-support implements the V1 engine without MLA")
        return ATTENTION_BACKEND

    @classmethod
    def default_v1(cls, model_config: Any) -> bool:
        return True

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        super().check_and_update_config(vllm_config)
        # forward_cpu of RMSNorm/SiluAndMul/rotary embedding would call compiled kernels.
        vllm_config.compilation_config.custom_ops = ["none"]
        method = os.environ.get("VLLM_CPU_TEST_SUPPORT_MP_METHOD")
        if method:
            os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = method
