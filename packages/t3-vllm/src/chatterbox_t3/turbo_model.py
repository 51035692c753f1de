"""Chatterbox Turbo's T3 as a vLLM 0.9.2 model: ``ChatterboxT3TurboForCausalLM``.

The backbone is vLLM's own GPT-2 (``vllm/model_executor/models/gpt2.py``: :class:`GPT2Block`,
whose attention is vLLM's paged :class:`~vllm.attention.Attention`) fed embeddings only, as the
reference feeds transformers' ``GPT2Model`` (its ``wte`` is deleted). One vocabulary for vLLM
(:class:`~chatterbox_t3.config.TurboT3Config` id space): ``[0, 6563)`` speech ids
(``speech_emb``), ``[6563, 6563 + 50276)`` GPT-2 text ids + 6563 (``text_emb``), then the
conditioning placeholder. A prompt (built by :mod:`chatterbox_t3.engine`) is::

    [placeholder] + text ids (+6563) + [start-of-speech 6561]

with ``multi_modal_data={"audio": [conditioning]}``: ``1 + P`` rows (the speaker projection and the
``P <= 375`` prompt speech tokens' embeddings, :class:`TurboConditioningEncoder`), to which the
placeholder expands. GPT-2's learned absolute positions (``wpe``) are added to every row at its
vLLM position, which is the reference's position over the whole sequence (conditioning, text,
speech). No CFG: one row per request. ``compute_logits`` returns the speech head's logits (with its
bias) and ``-inf`` for every prompt-only id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.gpt2 import GPT2Block
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from chatterbox_t3.conditioning import T3Voice
from chatterbox_t3.config import TurboT3Config
from chatterbox_t3.errors import CheckpointError, UnexpectedTensorError
from chatterbox_t3.vllm_model import (
    ConditionedSpeechModel,
    ConditioningGeometry,
    T3DummyInputsBuilder,
    T3MultiModalProcessor,
    T3ProcessingInfo,
)

logger = logging.getLogger(__name__)

TURBO_ARCHITECTURE = "ChatterboxT3TurboForCausalLM"
TURBO_CONFIG_KEY = "t3_turbo_config"
"""Key of the :class:`TurboT3Config` in the derived ``config.json``."""


def turbo_config_of(hf_config: Any) -> TurboT3Config:
    values = getattr(hf_config, TURBO_CONFIG_KEY, None)
    if not isinstance(values, dict):
        raise CheckpointError(
            f"config.json has no {TURBO_CONFIG_KEY!r} entry; build the model directory with "
            "chatterbox_t3.model_dir.prepare_vllm_model_dir"
        )
    return TurboT3Config.from_dict(values, source=f"config.json {TURBO_CONFIG_KEY}")


def gpt2_config(config: TurboT3Config) -> GPT2Config:
    """The transformers configuration vLLM's GPT-2 layers read (``GPT2_medium``'s settings)."""
    return GPT2Config(
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_positions=config.max_position_embeddings,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=config.layer_norm_epsilon,
        vocab_size=config.backbone_vocab_size,
    )


# ----------------------------------------------------------------------- conditioning (outside)
class TurboConditioningEncoder(nn.Module):
    """The conditioning rows of a voice: ``spkr_enc(speaker embedding)`` then ``speech_emb`` of
    each prompt token (no perceiver, no emotion row, no extra position embedding: GPT-2's own
    positions are added inside the backbone). Parameter names are the checkpoint's."""

    PARAMETER_PREFIXES = ("cond_enc.spkr_enc.", "speech_emb.")

    def __init__(self, config: TurboT3Config) -> None:
        super().__init__()
        self.config = config
        self.cond_enc = TurboSpeakerProjection(config)
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)

    @classmethod
    def from_checkpoint_dir(
        cls,
        directory: str | Path,
        config: TurboT3Config,
        *,
        device: str | torch.device = "cpu",
    ) -> TurboConditioningEncoder:
        from chatterbox_t3.checkpoint import checkpoint_files, load_t3_state_dict

        encoder = cls(config)
        state = load_t3_state_dict(
            Path(directory) / checkpoint_files(directory).t3,
            config,
            only_prefixes=cls.PARAMETER_PREFIXES,
        )
        encoder.load_state_dict(state)
        return encoder.to(device).eval()

    @torch.inference_mode()
    def forward(self, voice: T3Voice, exaggeration: float = 0.0) -> torch.Tensor:
        """``[1 + P, hidden]`` float32 rows; ``exaggeration`` is not an input of Turbo."""
        device = self.speech_emb.weight.device
        speaker = voice.speaker_embedding.to(device).view(1, -1)
        tokens = voice.prompt_tokens.to(device)
        return torch.cat([self.cond_enc.spkr_enc(speaker), self.speech_emb(tokens)], dim=0)


class TurboSpeakerProjection(nn.Module):
    """The checkpoint's ``cond_enc`` of Turbo: the speaker projection only."""

    def __init__(self, config: TurboT3Config) -> None:
        super().__init__()
        self.spkr_enc = nn.Linear(config.speaker_embed_size, config.hidden_size)


# ----------------------------------------------------------------------------------- processor
class TurboProcessingInfo(T3ProcessingInfo):
    """T3's processing with Turbo's geometry: up to ``1 + 375`` conditioning rows."""

    def conditioning(self) -> ConditioningGeometry:
        config = turbo_config_of(self.get_hf_config())
        return ConditioningGeometry(
            config.conditioning_placeholder_id, config.max_conditioning_len, config.hidden_size
        )


# --------------------------------------------------------------------------------------- model
@support_torch_compile(dynamic_arg_dims={"positions": 0, "inputs_embeds": 0})
class TurboBackbone(nn.Module):
    """GPT-2's learned positions, vLLM's GPT-2 blocks and the final layer norm; embeddings in,
    hidden states out (the reference's ``tfmr`` without ``wte``)."""

    def __init__(self, *, vllm_config: VllmConfig, config: TurboT3Config, prefix: str = "") -> None:
        super().__init__()
        gpt2 = gpt2_config(config)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(
            GPT2Block(
                gpt2, vllm_config.cache_config, vllm_config.quant_config, prefix=f"{prefix}.h.{i}"
            )
            for i in range(config.num_hidden_layers)
        )
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        hidden = inputs_embeds + self.wpe(positions)
        for block in self.h:
            hidden = block(hidden)
        return self.ln_f(hidden)


# Checkpoint names of the backbone (``tfmr.``) map one to one onto ``model.``; transformers'
# GPT-2 stores its linears as Conv1D ``[in, out]``, vLLM's are ``[out, in]``.
_BACKBONE_PREFIX = "tfmr."
_CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
_TOP_LEVEL_WEIGHT_MAP = {
    "text_emb.weight": "text_emb.weight",
    "speech_emb.weight": "speech_emb.weight",
    "speech_head.weight": "speech_head.weight",
    "speech_head.bias": "speech_head.bias",
}
# In the checkpoint but not used here: the speaker projection runs outside vLLM
# (TurboConditioningEncoder), T3 never predicts text, and the reference deletes ``tfmr.wte``.
_IGNORED = ("cond_enc.", "text_head.", "tfmr.wte.")


@MULTIMODAL_REGISTRY.register_processor(
    T3MultiModalProcessor, info=TurboProcessingInfo, dummy_inputs=T3DummyInputsBuilder
)
class ChatterboxT3TurboForCausalLM(ConditionedSpeechModel):
    """Turbo T3 (text + voice conditioning -> S3 speech tokens), one row per request."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = turbo_config_of(vllm_config.model_config.hf_config)
        self.config = config
        self.model = TurboBackbone(vllm_config=vllm_config, config=config, prefix="model")
        self.text_emb = nn.Embedding(config.text_tokens_dict_size, config.hidden_size)
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)
        self.speech_head = nn.Linear(config.hidden_size, config.speech_tokens_dict_size, bias=True)
        self.vocab_size = config.vllm_vocab_size

    # ------------------------------------------------------------------------ multimodal API
    def get_multimodal_embeddings(self, **kwargs: object) -> list[torch.Tensor]:
        return self.conditioning_items(**kwargs)

    def get_input_embeddings(  # type: ignore[override]  # V0-only overload not supported
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
    ) -> torch.Tensor:
        rows, _ = self.token_rows(input_ids)
        return self.with_conditioning(input_ids, rows, multimodal_embeddings)

    # --------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if intermediate_tensors is not None:
            raise NotImplementedError("T3 does not support pipeline parallelism")
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.get_input_embeddings(input_ids)
        return self.model(positions, inputs_embeds)

    def compute_logits(
        self, hidden_states: torch.Tensor, sampling_metadata: object
    ) -> torch.Tensor:
        """Speech-head logits over the whole vLLM vocabulary (prompt-only ids at ``-inf``)."""
        speech = self.speech_head(hidden_states)
        logits = speech.new_full((hidden_states.shape[0], self.vocab_size), float("-inf"))
        logits[:, : self.config.speech_tokens_dict_size] = speech
        return logits

    # ----------------------------------------------------------------------------- weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load ``t3_turbo_v1.safetensors`` tensors through the explicit name maps above."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith(_IGNORED):
                continue
            if name.startswith(_BACKBONE_PREFIX):
                target = "model." + name.removeprefix(_BACKBONE_PREFIX)
                if name.endswith(_CONV1D_WEIGHTS):
                    tensor = tensor.t()
            elif name in _TOP_LEVEL_WEIGHT_MAP:
                target = _TOP_LEVEL_WEIGHT_MAP[name]
            else:
                raise UnexpectedTensorError(f"unknown Turbo T3 tensor {name!r}")
            if target not in params:
                raise UnexpectedTensorError(
                    f"tensor {name!r} maps to {target!r}, which this model does not have "
                    f"({self.config.num_hidden_layers} layers)"
                )
            param = params[target]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(target)
        return loaded
