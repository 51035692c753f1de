"""T3 throughput: this package's vLLM engine vs the reference chatterbox-tts HF decode loop.

Reports generated speech tokens per second at each batch size (all requests submitted together,
one voice per request, CFG on) for each CUDA-graph mode (one engine per mode, started in turn), the
engine start-up time, the KV-cache bytes per token both CFG branches cost, and optionally
the reference loop (``--reference``, needs chatterbox-tts 0.1.2 importable; it decodes one request
at a time, so its batch-B rate is its batch-1 rate).

    python bench/t3_bench.py --checkpoint DIR --batch-sizes 1,16,64 --cuda-graphs off,piecewise,full --reference
    python bench/t3_bench.py --random tiny --batch-sizes 1,4 --max-new-tokens 20   # CPU smoke run

Random weights rarely sample the stop token, so every request runs to ``--max-new-tokens``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from chatterbox_t3.alignment import DRY_RUN_ENV

logger = logging.getLogger("t3_bench")


def make_voice(seed: int) -> Any:
    from chatterbox_t3 import T3Voice

    generator = torch.Generator().manual_seed(seed)
    embedding = torch.nn.functional.normalize(torch.randn(256, generator=generator), dim=0)
    return T3Voice(embedding, torch.randint(0, 6561, (150,), generator=generator))


TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home again."


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """K and V of both CFG branches in every layer."""
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * element


def bench_engine(args: argparse.Namespace, checkpoint: Path, mode: str) -> list[dict[str, Any]]:
    from chatterbox_t3 import T3Engine, T3Request, T3SamplingParams

    largest = max(args.batch_sizes)
    kwargs: dict[str, Any] = {
        "dtype": args.dtype,
        "max_num_seqs": largest,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "cuda_graphs": mode,
        "enable_prefix_caching": True,
    }
    if not torch.cuda.is_available():
        kwargs.update(cuda_graphs="off", num_gpu_blocks_override=args.cpu_kv_blocks)
    started = time.perf_counter()
    engine = T3Engine.from_checkpoint(checkpoint, **kwargs)
    startup = time.perf_counter() - started
    kind = engine.config.model_kind
    language = "en" if engine.config.is_multilingual else None
    plan = engine.cuda_graph_plan
    resolved = plan.mode if plan is not None else mode
    params = T3SamplingParams(max_new_tokens=args.max_new_tokens, seed=0)
    voices = [make_voice(i) for i in range(largest)]
    rows = []
    try:
        # Warm-up: compiles/captures and fills the conditioning cache for every voice.
        engine.generate_speech_tokens(
            [T3Request(TEXT, v, params, language=language) for v in voices]
        )
        for batch in args.batch_sizes:
            requests = [T3Request(TEXT, voices[i], params, language=language) for i in range(batch)]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            outputs = engine.generate_speech_tokens(requests)
            seconds = time.perf_counter() - started
            generated = sum(len(o.raw_token_ids) for o in outputs)
            rows.append(
                {
                    "engine": f"vllm {kind} ({resolved})",
                    "mode": resolved,
                    "batch": batch,
                    "tokens": generated,
                    "seconds": round(seconds, 3),
                    "tokens_per_s": round(generated / seconds, 1),
                    "per_request_tokens_per_s": round(generated / seconds / batch, 1),
                }
            )
            logger.info("vllm %s batch %d: %.1f tokens/s", resolved, batch, generated / seconds)
    finally:
        engine.shutdown()
    dtype = (
        torch.float32
        if args.dtype == "float32" or not torch.cuda.is_available()
        else torch.bfloat16
    )
    if args.dtype == "float16":
        dtype = torch.float16
    kv = kv_bytes_per_token(engine.config, dtype)
    for row in rows:
        row["kv_bytes_per_token"] = kv
        row["startup_s"] = round(startup, 1)
    return rows


def bench_reference(args: argparse.Namespace, checkpoint: Path) -> dict[str, Any]:
    import torch.nn.functional as F
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.models.t3.modules.t3_config import T3Config as ReferenceConfig
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.tts import punc_norm
    from safetensors.torch import load_file

    from chatterbox_t3 import T3Config

    config = T3Config.from_checkpoint_dir(checkpoint)
    hp = ReferenceConfig()
    if config.num_hidden_layers != 30 or config.intermediate_size != 4096:
        LLAMA_CONFIGS["bench"] = {
            **LLAMA_CONFIGS["Llama_520M"],
            "num_hidden_layers": config.num_hidden_layers,
            "intermediate_size": config.intermediate_size,
        }
        hp.llama_config_name = "bench"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t3 = T3(hp)
    t3.load_state_dict(load_file(checkpoint / "t3_cfg.safetensors"))
    t3.to(device).eval()
    tokenizer = EnTokenizer(str(checkpoint / "tokenizer.json"))
    text = tokenizer.text_to_tokens(punc_norm(TEXT)).to(device)
    text = torch.cat([text, text])
    text = F.pad(F.pad(text, (1, 0), value=255), (0, 1), value=0)
    voice = make_voice(0)

    def run() -> int:
        cond = T3Cond(
            speaker_emb=voice.speaker_embedding[None].to(device),
            cond_prompt_speech_tokens=voice.prompt_tokens[None].to(device),
            emotion_adv=0.5 * torch.ones(1, 1, 1, device=device),
        )
        out = t3.inference(
            t3_cond=cond, text_tokens=text, max_new_tokens=args.max_new_tokens, cfg_weight=0.5
        )
        return int(out.shape[1])

    run()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    generated = run()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "engine": "reference (HF loop, fp32)",
        "batch": 1,
        "tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(generated / seconds, 1),
        "per_request_tokens_per_s": round(generated / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint directory")
    source.add_argument("--random", choices=["tiny", "full"], help="benchmark random weights")
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument(
        "--cuda-graphs",
        default="auto",
        help="comma-separated CUDA-graph modes to time, one engine each (auto, full, piecewise, off)",
    )
    parser.add_argument("--reference", action="store_true", help="also time the reference loop")
    parser.add_argument("--cpu-kv-blocks", type=int, default=512, help="KV blocks on CPU runs")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--model",
        choices=["english", "multilingual", "both"],
        default="english",
        help="random checkpoint kind(s); multilingual runs its alignment analysis without "
        "acting on it (CHATTERBOX_T3_ALIGNMENT_DRY_RUN=1) so both generate the same tokens",
    )
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = [args.checkpoint] if args.checkpoint is not None else []
        if not checkpoints:
            from chatterbox_t3 import write_random_t3_checkpoint

            kinds = ["english", "multilingual"] if args.model == "both" else [args.model]
            if "multilingual" in kinds:
                os.environ[DRY_RUN_ENV] = "1"
            checkpoints = [
                write_random_t3_checkpoint(
                    Path(scratch) / kind,
                    args.random,
                    seed=0,
                    model=kind,  # type: ignore[arg-type]
                )
                for kind in kinds
            ]
        checkpoint = checkpoints[0]
        rows = []
        for mode in args.cuda_graphs.split(","):
            for each in checkpoints:
                rows.extend(bench_engine(args, each, mode.strip()))
                if args.json:  # after every engine: a later failure must not lose these rows
                    args.json.write_text(json.dumps(rows, indent=2) + "\n")
        if args.reference:
            try:
                rows.append(bench_reference(args, checkpoint))
            except Exception:  # keep the engine rows printed below
                logger.exception("reference loop failed")

    columns = [
        "engine",
        "batch",
        "tokens",
        "seconds",
        "tokens_per_s",
        "per_request_tokens_per_s",
        "startup_s",
    ]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in columns))
    print(f"KV cache per token (both CFG branches): {rows[0]['kv_bytes_per_token']} bytes")
    reference = [r for r in rows if r["engine"].startswith("reference")]
    if reference:
        base = reference[0]["tokens_per_s"]
        for row in rows:
            if row["batch"] == 1 and not row["engine"].startswith("reference"):
                print(f"{row['engine']} batch 1 vs reference: {row['tokens_per_s'] / base:.1f}x")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
