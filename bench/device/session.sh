#!/usr/bin/env bash
# One device call = several measurements, each logged under $OUT (what comes back) and bounded by
# its own timeout so one hang cannot eat the whole call. Run from the repo root on the device:
#   bash bench/device/session.sh PART [PART ...]
# MODEL=english|multilingual|turbo picks the full random checkpoint (/tmp/ck-full-$MODEL) every
# part uses; e.g. `bash bench/device/session.sh product; MODEL=turbo bash bench/device/session.sh
# product` measures both models in one call (Turbo's result goes to product-turbo-latest.json).
# PARTs:
#   serve-only     the server load alone (LOAD_N, default 1,8,64)
#   product-mps    the server load again under CUDA MPS (after product; needs its checkpoint)
#   layouts        issue 22/26: T3 in vLLM's engine process vs in the server's process
#                  (--t3-process in-process), the same server load (LAYOUT_N, default 8,64) and
#                  `bench` end to end (generate_schedule after-t3 and overlap) for each, one call
#   layouts-gpu    pytest -m gpu: in-process T3 + S3Gen on its own CUDA stream gives the default layout's audio
#   speech-stream  WS /v1/audio/speech/stream (issue 28): first audio after the first sentence's
#                  end at 1 and 32 sessions, text at 30 tokens/s, stalls, barge-in time
#   pack           last: logs and texts into $OUT/logs.tgz (a call returns at most 8 files)
#   product        THE product benchmark (issue 15/16/22): `chatterbox-vllm bench` on benchmark-text-1
#                  at the defaults, then `bench/server_load.py` at N = 1, 8, 32, 64, 128, 256 and a
#                  Poisson round of 64 streams at 4/s (POISSON=RATE:COUNT; distinct 25-45 word
#                  paragraphs, 25 tokens per expected second), merged by bench/product.py
#                  into $OUT/product.json + product.md. Carry .gpu-bundle .device-wheels .device-data.
#   t3-bench       T3 tok/s, cuda_graphs off/piecewise/full at batch 1/16/64 + the reference HF loop
#   mtl-gpu        pytest -m gpu of the multilingual analyzer: tokens equal across cuda_graphs off/piecewise/full
#   mtl-diff       piecewise vs full graphs (decode-shaped capture, and vLLM's own) on the mtl-gpu batch:
#                  per request the first differing step, the analyzer's recorded rows and state there
#   mtl-bench      T3 tok/s, English vs multilingual (analysis on, dry run), full graphs, batch 1 and 64
#   t3-tests       pytest -m gpu of packages/t3-vllm (CUDA-graph token identity, preemption)
#   s3gen-tests    pytest -m gpu of packages/s3gen (graphs, streams on the GPU, the start-up warm-up)
#   s3gen-stream   issue 22's S3Gen-only streaming bench (T3 infinitely fast, fp16, full size): audio s
#                  per s at S3GEN_STREAM_N streams, prepare/flow/vocode split; s3gen-stream-before: the
#                  same on .device-old (BEFORE_REF=d3ab927: before the on-device vocoder batch);
#                  S3GEN_STREAM_FLAGS="--chunk-tokens 200" tries longer steady windows (less re-run context)
#   s3gen-before   S3Gen throughput of the previous release's source (.device-old, carried)
#   s3gen-after    S3Gen throughput of this tree, eager and CUDA graphs, fp32/fp16/bf16
#   s3gen-quick / s3gen-before-quick   fewer dtypes and sizes, one timed run each (first looks)
#   s3gen-profile  top CUDA kernels of one fp16 batch of 32
#   s3gen-vocoder  fp16 flow with an fp16 / bf16 vocoder
#   s3gen-compile  experiment: torch.compile(estimator) under the graphs (compile time logged)
#   s3gen-long     this tree, fp16 graphs, 10 s voice prompt (chatterbox's own prompt length)
#   s3gen-accuracy low-precision / graph errors vs float32
set -o pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
source bench/device/setup.sh >"$out/setup.log" 2>&1 || { cat "$out/setup.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
run() {  # run NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%T))"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "=== $name exit $rc ($(date -u +%T))"
  grep -E '^\|| \| | vs reference|^KV|^device|passed|failed' "$out/$name.log" | tail -70
  [ $rc -eq 0 ] || tail -25 "$out/$name.log"
}
# MODEL=english (default) | multilingual | turbo: which full random checkpoint every part uses.
MODEL=${MODEL:-english}
CK=/tmp/ck-full-$MODEL
serve_load() {  # serve_load NAME CONCURRENCY SERVER_LOG JSON [LOAD FLAGS]: the server under load ($CK)
  run "$1" ${LOAD_S:-400} python3 bench/server_load.py --model-dir $CK \
      --concurrency "$2" ${5:-} --text-file .device-data/benchmark-text-1.txt --paragraphs \
      --max-tokens-per-expected-second 25 --seed 0 --startup-timeout 300 --request-timeout 150 \
      --server-log "$3" --json "$4" -- --no-watermark $SERVE_FLAGS
}
make_checkpoint() {
  [ -f $CK/ve.safetensors ] || [ -f $CK/ve.pt ] || run make-checkpoint 240 python3 -m chatterbox_vllm.cli \
      make-random-checkpoint $CK --size full --seed 0 --model $MODEL
}
s3gen_common=(--size full --device cuda --seconds 10 --prompt-seconds 5 --loop-items 0)
for part in "$@"; do
  case $part in
    t3-bench) run t3-bench ${T3_BENCH_S:-380} python3 bench/device/with_reference.py packages/t3-vllm/bench/t3_bench.py \
        --random full --batch-sizes 1,16,64 --max-new-tokens 100 --cuda-graphs off,piecewise,full \
        --reference --gpu-memory-utilization 0.5 --json "$out/t3-bench.json" ;;
    mtl-diff) run mtl-diff ${MTL_DIFF_S:-240} python3 packages/t3-vllm/bench/mtl_graph_diff.py \
        --modes ${MTL_DIFF_MODES:-piecewise,full,full-vllm} --mode-timeout 100 --json "$out/mtl-diff.json"; \
        grep -E '^(## |- |    |mode )' "$out/mtl-diff.log" | tail -80 ;;
    mtl-gpu) run mtl-gpu ${MTL_GPU_S:-480} python3 -m pytest packages/t3-vllm/tests/test_multilingual_gpu.py -m gpu -x -q \
        -p no:cacheprovider -p vllm_cpu_test_support.fixtures ;;
    mtl-bench) run mtl-bench ${MTL_BENCH_S:-300} python3 packages/t3-vllm/bench/t3_bench.py --random full --model both \
        --batch-sizes 1,64 --max-new-tokens 200 --cuda-graphs full --gpu-memory-utilization 0.4 --json "$out/mtl-bench.json" ;;
    t3-tests) run t3-tests ${T3_TESTS_S:-420} python3 -m pytest packages/t3-vllm/tests/test_cuda_graphs_gpu.py -m gpu -x -q \
        -p no:cacheprovider -p vllm_cpu_test_support.fixtures ;;
    layouts-gpu) run layouts-gpu ${LAYOUTS_GPU_S:-300} python3 -m pytest packages/chatterbox-meta/tests/test_layouts_gpu.py -m gpu -x -q \
        -p no:cacheprovider -p vllm_cpu_test_support.fixtures ;;
    s3gen-tests) run s3gen-tests 200 python3 -m pytest packages/s3gen/tests/test_s3gen_gpu.py packages/s3gen/tests/test_s3gen_streaming.py -m gpu -x -q \
        -p no:cacheprovider -p vllm_cpu_test_support.fixtures ;;
    s3gen-stream) run s3gen-stream ${S3GEN_STREAM_S:-300} python3 bench/s3gen_stream_bench.py --size full --device cuda \
        --dtypes fp16 --streams ${S3GEN_STREAM_N:-1 8 32 64} $S3GEN_STREAM_FLAGS ;;
    s3gen-stream-before) PYTHONPATH=$(pwd)/.device-old/packages/s3gen/src:$PYTHONPATH run s3gen-stream-before \
        ${S3GEN_STREAM_S:-300} python3 bench/s3gen_stream_bench.py --size full --device cuda \
        --dtypes fp16 --streams ${S3GEN_STREAM_N:-1 8 32 64} $S3GEN_STREAM_FLAGS ;;
    s3gen-before) PYTHONPATH=$(pwd)/.device-old/packages/s3gen/src:$PYTHONPATH run s3gen-before 150 \
        python3 bench/s3gen_bench.py "${s3gen_common[@]}" --dtypes fp16 bf16 --batch-sizes 8 32 64 --modes eager ;;
    s3gen-vocoder) run s3gen-vocoder 120 python3 bench/s3gen_bench.py "${s3gen_common[@]}" \
        --dtypes fp16 --vocoder-dtypes fp16 bf16 --batch-sizes 8 32 64 --modes graphs ;;
    s3gen-voc16) run s3gen-voc16 45 python3 bench/s3gen_bench.py "${s3gen_common[@]}" \
        --dtypes fp16 --vocoder-dtypes fp16 --batch-sizes 8 64 --modes graphs --repeats 1 ;;
    s3gen-compile) run s3gen-compile 170 python3 bench/s3gen_bench.py "${s3gen_common[@]}" \
        --dtypes fp16 --batch-sizes 32 64 --modes graphs --compile --repeats 1 ;;
    s3gen-after) run s3gen-after 260 python3 bench/s3gen_bench.py "${s3gen_common[@]}" \
        --dtypes fp16 bf16 fp32 --batch-sizes 8 32 64 --modes eager graphs ;;
    s3gen-quick) run s3gen-quick 200 python3 bench/s3gen_bench.py "${s3gen_common[@]}" \
        --dtypes fp16 fp32 --batch-sizes 8 64 --modes eager graphs --repeats 1 ;;
    s3gen-before-quick) PYTHONPATH=$(pwd)/.device-old/packages/s3gen/src:$PYTHONPATH run s3gen-before-quick 150 \
        python3 bench/s3gen_bench.py "${s3gen_common[@]}" --dtypes fp16 --batch-sizes 8 64 --modes eager --repeats 1 --profile ;;
    s3gen-profile) run s3gen-profile 200 python3 bench/s3gen_bench.py "${s3gen_common[@]}" \
        --dtypes fp16 --batch-sizes 32 --modes graphs --profile --repeats 1 ;;
    s3gen-long) run s3gen-long 120 python3 bench/s3gen_bench.py --size full --device cuda --seconds 11.5 \
        --prompt-seconds 10 --loop-items 0 --dtypes fp16 --batch-sizes 8 32 64 --modes graphs ;;
    s3gen-accuracy) run s3gen-accuracy 150 python3 bench/s3gen_bench.py --size full --device cuda \
        --accuracy-only --accuracy-items 4 --accuracy-seconds 6 --prompt-seconds 5 --modes eager graphs ;;
    product)
      make_checkpoint
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$out/gpumem.txt" &
      smi=$!
      run e2e ${E2E_S:-330} python3 -m chatterbox_vllm.cli bench --model-dir $CK \
          --text-file .device-data/benchmark-text-1.txt --voice .device-data/voice-01.wav \
          --no-watermark --quiet --json "$out/e2e.json" $E2E_FLAGS
      grep -v -E '^\s*$|\r|it/s\]' "$out/e2e.log" | tail -24
      : > "$out/gpumem.txt"  # the server's peak only
      serve_load serve-load "${LOAD_N:-1,8,32,64,128,256}" "$out/server.log" "$out/server-load.json" \
          "--poisson ${POISSON:-4:64}"
      grep -E 'healthy|^\|' "$out/serve-load.log" | head -14
      kill $smi 2>/dev/null
      python3 bench/product.py --e2e "$out/e2e.json" --load "$out/server-load.json" \
          --commit "${PRODUCT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
          --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), GPU harness (bench/device)" \
          --gpu-memory-log "$out/gpumem.txt" --out "$out/product.json" | tee "$out/product.md" ;;
    serve-only)  # the server load alone (LOAD_N), e.g. a quick check before the full product run
      make_checkpoint
      serve_load serve-load "${LOAD_N:-1,8,64}" "$out/server.log" "$out/server-load.json"
      grep -E 'healthy|^\||error' "$out/serve-load.log" | head -14
      grep -E 'S3Gen|T3 engine|Traceback|Error' "$out/server.log" | grep -v -E 'FA version|amdsmi|rocm' | head -12 ;;
    product-mps)
      # The same load with CUDA MPS (T3's engine process and the server process share the GPU
      # concurrently instead of time-slicing); the daemon is stopped afterwards.
      if ! command -v nvidia-cuda-mps-control >/dev/null; then echo "no nvidia-cuda-mps-control"; continue; fi
      export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
      mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
      nvidia-cuda-mps-control -d && echo "MPS daemon started"
      serve_load serve-load-mps "${LOAD_N_MPS:-8,32,64,128}" "$out/server-mps.log" "$out/server-load-mps.json"
      grep -E 'healthy|^\||error' "$out/serve-load-mps.log" | head -14
      echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY ;;
    layouts)
      make_checkpoint
      for layout in separate in-process; do
        SERVE_FLAGS="$SERVE_FLAGS --t3-process $layout" serve_load "load-$layout" "${LAYOUT_N:-8,64}" \
            "$out/server-$layout.log" "$out/server-load-$layout.json"
        grep -E 'healthy|^\||error' "$out/load-$layout.log" | head -8
        grep -E 'start-up timeline' "$out/server-$layout.log" | head -1
        for schedule in after-t3 overlap; do
          run "e2e-$layout-$schedule" ${E2E_S:-330} python3 -m chatterbox_vllm.cli bench --model-dir $CK \
              --text-file .device-data/benchmark-text-1.txt --voice .device-data/voice-01.wav \
              --no-watermark --quiet --t3-process $layout --generate-schedule $schedule \
              --json "$out/e2e-$layout-$schedule.json"
        done
      done ;;
    speech-stream)
      make_checkpoint
      run speech-stream ${STREAM_S:-500} python3 bench/speech_stream_bench.py --model-dir $CK \
          --concurrency "${STREAM_N:-1,32}" --controls '{"max_tokens_per_expected_second": 25}' \
          --startup-timeout 300 --server-log "$out/stream-server.log" -- --no-watermark $SERVE_FLAGS ;;
    pack)  # at most 8 files come back: logs go into one archive
      (cd "$out" && tar czf logs.tgz *.log *.txt 2>/dev/null && rm -f *.log *.txt) ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
