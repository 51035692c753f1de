"""vLLM worker/model-runner extension that tells T3 each step's prompt lengths and CFG weights.

vLLM's model interface passes positions and (for multimodal models) embeddings, but not which
request a token belongs to. T3 needs, per token, its request's prompt length (learned speech
positions, :mod:`chatterbox_t3.speech_positions`) and its id, and per request its CFG weight
(:mod:`chatterbox_t3.cfg`). After vLLM's own ``_prepare_inputs`` has laid out the step (persistent
batch condensed, token ids gathered), :class:`T3RunnerMixin` copies those values into the model's
:class:`~chatterbox_t3.speech_positions.T3StepContext` buffers.

Select it with ``worker_cls`` (the engine does, by name: :data:`chatterbox_t3.engine.GPU_WORKER`,
:data:`~chatterbox_t3.engine.CPU_WORKER`): :class:`T3GPUWorker` on CUDA, :class:`T3CPUWorker` on
CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample.sampler import Sampler
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from chatterbox_t3.alignment import AlignmentStep, StepFacts, text_length
from chatterbox_t3.cfg import cfg_weight_from_extra_args
from chatterbox_t3.speech_positions import T3StepContext
from chatterbox_t3.startup import StartupTimelineMixin

if TYPE_CHECKING:
    from vllm.v1.attention.backends.utils import CommonAttentionMetadata
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.sample.metadata import SamplingMetadata

logger = logging.getLogger(__name__)


class AlignedPositionSampler(Sampler):
    """vLLM's sampler, whose logprob output also carries each sampled token's aligned text position.

    Word timings need, per speech token, the text position the multilingual analyzer aligned it
    to; it is computed on the device inside the engine-core process, and the caller is in another
    process. vLLM 0.9.2 V1 moves per-token data from the model runner to the caller only as the
    sampled ids and their logprobs (``ModelRunnerOutput`` -> the scheduler's ``EngineCoreOutput``
    -> the output processor), so the position rides in the logprob record of the sampled token:
    a request that asks for ``logprobs=0`` (:class:`~chatterbox_t3.engine.T3Request`
    ``word_timings=True``) gets the sampled token's logprob as usual and, in place of its rank,
    the aligned position (:meth:`AlignmentGuard.sampled_positions`). It arrives in the same
    message as its token, through preemption, streaming (DELTA) and final-only outputs alike, with
    no side channel to keep in step and no patch of vLLM's scheduler or output processor. (The
    rank of a T3 token means nothing to a caller; the other channels are taken: pooled outputs end
    a request, ``stop_reason`` and events are per request, not per token.)
    """

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self._runner = runner

    def forward(self, logits: torch.Tensor, sampling_metadata: SamplingMetadata) -> SamplerOutput:
        output = super().forward(logits, sampling_metadata)
        tensors = output.logprobs_tensors
        guard = getattr(getattr(self._runner, "model", None), "alignment_guard", None)
        if tensors is None or guard is None:
            return output
        ranks = tensors.selected_token_ranks
        positions = guard.sampled_positions(logits.shape[0]).to(ranks.device, ranks.dtype)
        return replace(output, logprobs_tensors=tensors._replace(selected_token_ranks=positions))


class T3RunnerMixin:
    """Publishes per-token prompt lengths / ids and per-row CFG weights before every forward, and
    for the multilingual model each step's :class:`~chatterbox_t3.alignment.AlignmentStep`."""

    _t3_alignment_slots: dict[str, int]
    _t3_free_alignment_slots: list[int]

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        super()._update_states(scheduler_output)  # type: ignore[misc]
        slots = getattr(self, "_t3_alignment_slots", None)
        if slots:
            for req_id in scheduler_output.finished_req_ids:
                if (slot := slots.pop(req_id, None)) is not None:
                    self._t3_free_alignment_slots.append(slot)

    def _prepare_inputs(self, scheduler_output: SchedulerOutput) -> Any:
        result = super()._prepare_inputs(scheduler_output)  # type: ignore[misc]
        num_scheduled_tokens: np.ndarray = result[-1]
        runner: Any = self
        # Turbo (GPT-2 positions, no CFG) needs nothing beyond what vLLM passes.
        if getattr(runner.model, "step_context", None) is not None:
            self._publish_t3_step(num_scheduled_tokens)
        if getattr(runner.model, "alignment_guard", None) is not None:
            self._publish_alignment_step(num_scheduled_tokens)
        return result

    def _alignment_slot(self, req_id: str) -> int:
        """A state row for ``req_id`` of the alignment guard, kept until the request finishes
        (also while it is preempted, so recomputation resumes its analysis)."""
        slot = self._t3_alignment_slots.get(req_id)
        if slot is None:
            free = self._t3_free_alignment_slots
            slot = free.pop() if free else len(self._t3_alignment_slots)
            self._t3_alignment_slots[req_id] = slot
        return slot

    def _publish_alignment_step(self, num_scheduled_tokens: np.ndarray) -> None:
        runner: Any = self
        model = runner.model
        if not hasattr(self, "_t3_alignment_slots"):
            self._t3_alignment_slots, self._t3_free_alignment_slots = {}, []
            keys = model.alignment_guard.recorder.keys
            # Persistent device buffers and pinned staging copies: two uploads per step.
            self._t3_kv_slots = torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)
            self._t3_facts = torch.zeros(
                (runner.input_batch.max_num_reqs, StepFacts.COUNT),
                dtype=torch.long,
                device=keys.device,
            )
            self._t3_kv_slots_cpu = self._staging(self._t3_kv_slots)
            self._t3_facts_cpu = self._staging(self._t3_facts)
            # The KV cache exists by the first step and never changes size.
            block_size = runner.kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size
            model.alignment_kv_slots = runner.kv_cache_config.num_blocks * block_size
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        total = int(num_scheduled_tokens.sum())
        block_table = batch.block_table[0]
        block_size = runner.kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size

        seq_len = batch.num_computed_tokens_cpu[:num_reqs] + num_scheduled_tokens
        # A request samples once all its tokens are computed (vLLM discards the token of a
        # partial prefill chunk); only those rows take an analyzer step.
        rows = np.flatnonzero(seq_len >= batch.num_tokens[:num_reqs])
        facts = self._t3_facts_cpu.numpy()[: len(rows)]
        facts[:, StepFacts.ROW] = rows
        facts[:, StepFacts.TOKEN_INDEX] = np.cumsum(num_scheduled_tokens)[rows] - 1
        facts[:, StepFacts.SEQ_LEN] = seq_len[rows]
        facts[:, StepFacts.PROMPT_LEN] = batch.num_prompt_tokens[:num_reqs][rows]
        facts[:, StepFacts.STATE_SLOT] = [self._alignment_slot(batch.req_ids[r]) for r in rows]
        facts[:, StepFacts.INPUT_TOKEN] = runner.input_ids_cpu.numpy()[
            facts[:, StepFacts.TOKEN_INDEX]
        ]
        self._t3_kv_slots_cpu.numpy()[:total] = block_table.slot_mapping_np[:total]
        self._t3_kv_slots[:total].copy_(self._t3_kv_slots_cpu[:total], non_blocking=True)
        self._t3_facts[: len(rows)].copy_(self._t3_facts_cpu[: len(rows)], non_blocking=True)
        model.alignment_step = AlignmentStep(
            num_tokens=total,
            kv_slots=self._t3_kv_slots[:total],
            facts=self._t3_facts[: len(rows)],
            num_rows=len(rows),
            num_state_slots=len(self._t3_alignment_slots) + len(self._t3_free_alignment_slots),
            max_seq_len=int(facts[:, StepFacts.SEQ_LEN].max()) if len(rows) else 0,
            max_text_len=(
                text_length(int(facts[:, StepFacts.PROMPT_LEN].max()), model.config)
                if len(rows)
                else 0
            ),
            block_table=block_table.get_device_tensor(),
            block_size=block_size,
        )

    def _staging(self, like: torch.Tensor) -> torch.Tensor:
        """A CPU copy of a context buffer (pinned where vLLM pins), for asynchronous uploads."""
        staging = torch.zeros_like(like, device="cpu")
        return staging.pin_memory() if getattr(self, "pin_memory", False) else staging

    def _publish_t3_step(self, num_scheduled_tokens: np.ndarray) -> None:
        runner: Any = self
        context: T3StepContext = runner.model.step_context
        if not hasattr(self, "_t3_prompt_lens"):
            self._t3_prompt_lens = self._staging(context.prompt_lens)
            self._t3_cfg_weights = self._staging(context.cfg_weights)
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        num_tokens = int(num_scheduled_tokens.sum())

        # One prompt length per scheduled token, in the step's token order (requests are laid
        # out in input-batch order, each with its scheduled tokens contiguous).
        self._t3_prompt_lens.numpy()[:num_tokens] = np.repeat(
            batch.num_prompt_tokens[:num_reqs], num_scheduled_tokens
        )
        weights = self._t3_cfg_weights.numpy()
        for row, req_id in enumerate(batch.req_ids):
            params = runner.requests[req_id].sampling_params
            weights[row] = cfg_weight_from_extra_args(params.extra_args if params else None)

        # vLLM synchronises on the sampled tokens at the end of every step, so the pinned staging
        # buffers are free again when the next step overwrites them.
        context.prompt_lens[:num_tokens].copy_(self._t3_prompt_lens[:num_tokens], non_blocking=True)
        context.cfg_weights[:num_reqs].copy_(self._t3_cfg_weights[:num_reqs], non_blocking=True)
        context.token_ids[:num_tokens].copy_(runner.input_ids[:num_tokens], non_blocking=True)


class DecodeShapedGraphBuilder:
    """vLLM 0.9.2's Triton attention metadata builder, made to capture full CUDA graphs that
    launch the attention kernel eager decoding launches.

    ``unified_attention`` picks its kernel from host values: the split-KV ("3D") kernel when
    ``max_query_len == 1`` and ``(tokens // 16 + seqs) * kv_heads <= 128``, the single-pass
    ("2D") kernel otherwise. vLLM's ``_dummy_run`` captures every graph with
    ``max_query_len = num_tokens``, so every captured size >= 2 holds the 2D kernel, while an eager
    (or piecewise) decode step of 2-4 T3 requests (32 KV heads: both CFG branches) runs the 3D
    kernel. The two sum the softmax in a different order, so a full-graph decode step of 2-4
    requests differs from eager in the last bits of every layer's attention output. Captured
    as a decode step (``max_query_len = 1``) the graph of size C holds the kernel eager uses for
    every batch padded up to C (T3: 3D for C <= 4, 2D from 8, the same split as eager's 1-4 | 5+).

    Used for the multilingual model (its alignment analyzer reads the attention rows). A graph
    captured for decode then serves decode steps only: a step with a multi-token query
    (prefill chunk, prefix-cache remainder) runs the compiled forward without graphs (vLLM's
    ``skip_cuda_graphs``), with the kernel its real metadata selects.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def build_for_cudagraph_capture(self, common_attn_metadata: CommonAttentionMetadata) -> Any:
        metadata = self._inner.build_for_cudagraph_capture(common_attn_metadata)
        return dataclasses.replace(metadata, max_query_len=1)

    def can_run_in_cudagraph(self, common_attn_metadata: CommonAttentionMetadata) -> bool:
        return bool(common_attn_metadata.max_query_len == 1)


class T3GPUModelRunner(T3RunnerMixin, GPUModelRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = AlignedPositionSampler(self)

    def initialize_attn_backend(self, kv_cache_config: KVCacheConfig) -> None:
        super().initialize_attn_backend(kv_cache_config)
        # The multilingual model only: its analyzer needs eager's kernel. The English model keeps
        # vLLM's capture, under which mixed prefill/decode steps replay graphs too (its tokens
        # equal eager's: tests/test_cuda_graphs_gpu.py).
        if not self.full_cuda_graph or getattr(self.model, "alignment_guard", None) is None:
            return
        from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadataBuilder

        # Duck-typed: vLLM calls the builders' methods, never checks their type.
        builders: list[Any] = [
            DecodeShapedGraphBuilder(builder)
            if isinstance(builder, TritonAttentionMetadataBuilder)
            else builder
            for builder in self.attn_metadata_builders
        ]
        if any(isinstance(b, DecodeShapedGraphBuilder) for b in builders):
            logger.info("full CUDA graphs: Triton attention captured as decode steps")
        self.attn_metadata_builders = builders


class T3CPUModelRunner(T3RunnerMixin, CPUModelRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = AlignedPositionSampler(self)


class T3GPUWorker(StartupTimelineMixin, Worker):
    """vLLM's V1 GPU worker with :class:`T3GPUModelRunner` (start-up stages timed)."""

    def init_device(self) -> None:
        super().init_device()
        assert self.device is not None
        self.model_runner = T3GPUModelRunner(self.vllm_config, self.device)


class T3CPUWorker(StartupTimelineMixin, CPUWorker):
    """vLLM's V1 CPU worker with :class:`T3CPUModelRunner` (start-up stages timed)."""

    def init_device(self) -> None:
        super().init_device()
        self.model_runner = T3CPUModelRunner(self.vllm_config, torch.device("cpu"))
