"""T3's Llama backbone for vLLM, running both CFG branches through the real 1024-wide weights.

Layer classes follow vLLM's ``model_executor/models/llama.py`` (QKV/MLP parallel linears, RMSNorm,
llama3 RoPE, one :class:`vllm.attention.Attention` per layer). The difference is the hidden state:
``[tokens, 2 * hidden]`` holding ``[cond | uncond]`` (see :mod:`chatterbox_t3.cfg`). Norms, linears
and the MLP see it as ``[2 * tokens, hidden]``; attention sees the branch as extra heads.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.attention import Attention
from vllm.compilation.decorators import support_torch_compile
from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope

from chatterbox_t3.alignment import AlignmentRecorder
from chatterbox_t3.cfg import NUM_BRANCHES, as_branch_rows, as_token_rows
from chatterbox_t3.config import T3Config
from chatterbox_t3.errors import ConfigurationError
from chatterbox_t3.speech_positions import LearnedPositions


class T3MLP(nn.Module):
    """SwiGLU MLP, applied to every branch row."""

    def __init__(
        self, config: T3Config, quant_config: QuantizationConfig | None, prefix: str
    ) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            input_size=config.hidden_size,
            output_sizes=[config.intermediate_size] * 2,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            input_size=config.intermediate_size,
            output_size=config.hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.down_proj",
        )
        self.act_fn = SiluAndMul()

    def forward(self, branch_rows: torch.Tensor) -> torch.Tensor:
        x, _ = self.gate_up_proj(branch_rows)
        x, _ = self.down_proj(self.act_fn(x))
        return x


class T3DualBranchAttention(nn.Module):
    """Self-attention with shared projections and the CFG branches folded into the head axis.

    Per token, the query becomes ``[cond heads | uncond heads]``; with MHA/GQA grouping by head
    index, branch ``b``'s query heads only ever meet branch ``b``'s key/value heads, so the one
    attention call computes two independent attentions over the same cached positions.
    """

    def __init__(
        self,
        config: T3Config,
        cache_config: CacheConfig | None,
        quant_config: QuantizationConfig | None,
        prefix: str,
        layer_index: int = 0,
        recorder: AlignmentRecorder | None = None,
    ) -> None:
        super().__init__()
        self.layer_index = layer_index
        # Set on the layers whose heads drive the multilingual stop rule (else None).
        self.recorder = recorder
        tp_size = get_tensor_model_parallel_world_size()
        if config.num_attention_heads % tp_size or config.num_key_value_heads % tp_size:
            raise ConfigurationError(
                f"tensor parallel size {tp_size} must divide the attention heads "
                f"({config.num_attention_heads}) and key/value heads ({config.num_key_value_heads})"
            )
        self.hidden_size = config.hidden_size
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads // tp_size
        self.num_kv_heads = config.num_key_value_heads // tp_size
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(
            hidden_size=config.hidden_size,
            head_size=config.head_dim,
            total_num_heads=config.num_attention_heads,
            total_num_kv_heads=config.num_key_value_heads,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            input_size=config.num_attention_heads * config.head_dim,
            output_size=config.hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        self.rotary_emb = get_rope(
            config.head_dim,
            rotary_dim=config.head_dim,
            max_position=config.max_model_len,
            base=config.rope_theta,
            rope_scaling={
                "rope_type": "llama3",
                "factor": config.rope_factor,
                "low_freq_factor": config.rope_low_freq_factor,
                "high_freq_factor": config.rope_high_freq_factor,
                "original_max_position_embeddings": config.rope_original_max_position_embeddings,
            },
            is_neox_style=True,
        )
        self.attn = Attention(
            NUM_BRANCHES * self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            num_kv_heads=NUM_BRANCHES * self.num_kv_heads,
            cache_config=cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )

    def forward(self, positions: torch.Tensor, branch_rows: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(branch_rows)  # [2n, q + 2kv]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # [2n, heads * d] -> [n, 2 * heads * d]: the branch becomes the outer head index.
        q, k, v = as_token_rows(q), as_token_rows(k), as_token_rows(v)
        q, k = self.rotary_emb(positions, q, k)
        if self.recorder is not None:
            self.recorder.record(self.layer_index, q, k)
        attended = self.attn(q, k, v)  # [n, 2 * heads * d]
        output, _ = self.o_proj(as_branch_rows(attended, self.q_size))
        return output  # [2n, hidden]


class T3DecoderLayer(nn.Module):
    def __init__(
        self,
        config: T3Config,
        cache_config: CacheConfig | None,
        quant_config: QuantizationConfig | None,
        prefix: str,
        layer_index: int = 0,
        recorder: AlignmentRecorder | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = T3DualBranchAttention(
            config,
            cache_config,
            quant_config,
            prefix=f"{prefix}.self_attn",
            layer_index=layer_index,
            recorder=recorder,
        )
        self.mlp = T3MLP(config, quant_config, prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, branch_rows: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``branch_rows`` / ``residual``: ``[2n, hidden]``."""
        if residual is None:
            residual = branch_rows
            hidden = self.input_layernorm(branch_rows)
        else:
            # RMSNorm with a residual adds it first and returns (normed, new residual).
            hidden, residual = self.input_layernorm(branch_rows, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        assert residual is not None
        return self.mlp(hidden), residual


# Annotations are strings under `from __future__ import annotations`, so the dynamic (token)
# dimension of each input is named explicitly.
@support_torch_compile(
    dynamic_arg_dims={"positions": 0, "inputs_embeds": 0, "token_ids": 0, "prompt_lens": 0}
)
class T3Backbone(nn.Module):
    """Learned positions + decoder layers + final norm; ``[n, 2h]`` in, ``[n, 2h]`` out."""

    def __init__(self, *, vllm_config: VllmConfig, config: T3Config, prefix: str = "") -> None:
        super().__init__()
        self.config = config
        self.positions = LearnedPositions(config)
        # Multilingual: the alignment heads' query/key rows, recorded for the stop rule
        # (chatterbox_t3.alignment); the English model has no analyzer.
        scheduler = vllm_config.scheduler_config
        self.alignment = (
            AlignmentRecorder(config, max(scheduler.max_num_batched_tokens, scheduler.max_num_seqs))
            if config.is_multilingual
            else None
        )
        layers = self.alignment.layers if self.alignment is not None else {}
        self.layers = nn.ModuleList(
            T3DecoderLayer(
                config,
                vllm_config.cache_config,
                vllm_config.quant_config,
                prefix=f"{prefix}.layers.{i}",
                layer_index=i,
                recorder=self.alignment if i in layers else None,
            )
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor,
        token_ids: torch.Tensor,
        prompt_lens: torch.Tensor,
    ) -> torch.Tensor:
        width = self.config.hidden_size
        position_rows = self.positions(positions, token_ids, prompt_lens)
        # Both branches get the same learned positions (the uncond text rows are positions only).
        hidden = as_branch_rows(inputs_embeds + position_rows.repeat(1, NUM_BRANCHES), width)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return as_token_rows(hidden)
