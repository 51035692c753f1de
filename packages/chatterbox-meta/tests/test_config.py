"""Engine knobs: one default each, derived values from the machine, explicit values kept."""

from __future__ import annotations

import pytest

from chatterbox_vllm import EngineConfig
from chatterbox_vllm.config import KV_BYTES_PER_TOKEN_BF16, T3_FIXED_GPU_BYTES
from chatterbox_vllm.errors import InvalidParameterError

GIB = 2**30


def test_cpu_gets_the_slow_path_settings() -> None:
    config = EngineConfig().resolve(cuda_available=False)
    assert (config.device, config.dtype, config.s3gen_dtype) == ("cpu", "float32", "float32")
    assert (config.max_num_seqs, config.s3gen_batch_size) == (8, 4)


def test_a_large_gpu_gets_the_fast_path_and_a_memory_split_sized_for_it() -> None:
    config = EngineConfig().resolve(cuda_available=True, gpu_memory_bytes=141 * GIB)
    assert (config.device, config.dtype, config.s3gen_dtype) == ("cuda", "bfloat16", "float16")
    assert (config.max_num_seqs, config.s3gen_batch_size, config.cuda_graphs) == (128, 32, "auto")
    kv = 128 * config.model_len * KV_BYTES_PER_TOKEN_BF16
    assert config.gpu_memory_utilization is not None
    assert config.gpu_memory_utilization * 141 * GIB >= T3_FIXED_GPU_BYTES + kv  # room for all
    assert config.gpu_memory_utilization <= 0.35  # and the rest is left to S3Gen
    assert EngineConfig().resolve(cuda_available=True, gpu_memory_bytes=80 * GIB).max_num_seqs == 64


def test_a_24_gib_gpu_gets_smaller_batches_that_still_fit() -> None:
    config = EngineConfig().resolve(cuda_available=True, gpu_memory_bytes=24 * GIB)
    assert (config.max_num_seqs, config.s3gen_batch_size) == (32, 8)
    kv = 32 * config.model_len * KV_BYTES_PER_TOKEN_BF16
    assert config.gpu_memory_utilization is not None
    assert T3_FIXED_GPU_BYTES + kv <= config.gpu_memory_utilization * 24 * GIB <= 0.9 * 24 * GIB


def test_a_derived_memory_split_fixes_the_kv_cache_so_s3gen_graphs_can_start_beside_t3() -> None:
    config = EngineConfig().resolve(cuda_available=True, gpu_memory_bytes=141 * GIB)
    # Every one of the 128 sequences at full length, 16 positions a block, plus vLLM's null block.
    assert config.num_gpu_blocks_override == 128 * -(-config.model_len // 16) + 1
    assert config.s3gen_graphs_during_t3_start
    # T3 in this process: vLLM's graph capture forbids other CUDA work of the process.
    in_process = EngineConfig(t3_process="in-process")
    assert not in_process.resolve(
        cuda_available=True, gpu_memory_bytes=141 * GIB
    ).s3gen_graphs_during_t3_start
    # A share the user chose: vLLM sizes the KV cache from its profile, so S3Gen waits.
    chosen = EngineConfig(gpu_memory_utilization=0.5).resolve(
        cuda_available=True, gpu_memory_bytes=141 * GIB
    )
    assert chosen.num_gpu_blocks_override is None
    assert not chosen.s3gen_graphs_during_t3_start
    # A 16 GiB card: T3 takes most of it, too little would be free when vLLM's worker starts.
    small = EngineConfig().resolve(cuda_available=True, gpu_memory_bytes=16 * GIB)
    assert small.gpu_memory_utilization is not None and small.gpu_memory_utilization > 0.75
    assert not small.s3gen_graphs_during_t3_start
    assert EngineConfig().resolve(cuda_available=False).num_gpu_blocks_override is None


def test_explicit_knobs_are_kept() -> None:
    config = EngineConfig(
        max_num_seqs=12, s3gen_batch_size=3, gpu_memory_utilization=0.55, s3gen_dtype="bfloat16"
    ).resolve(cuda_available=True, gpu_memory_bytes=80 * GIB)
    assert (config.max_num_seqs, config.s3gen_batch_size) == (12, 3)
    assert (config.gpu_memory_utilization, config.s3gen_dtype) == (0.55, "bfloat16")


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("cuda_graphs", "always", "cuda_graphs must be one of auto, full, piecewise, off"),
        ("device", "tpu", "device must be cuda, cuda:N or cpu"),
        ("gpu_memory_utilization", 1.5, r"gpu_memory_utilization must be in \(0, 1\]"),
        ("max_num_seqs", 0, "max_num_seqs must be a positive int"),
        ("s3gen_dtype", "int8", "s3gen_dtype must be one of auto, float32"),
        # Wrong types (a settings file's strings): named, never Python's TypeError from '<'.
        ("gpu_memory_utilization", "0.5", "gpu_memory_utilization must be a number, got str '0.5'"),
        ("crossfade_seconds", "0.05", "crossfade_seconds must be a number, got str"),
        ("crossfade_seconds", None, "crossfade_seconds must be a number, got NoneType"),
        ("max_model_len", "300", "max_model_len must be an int, got str '300'"),
        ("max_chunk_chars", 100.0, "max_chunk_chars must be an int, got float 100.0"),
        ("device", 0, r"device must be a str \(cuda, cuda:N or cpu\), got int 0"),
        ("stream_graphs", "no", "stream_graphs must be a bool, got str 'no'"),
    ],
)
def test_bad_knobs_name_themselves(knob: str, value: object, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        EngineConfig(**{knob: value})


def test_unknown_knobs_list_the_known_ones() -> None:
    with pytest.raises(
        InvalidParameterError, match="unknown engine option.*max_num_seq;.*max_num_seqs"
    ):
        EngineConfig().with_overrides({"max_num_seq": 4})
