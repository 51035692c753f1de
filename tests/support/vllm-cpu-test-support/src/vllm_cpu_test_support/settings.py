"""Settings that keep vLLM engines small and quick on a CPU-only test machine.

Random weights never emit the stop token, so every chunk runs to its token cap: short caps, a
small KV cache and few CFM steps are what keep a CPU run within seconds.
"""

from __future__ import annotations

import os

CPU_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""One OpenMP thread per process (two oversubscribe a 2-core machine, and fork with more than one
thread can deadlock), a 1 GiB KV-cache reservation, no tokenizer thread pool."""

T3_ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 320,
    "max_num_seqs": 8,
    "num_gpu_blocks_override": 96,
    "max_num_batched_tokens": 512,
    "seed": 0,
}
"""``T3Engine.from_checkpoint`` options for the tiny T3 checkpoint (an engine well under 1 GB)."""

CHATTERBOX_ENGINE = {
    "dtype": "float32",
    "cuda_graphs": "off",
    "num_gpu_blocks_override": 128,
    "max_num_seqs": 8,
    "max_new_tokens": 200,
    "max_chunk_chars": 60,
    "cfm_steps": 4,
    "s3gen_batch_size": 4,
}
"""``ChatterboxTTS.from_local`` / ``ReplicatedChatterboxTTS.from_local`` engine options."""

CLI_ENGINE_ARGS = (
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--enforce-eager",
    "--num-gpu-blocks",
    "128",
    "--max-num-seqs",
    "8",
    "--max-new-tokens",
    "40",
    "--max-chunk-chars",
    "60",
    "--cfm-steps",
    "2",
    "--no-watermark",
)
"""``chatterbox-vllm speak`` flags for a short CPU run (a tighter token cap than the API tests:
every CLI test starts its own engine)."""


def use_cpu_env() -> None:
    """Apply :data:`CPU_ENV` to this process (keeping values the caller set), before vLLM or
    torch start their thread pools."""
    for name, value in CPU_ENV.items():
        os.environ.setdefault(name, value)
