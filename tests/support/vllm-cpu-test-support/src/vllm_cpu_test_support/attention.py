"""Paged attention for vLLM V1 in plain PyTorch (correctness over speed).

KV-cache layout is FlashAttention's, ``[2, blocks, block_size, kv_heads, head_size]``. New keys and
values are written through ``_C_cache_ops.reshape_and_cache_flash`` (see :mod:`.ops`); each request
then gathers its blocks and runs ``scaled_dot_product_attention`` with a causal mask shifted by the
tokens already in the cache, which covers prefill, decode, mixed batches, chunked prefill and
prefix-cache hits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from vllm.attention.backends.abstract import (
    AttentionBackend,
    AttentionImpl,
    AttentionType,
    is_quantized_kv_cache,
)
from vllm.v1.attention.backends.utils import AttentionMetadataBuilder, CommonAttentionMetadata


class PagedSdpaBackend(AttentionBackend):
    accept_output_buffer: bool = True

    @classmethod
    def validate_head_size(cls, head_size: int) -> None:
        """Any head size works with SDPA."""

    @staticmethod
    def get_name() -> str:
        return "CPU_TEST_SUPPORT_PAGED_SDPA"

    @staticmethod
    def get_impl_cls() -> type[PagedSdpaImpl]:
        return PagedSdpaImpl

    @staticmethod
    def get_metadata_cls() -> type[PagedSdpaMetadata]:
        return PagedSdpaMetadata

    @staticmethod
    def get_builder_cls() -> type[PagedSdpaMetadataBuilder]:
        return PagedSdpaMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def use_cascade_attention(*args: Any, **kwargs: Any) -> bool:
        return False


@dataclass
class PagedSdpaMetadata:
    num_actual_tokens: int
    num_reqs: int
    query_start_loc: list[int]
    seq_lens: list[int]
    block_table: torch.Tensor  # [num_reqs, max_blocks] int32
    slot_mapping: torch.Tensor  # [num_actual_tokens] int64


class PagedSdpaMetadataBuilder(AttentionMetadataBuilder[PagedSdpaMetadata]):
    def __init__(self, runner: Any, kv_cache_spec: Any, block_table: Any) -> None:
        self.block_table = block_table

    def build(
        self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata
    ) -> PagedSdpaMetadata:
        num_reqs = common_attn_metadata.num_reqs
        num_tokens = common_attn_metadata.num_actual_tokens
        return PagedSdpaMetadata(
            num_actual_tokens=num_tokens,
            num_reqs=num_reqs,
            query_start_loc=common_attn_metadata.query_start_loc[: num_reqs + 1].tolist(),
            seq_lens=common_attn_metadata.seq_lens[:num_reqs].tolist(),
            block_table=self.block_table.get_cpu_tensor()[:num_reqs],
            slot_mapping=self.block_table.slot_mapping_cpu[:num_tokens].long(),
        )


class PagedSdpaImpl(AttentionImpl):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        blocksparse_params: dict[str, Any] | None = None,
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        unsupported = {
            "alibi_slopes": alibi_slopes is not None,
            "blocksparse_params": blocksparse_params is not None,
            "logits_soft_cap": logits_soft_cap is not None,
            f"attn_type={attn_type}": attn_type != AttentionType.DECODER,
            f"kv_cache_dtype={kv_cache_dtype}": is_quantized_kv_cache(kv_cache_dtype),
        }
        if any(unsupported.values()):
            names = [name for name, hit in unsupported.items() if hit]
            raise NotImplementedError(f"PagedSdpaBackend does not support {names}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.sliding_window = sliding_window
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.queries_per_kv = num_heads // num_kv_heads

    def forward(  # type: ignore[override]
        self,
        layer: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: PagedSdpaMetadata | None,
        output: torch.Tensor | None = None,
        output_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert output is not None and output_scale is None
        if attn_metadata is None:  # memory profiling / dummy run
            return output
        key_cache, value_cache = kv_cache.unbind(0)
        if self.kv_sharing_target_layer_name is None:
            torch.ops._C_cache_ops.reshape_and_cache_flash(
                key,
                value,
                key_cache,
                value_cache,
                attn_metadata.slot_mapping,
                "auto",
                layer._k_scale,
                layer._v_scale,
            )
        block_size = key_cache.shape[1]
        starts = attn_metadata.query_start_loc
        for req in range(attn_metadata.num_reqs):
            q_start, q_end = starts[req], starts[req + 1]
            q_len, kv_len = q_end - q_start, attn_metadata.seq_lens[req]
            if q_len == 0:
                continue
            num_blocks = -(-kv_len // block_size)
            blocks = attn_metadata.block_table[req, :num_blocks].long()
            keys = key_cache[blocks].flatten(0, 1)[:kv_len]
            values = value_cache[blocks].flatten(0, 1)[:kv_len]
            if self.queries_per_kv > 1:
                keys = keys.repeat_interleave(self.queries_per_kv, dim=1)
                values = values.repeat_interleave(self.queries_per_kv, dim=1)
            query_pos = torch.arange(kv_len - q_len, kv_len).unsqueeze(1)
            key_pos = torch.arange(kv_len).unsqueeze(0)
            mask = key_pos <= query_pos
            if self.sliding_window is not None:
                mask &= key_pos > query_pos - self.sliding_window
            attended = F.scaled_dot_product_attention(
                query[q_start:q_end].transpose(0, 1),
                keys.transpose(0, 1).to(query.dtype),
                values.transpose(0, 1).to(query.dtype),
                attn_mask=mask,
                scale=self.scale,
            )
            output[q_start:q_end] = attended.transpose(0, 1)
        return output
