"""T3 as a vLLM 0.9.2 model: ``ChatterboxT3ForCausalLM`` and its multimodal processor.

One vocabulary for vLLM (:class:`~chatterbox_t3.config.T3Config` id space):
``[0, 8194)`` speech ids (``speech_emb``), ``[8194, 8898)`` text ids + 8194 (``text_emb``), 8898 the
conditioning placeholder. A prompt is built by :mod:`chatterbox_t3.engine`::

    [placeholder] + [SOT, text..., EOT] (+8194) + [BOS] * (2 if cfg_weight > 0 else 1)

with ``multi_modal_data={"audio": [conditioning]}`` (``[34, 1024]`` precomputed rows, see
:mod:`chatterbox_t3.conditioning`); the processor expands the placeholder to 34 copies and vLLM
scatters the rows there (and hashes them, so prefix caching only shares blocks between requests
with identical conditioning). ``compute_logits`` returns the CFG-guided speech-head logits with
every prompt-only id (text, placeholder) at ``-inf``, so vLLM never samples them.

Where the rest lives: CFG restack :mod:`chatterbox_t3.cfg` / :mod:`chatterbox_t3.backbone`;
learned positions :mod:`chatterbox_t3.speech_positions`; per-step plumbing
:mod:`chatterbox_t3.worker`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import merge_multimodal_embeddings
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargs
from vllm.multimodal.parse import AudioEmbeddingItems, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.multimodal.profiling import BaseDummyInputsBuilder
from vllm.sequence import IntermediateTensors

from chatterbox_t3.alignment import AlignmentGuard, AlignmentStep
from chatterbox_t3.backbone import T3Backbone
from chatterbox_t3.cfg import NUM_BRANCHES, branch_inputs, guided_logits
from chatterbox_t3.config import T3Config
from chatterbox_t3.errors import CheckpointError, UnexpectedTensorError
from chatterbox_t3.speech_positions import T3StepContext

logger = logging.getLogger(__name__)

ARCHITECTURE = "ChatterboxT3ForCausalLM"
CONDITIONING_MODALITY = "audio"
"""vLLM 0.9.2 parses embeddings only for its built-in modalities; the conditioning is derived from
the voice's audio, so it travels as precomputed ``audio`` embeddings."""
CONDITIONING_TOKEN = "<t3_conditioning>"
"""Text of the placeholder id in the derived vLLM tokenizer (see :mod:`chatterbox_t3.model_dir`)."""


def t3_config_of(vllm_config: VllmConfig) -> T3Config:
    """The :class:`T3Config` stored in the derived ``config.json`` under ``t3_config``."""
    values = getattr(vllm_config.model_config.hf_config, "t3_config", None)
    if not isinstance(values, dict):
        raise CheckpointError(
            "config.json has no 't3_config' entry; build the model directory with "
            "chatterbox_t3.model_dir.prepare_vllm_model_dir"
        )
    return T3Config.from_dict(values, source="config.json t3_config")


# ----------------------------------------------------------------------------------- processor
@dataclass(frozen=True)
class ConditioningGeometry:
    """Where a model's conditioning goes: the placeholder id it replaces, the most rows one voice
    has, and their width."""

    placeholder_id: int
    max_rows: int
    hidden_size: int


class T3ProcessingInfo(BaseProcessingInfo):
    """vLLM's processing info of a Chatterbox T3 (Turbo's subclasses it for its own geometry)."""

    def conditioning(self) -> ConditioningGeometry:
        config = T3Config.from_dict(self.get_hf_config().t3_config)
        return ConditioningGeometry(
            config.conditioning_placeholder_id, config.conditioning_len, config.hidden_size
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {CONDITIONING_MODALITY: 1}

    def get_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int] | None
    ) -> Mapping[str, int] | None:
        return {CONDITIONING_MODALITY: self.conditioning().max_rows}


class T3DummyInputsBuilder(BaseDummyInputsBuilder[T3ProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return CONDITIONING_TOKEN * mm_counts.get(CONDITIONING_MODALITY, 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int]) -> dict[str, Any]:
        geometry = self.info.conditioning()
        count = mm_counts.get(CONDITIONING_MODALITY, 0)
        return {CONDITIONING_MODALITY: torch.zeros(count, geometry.max_rows, geometry.hidden_size)}


class T3MultiModalProcessor(BaseMultiModalProcessor[T3ProcessingInfo]):
    """No HF processor: the conditioning rows pass through; the placeholder expands to them."""

    def _call_hf_processor(
        self,
        prompt: str,
        mm_data: Mapping[str, object],
        mm_kwargs: Mapping[str, object],
        tok_kwargs: Mapping[str, object],
    ) -> BatchFeature:
        tokenizer: Any = self.info.get_tokenizer()
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        return BatchFeature({"input_ids": [ids]}, tensor_type="pt")

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"audio_embeds": MultiModalFieldConfig.batched(CONDITIONING_MODALITY)}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargs,
    ) -> Sequence[PromptUpdate]:
        placeholder_id = self.info.conditioning().placeholder_id
        items = mm_items.get_items(CONDITIONING_MODALITY, AudioEmbeddingItems)
        return [
            PromptReplacement(
                modality=CONDITIONING_MODALITY,
                target=[placeholder_id],
                replacement=lambda i: [placeholder_id] * items.get_feature_size(i),
            )
        ]


# --------------------------------------------------------------------------------------- model
_LAYER_TENSOR = re.compile(r"^tfmr\.layers\.(\d+)\.(.+)$")
# checkpoint sub-name -> (our parameter sub-name, shard id for fused QKV / gate-up parameters)
_LAYER_WEIGHT_MAP: dict[str, tuple[str, str | int | None]] = {
    "self_attn.q_proj.weight": ("self_attn.qkv_proj.weight", "q"),
    "self_attn.k_proj.weight": ("self_attn.qkv_proj.weight", "k"),
    "self_attn.v_proj.weight": ("self_attn.qkv_proj.weight", "v"),
    "self_attn.o_proj.weight": ("self_attn.o_proj.weight", None),
    "mlp.gate_proj.weight": ("mlp.gate_up_proj.weight", 0),
    "mlp.up_proj.weight": ("mlp.gate_up_proj.weight", 1),
    "mlp.down_proj.weight": ("mlp.down_proj.weight", None),
    "input_layernorm.weight": ("input_layernorm.weight", None),
    "post_attention_layernorm.weight": ("post_attention_layernorm.weight", None),
}
_TOP_LEVEL_WEIGHT_MAP = {
    "tfmr.norm.weight": "model.norm.weight",
    "text_pos_emb.emb.weight": "model.positions.text_pos_emb.weight",
    "speech_pos_emb.emb.weight": "model.positions.speech_pos_emb.weight",
    "text_emb.weight": "text_emb.weight",
    "speech_emb.weight": "speech_emb.weight",
    "speech_head.weight": "speech_head.weight",
}
# In the checkpoint but not needed here: the conditioning encoder runs outside vLLM
# (chatterbox_t3.conditioning), T3 never predicts text, and the backbone's own token embedding is
# a vestige of LlamaModel (T3 feeds embeddings).
_IGNORED_PREFIXES = ("cond_enc.", "text_head.", "tfmr.embed_tokens.")


class ConditionedSpeechModel(nn.Module, SupportsMultiModal):
    """What every Chatterbox T3 shows vLLM of its inputs: the conditioning rows that replace the
    placeholder (``audio_embeds``) and the embeddings of speech and text ids in the one id space
    (``config``: a :class:`T3Config` or a Turbo config with the same id-space properties)."""

    config: Any
    model: nn.Module
    text_emb: nn.Embedding
    speech_emb: nn.Embedding

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return CONDITIONING_TOKEN if modality == CONDITIONING_MODALITY else None

    def get_language_model(self) -> nn.Module:
        return self.model

    def conditioning_items(self, **kwargs: object) -> list[torch.Tensor]:
        """Each request's conditioning rows ``[rows, hidden]`` in the model's dtype."""
        rows = kwargs.get("audio_embeds")
        if rows is None:
            return []

        # V1 batches per-item kwargs as [items, 1, rows, h] (equal shapes) or nested lists.
        def items(x: object) -> list[torch.Tensor]:
            if isinstance(x, torch.Tensor):
                return list(x.reshape(-1, *x.shape[-2:]).unbind(0))
            assert isinstance(x, list | tuple)
            return [t for y in x for t in items(y)]

        dtype = self.speech_emb.weight.dtype
        return [item.to(dtype) for item in items(rows)]

    def token_rows(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, hidden]`` embeddings of speech and text ids (zeros at the placeholder), and
        which rows are text."""
        config = self.config
        ids = input_ids.long()
        is_speech = ids < config.text_id_offset
        is_text = (ids >= config.text_id_offset) & (ids < config.conditioning_placeholder_id)
        speech_rows = self.speech_emb(ids.clamp(0, config.speech_tokens_dict_size - 1))
        text_rows = self.text_emb(
            (ids - config.text_id_offset).clamp(0, config.text_tokens_dict_size - 1)
        )
        rows = torch.where(
            is_text[:, None],
            text_rows,
            torch.where(is_speech[:, None], speech_rows, torch.zeros_like(speech_rows)),
        )
        return rows, is_text

    def with_conditioning(
        self,
        input_ids: torch.Tensor,
        embeds: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None,
    ) -> torch.Tensor:
        """``embeds`` with the conditioning rows scattered over the placeholder positions."""
        if multimodal_embeddings is not None and len(multimodal_embeddings) > 0:
            embeds = merge_multimodal_embeddings(
                input_ids, embeds, multimodal_embeddings, self.config.conditioning_placeholder_id
            )
        return embeds


@MULTIMODAL_REGISTRY.register_processor(
    T3MultiModalProcessor, info=T3ProcessingInfo, dummy_inputs=T3DummyInputsBuilder
)
class ChatterboxT3ForCausalLM(ConditionedSpeechModel):
    """T3 (text + voice conditioning -> S3 speech tokens) with classifier-free guidance."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = t3_config_of(vllm_config)
        self.config = config
        self.model = T3Backbone(vllm_config=vllm_config, config=config, prefix="model")
        self.text_emb = nn.Embedding(config.text_tokens_dict_size, config.hidden_size)
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)
        self.speech_head = nn.Linear(config.hidden_size, config.speech_tokens_dict_size, bias=False)
        scheduler = vllm_config.scheduler_config
        max_tokens = max(scheduler.max_num_batched_tokens, scheduler.max_num_seqs)
        self.step_context = T3StepContext(max_num_tokens=max_tokens, max_num_rows=max_tokens)
        self.vocab_size = config.vllm_vocab_size
        # Multilingual: the reference's alignment-guided stop (chatterbox_t3.alignment). The
        # runner publishes each step's facts in `alignment_step` before the forward.
        recorder = self.model.alignment
        self.alignment_guard = AlignmentGuard(config, recorder) if recorder is not None else None
        self.alignment_step: AlignmentStep | None = None
        self.alignment_kv_slots = 0
        """KV-cache slots (blocks x block size); set by the runner once the cache exists."""

    # ------------------------------------------------------------------------ multimodal API
    def get_multimodal_embeddings(self, **kwargs: object) -> list[torch.Tensor]:
        # Identical conditioning for both CFG branches (reference: cond_emb.expand(2, ...)).
        return [item.repeat(1, NUM_BRANCHES) for item in self.conditioning_items(**kwargs)]

    def get_input_embeddings(  # type: ignore[override]  # V0-only overload not supported
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
    ) -> torch.Tensor:
        """``[n, 2 * hidden]`` token embeddings of both branches (positions come later)."""
        rows, is_text = self.token_rows(input_ids)
        return self.with_conditioning(
            input_ids, branch_inputs(rows, is_text), multimodal_embeddings
        )

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
        n = positions.shape[0]
        context = self.step_context
        return self.model(positions, inputs_embeds, context.token_ids[:n], context.prompt_lens[:n])

    def compute_logits(
        self, hidden_states: torch.Tensor, sampling_metadata: object
    ) -> torch.Tensor:
        """Guided speech logits over the whole vLLM vocabulary (prompt-only ids at ``-inf``)."""
        rows = hidden_states.shape[0]
        branches = hidden_states.view(rows, NUM_BRANCHES, self.config.hidden_size)
        speech = guided_logits(self.speech_head(branches), self.step_context.cfg_weights[:rows])
        logits = speech.new_full((rows, self.vocab_size), float("-inf"))
        logits[:, : self.config.speech_tokens_dict_size] = speech
        step = self.alignment_step
        if self.alignment_guard is not None and step is not None:
            self.alignment_step = None  # one step's facts serve one forward
            logits = self.alignment_guard.apply(logits, step, self.alignment_kv_slots)
        return logits

    # ----------------------------------------------------------------------------- weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load ``t3_cfg.safetensors`` tensors through the explicit name maps above."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith(_IGNORED_PREFIXES):
                continue
            shard: str | int | None = None
            if match := _LAYER_TENSOR.match(name):
                layer, sub_name = match.groups()
                if sub_name not in _LAYER_WEIGHT_MAP:
                    raise UnexpectedTensorError(f"unknown backbone tensor {name!r}")
                target, shard = _LAYER_WEIGHT_MAP[sub_name]
                target = f"model.layers.{layer}.{target}"
            elif name in _TOP_LEVEL_WEIGHT_MAP:
                target = _TOP_LEVEL_WEIGHT_MAP[name]
            else:
                raise UnexpectedTensorError(f"unknown T3 tensor {name!r}")
            if target not in params:
                raise UnexpectedTensorError(
                    f"tensor {name!r} maps to {target!r}, which this model does not have "
                    f"({self.config.num_hidden_layers} layers)"
                )
            param = params[target]
            if shard is None:
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            else:
                param.weight_loader(param, tensor, shard)  # type: ignore[attr-defined]
            loaded.add(target)
        return loaded
