"""Where do full CUDA graphs and eager part ways for the multilingual analyzer? One call, per step.

Runs the batch of ``tests/test_multilingual_gpu.py`` (tiny multilingual checkpoint, float32,
greedy, 16 requests in 8 languages) once per mode, each in its own process with vLLM's engine core
in that process, and traces every analyzer step from inside the model runner: per sampling row the
request, its sequence length, the batch size and the graph size it was padded to, the input token,
the recorded query and key rows of the three alignment heads, the guard's state after the step
(aligned position, completion, masses), its decision (stop forced / suppressed) and the sampled
token's logit margin. Then, against the first mode, it prints:

* per request, the first step whose tokens differ, with what the analyzer saw there in each mode;
* the first step whose recorded query/key rows differ (bitwise and beyond 1e-5), the first step
  whose analyzer state differs, and the largest row difference by batch size.

And within each mode, on a GPU: whether the keys the recorder holds after each step are the keys
vLLM's attention wrote into its KV cache for the same tokens (bitwise; any difference means the
recording inside the graph missed or misplaced a write: a state bug, whatever the numerics).

The default reference is ``piecewise``: it gave the eager tokens on the H200 and runs the same
Inductor code as full graphs, with the attention op eager, so full graphs should record bitwise
the same rows. Differences confined to batches of 2-4 requests are the attention kernel a graph
froze (:class:`chatterbox_t3.worker.DecodeShapedGraphBuilder`, undone in ``full-vllm``);
differences at every batch size are something else, and the first one says where. (Against
``off`` every step differs in the last bits: eager runs vLLM's own norm/rotary kernels.)

Modes: ``off`` (eager), ``piecewise``, ``full`` (with the decode-shaped capture), ``full-vllm``
(full graphs as vLLM 0.9.2 captures them: what failed on the H200 on 2026-12-02).

    python bench/mtl_graph_diff.py                           # piecewise,full,full-vllm on a GPU
    python bench/mtl_graph_diff.py --modes off,off --requests 3 --max-new-tokens 8   # CPU smoke

Exit status: 0 every mode gave the first mode's tokens, 1 some did not, 2 a mode failed to run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

logger = logging.getLogger("mtl_graph_diff")

MODES = ("off", "piecewise", "full", "full-vllm")


# ---------------------------------------------------------------------------- one traced mode
def _install_tracer(engine: Any, records: list[dict[str, Any]]) -> None:
    """Wrap the guard's ``apply`` (eager, right after the forward) to copy what it reads and
    decides to the host. Host syncs are fine here: this is a diagnosis, not a benchmark."""
    import torch

    from chatterbox_t3.alignment import FORCED_LOGIT, StepFacts

    runner = engine.vllm.llm_engine.model_executor.driver_worker.worker.model_runner
    model = runner.model
    guard = model.alignment_guard
    original = guard.apply
    config = model.config
    step_counter = [0]

    def traced(logits: torch.Tensor, step: Any, num_kv_slots: int) -> torch.Tensor:
        facts = step.facts.cpu()
        rows = facts[:, StepFacts.ROW].tolist()
        token_index = facts[:, StepFacts.TOKEN_INDEX]
        queries = guard.recorder.queries[token_index.to(guard.recorder.queries.device)].cpu()
        keys = guard.recorder.keys[token_index.to(guard.recorder.keys.device)].cpu()
        cache_diff = _recorded_vs_cached_keys(model, step, token_index, keys)
        before = logits[facts[:, StepFacts.ROW].to(logits.device)].float()
        top2 = before[:, : config.speech_tokens_dict_size].topk(2, dim=-1).values.cpu()
        out = original(logits, step, num_kv_slots)
        stop_logit = out[facts[:, StepFacts.ROW].to(out.device), config.stop_speech_token].cpu()
        state = guard._state
        slots = facts[:, StepFacts.STATE_SLOT]
        state_rows = (
            state[slots.to(state.device)].cpu() if state is not None and len(rows) else None
        )
        num_tokens = step.num_tokens
        sizes = getattr(runner, "cudagraph_batch_sizes", None) or [0]
        graphed = (
            runner.device.type == "cuda"
            and getattr(runner, "use_cuda_graph", False)
            and num_tokens <= sizes[-1]
        )
        graph = runner.vllm_config.pad_for_cudagraph(num_tokens) if graphed else num_tokens
        for i, row in enumerate(rows):
            records.append(
                {
                    "step": step_counter[0],
                    "req": runner.input_batch.req_ids[row],
                    "seq_len": int(facts[i, StepFacts.SEQ_LEN]),
                    "input_token": int(facts[i, StepFacts.INPUT_TOKEN]),
                    "batch": len(rows),
                    "num_tokens": num_tokens,
                    "graph": graph,
                    "queries": queries[i],
                    "keys": keys[i],
                    "state": None if state_rows is None else state_rows[i],
                    "forced": bool(stop_logit[i] >= FORCED_LOGIT),
                    "suppressed": bool(stop_logit[i] <= -FORCED_LOGIT),
                    "margin": float(top2[i, 0] - top2[i, 1]),
                    "cache_diff": None if cache_diff is None else float(cache_diff[i]),
                }
            )
        step_counter[0] += 1
        return out

    guard.apply = traced


def _recorded_vs_cached_keys(model: Any, step: Any, token_index: Any, recorded: Any) -> Any | None:
    """``[rows]`` max |recorded key - the key vLLM's attention wrote into its KV cache| over the
    three heads, for each row's newest token: 0 unless the recorder missed or misplaced a write.
    ``None`` where the cache is not vLLM's paged GPU layout ``[2, blocks, block, heads, d]``."""
    import torch

    from chatterbox_t3.alignment import ALIGNMENT_HEADS

    kv_group = model.config.num_attention_heads // model.config.num_key_value_heads
    slots = step.kv_slots[token_index.to(step.kv_slots.device)]
    diffs = []
    for slot, (layer, head) in enumerate(ALIGNMENT_HEADS):
        cache = model.model.layers[layer].self_attn.attn.kv_cache[0]
        if cache.dim() != 5:
            return None
        keys = cache[0].reshape(-1, cache.shape[-2], cache.shape[-1])[slots, head // kv_group]
        diffs.append((keys.float().cpu() - recorded[:, slot].float()).abs().amax(dim=-1))
    return torch.stack(diffs, dim=1).amax(dim=1)


def trace_mode(mode: str, checkpoint: Path, out: Path, count: int, max_new_tokens: int) -> None:
    """Run the batch under ``mode`` in this process and ``torch.save`` tokens and trace."""
    import torch

    from chatterbox_t3 import T3Engine
    from vllm_cpu_test_support.multilingual import mixed_language_requests

    if mode == "full-vllm":
        # vLLM's own capture: undo the decode-shaped builders (engine core is in this process).
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        from chatterbox_t3.worker import T3GPUModelRunner

        T3GPUModelRunner.initialize_attn_backend = GPUModelRunner.initialize_attn_backend  # type: ignore[method-assign]
    on_gpu = torch.cuda.is_available()
    engine = T3Engine.from_checkpoint(
        checkpoint,
        cuda_graphs="full" if mode == "full-vllm" else mode,
        dtype="float32",
        max_model_len=384,
        max_num_seqs=24,
        gpu_memory_utilization=0.1 if on_gpu else 0.9,
        seed=0,
        **({} if on_gpu else {"num_gpu_blocks_override": 256, "max_num_batched_tokens": 2048}),
    )
    records: list[dict[str, Any]] = []
    try:
        _install_tracer(engine, records)
        started = time.perf_counter()
        outputs = engine.generate_speech_tokens(mixed_language_requests(count, max_new_tokens))
        elapsed = time.perf_counter() - started
    finally:
        engine.shutdown()
    # vLLM numbers requests per engine in submission order: the i-th id is request i.
    ids = sorted({r["req"] for r in records}, key=lambda x: (len(x), x))
    index = {req: i for i, req in enumerate(ids)}
    for record in records:
        record["request"] = index[record.pop("req")]
    torch.save(
        {
            "mode": mode,
            "tokens": [list(o.raw_token_ids) for o in outputs],
            "records": records,
            "seconds": elapsed,
        },
        out,
    )


# ------------------------------------------------------------------------------ the comparison
def _by_request(records: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["request"], r["seq_len"]): r for r in records}


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "(no analyzer step)"
    state = record["state"]
    position = "-" if state is None else f"{float(state[0]):.0f}"
    complete = "-" if state is None else f"{float(state[1]):.0f}"
    mass = "-" if state is None else ",".join(f"{float(m):.3f}" for m in state[2:6])
    return (
        f"step {record['step']} batch {record['batch']} (graph {record['graph']}) "
        f"input {record['input_token']} position {position} complete {complete} mass [{mass}] "
        f"forced {record['forced']} suppressed {record['suppressed']} "
        f"margin {record['margin']:.3g}"
    )


def report_recorder(run: dict[str, Any]) -> None:
    """Within one mode: did the recorder hold, at every step, the keys attention cached?"""
    checked = [r for r in run["records"] if r.get("cache_diff") is not None]
    if not checked:
        print(f"- {run['mode']}: recorded keys not checked against the KV cache (not a GPU cache)")
        return
    wrong = [r for r in checked if r["cache_diff"] > 0]
    by_batch: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for r in checked:
        by_batch[r["batch"]][0] += 1
        by_batch[r["batch"]][1] += r["cache_diff"] > 0
    print(
        f"- {run['mode']}: recorded keys != the KV cache's in {len(wrong)} of {len(checked)} rows "
        "(batch: wrong/rows) "
        + ", ".join(f"{b}: {w}/{n}" for b, (n, w) in sorted(by_batch.items()))
    )
    if wrong:
        first = min(wrong, key=lambda r: r["step"])
        print(
            f"    first: request {first['request']} seq_len {first['seq_len']} "
            f"(|diff| {first['cache_diff']:.3g}): {_describe(first)}"
        )


def compare(reference: dict[str, Any], other: dict[str, Any]) -> bool:
    """Print where ``other`` departs from ``reference``; True if the tokens are identical."""
    import torch

    name = f"{other['mode']} vs {reference['mode']}"
    mismatched = [
        i
        for i, (a, b) in enumerate(zip(reference["tokens"], other["tokens"], strict=True))
        if a != b
    ]
    print(
        f"\n## {name}: {len(mismatched)} of {len(reference['tokens'])} requests differ "
        f"{mismatched} ({other['seconds']:.1f} s vs {reference['seconds']:.1f} s)"
    )
    ref, oth = _by_request(reference["records"]), _by_request(other["records"])
    for i in mismatched:
        a, b = reference["tokens"][i], other["tokens"][i]
        at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(
            f"- request {i}: first differing output token #{at} "
            f"({a[at] if at < len(a) else 'end'} vs {b[at] if at < len(b) else 'end'}), "
            f"lengths {len(a)} vs {len(b)}"
        )
        # The analyzer step that sampled output token #at has seq_len = prompt + at.
        steps = sorted(s for (r, s) in ref if r == i)
        if steps and at < len(steps):
            key = (i, steps[at])
            print(f"    {reference['mode']:>9}: {_describe(ref.get(key))}")
            print(f"    {other['mode']:>9}: {_describe(oth.get(key))}")
    # Recorded rows: bitwise and beyond a tolerance, and the largest difference by batch size.
    first_bitwise = first_real = None
    worst: dict[int, float] = defaultdict(float)
    state_first = None
    for key in sorted(ref, key=lambda k: ref[k]["step"]):
        if key not in oth:
            continue
        r, o = ref[key], oth[key]
        if r["input_token"] != o["input_token"]:
            continue  # the paths already parted; rows of other inputs compare nothing
        diff = max(
            float((r["queries"] - o["queries"]).abs().max()),
            float((r["keys"] - o["keys"]).abs().max()),
        )
        worst[o["batch"]] = max(worst[o["batch"]], diff)
        if diff > 0 and first_bitwise is None:
            first_bitwise = (key, diff)
        if diff > 1e-5 and first_real is None:
            first_real = (key, diff)
        if (
            state_first is None
            and r["state"] is not None
            and o["state"] is not None
            and (not torch.equal(r["state"][:2], o["state"][:2]) or r["forced"] != o["forced"])
        ):
            state_first = key
    for label, hit in (("bitwise", first_bitwise), ("> 1e-5", first_real)):
        if hit is None:
            print(f"- recorded q/k rows: no difference {label}")
        else:
            (request, seq_len), diff = hit
            print(
                f"- recorded q/k rows differ {label} first at request {request} seq_len {seq_len} "
                f"(max |diff| {diff:.3g}): {_describe(oth[(request, seq_len)])}"
            )
    if state_first is None:
        print("- analyzer state (position, completion, forced stop): equal wherever the inputs are")
    else:
        print(
            f"- analyzer state first differs at request {state_first[0]} seq_len "
            f"{state_first[1]}:\n    {reference['mode']:>9}: {_describe(ref[state_first])}\n"
            f"    {other['mode']:>9}: {_describe(oth[state_first])}"
        )
    print(
        "- largest |diff| of the recorded q/k rows by batch size: "
        + ", ".join(f"{b}: {worst[b]:.3g}" for b in sorted(worst))
    )
    return not mismatched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--modes",
        default="off,full,full-vllm",
        help=f"comma-separated, the first is the reference; of {', '.join(MODES)}",
    )
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument(
        "--mode-timeout",
        type=float,
        default=150.0,
        help="seconds per mode (start-up, compilation and generation)",
    )
    parser.add_argument("--json", type=Path, help="also write the tokens of every mode here")
    parser.add_argument(
        "--trace", nargs=3, metavar=("MODE", "CHECKPOINT", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    if args.trace:
        mode, checkpoint, out = args.trace
        trace_mode(mode, Path(checkpoint), Path(out), args.requests, args.max_new_tokens)
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or len(modes) < 2:
        parser.error(f"--modes needs two or more of {', '.join(MODES)}, got {args.modes!r}")

    import torch

    from chatterbox_t3.checkpoint import write_random_t3_checkpoint
    from chatterbox_t3.cuda_graphs import MULTILINGUAL_FULL_GRAPHS_ENV

    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the model runner in the traced process
    env[MULTILINGUAL_FULL_GRAPHS_ENV] = "1"
    if torch.cuda.is_available():
        env.setdefault("VLLM_ATTENTION_BACKEND", "TRITON_ATTN_VLLM_V1")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mtl-graph-diff-") as tmp:
        checkpoint = write_random_t3_checkpoint(
            Path(tmp) / "ck", "tiny", seed=11, model="multilingual"
        )
        for k, mode in enumerate(modes):
            out = Path(tmp) / f"trace-{k}.pt"
            command = [
                sys.executable,
                __file__,
                "--requests",
                str(args.requests),
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--trace",
                mode,
                str(checkpoint),
                str(out),
            ]
            started = time.perf_counter()
            try:
                # vLLM logs to stdout: the child's output goes to stderr, stdout is the result.
                done = subprocess.run(
                    command, env=env, timeout=args.mode_timeout, check=False, stdout=sys.stderr
                )
            except subprocess.TimeoutExpired:
                print(f"mode {mode}: no result within {args.mode_timeout:.0f} s", flush=True)
                return 2
            if done.returncode != 0 or not out.exists():
                print(f"mode {mode}: failed (exit {done.returncode})", flush=True)
                return 2
            runs.append(torch.load(out, weights_only=False))
            print(
                f"mode {mode}: {time.perf_counter() - started:.0f} s in all, "
                f"{len(runs[-1]['records'])} analyzer rows",
                flush=True,
            )
    for run in runs:
        report_recorder(run)
    identical = [compare(runs[0], run) for run in runs[1:]]
    if args.json:
        args.json.write_text(json.dumps([{"mode": r["mode"], "tokens": r["tokens"]} for r in runs]))
    return 0 if all(identical) else 1


if __name__ == "__main__":
    sys.exit(main())
