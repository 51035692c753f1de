# Source on the lent GPU machine (vLLM 0.9.2 through ../shared/gpu-harness), from the repo root:
#   source bench/device/setup.sh
# Needs the carried folders .gpu-bundle (gpu-harness build-bundle.sh) and .device-wheels (pure-Python
# or cp312 wheels the device image lacks: s3tokenizer, librosa and its audio deps, the reference
# chatterbox-tts for side-by-side runs); `bash bench/device/prepare.sh` (here) builds both. Our three
# packages are put on PYTHONPATH from source; a dist-info carries the vLLM plugin entry point so the
# spawned engine core registers the T3 model. `bash bench/device/session.sh PART...` runs the
# measurements (see its header) after sourcing this.
set -e
# CUDA graphs need the harness shim of 2026-12-01 or later: _C.weak_ref_tensor (called by graph
# capture) and a cache write without boolean indexing (a host sync, not capturable).
grep -q weak_ref_tensor .gpu-bundle/vllm_shim.py || {
  echo "bench/device/setup.sh: .gpu-bundle predates CUDA-graph support; rebuild it with bench/device/prepare.sh" >&2
  return 1 2>/dev/null || exit 1
}
source .gpu-bundle/setup-device.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device-wheels/*.whl
repo=$(pwd)
# The test-support package only for its pytest fixtures (pytest -p vllm_cpu_test_support.fixtures):
# without a dist-info its vLLM platform plugin (CPU-only machines) is never registered here.
export PYTHONPATH="$repo/packages/t3-vllm/src:$repo/packages/s3gen/src:$repo/packages/chatterbox-meta/src:$repo/tests/support/vllm-cpu-test-support/src:$PYTHONPATH"
dist=/tmp/site/chatterbox_t3_vllm-0.1.0.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: chatterbox-t3-vllm\nVersion: 0.1.0\n' > "$dist/METADATA"
python3 - "$repo/packages/t3-vllm/pyproject.toml" "$dist/entry_points.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
with open(sys.argv[2], "w") as out:
    for group, entries in project.get("entry-points", {}).items():
        out.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n")
PY
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
set +e
# torch.compile / CUDA graphs: vLLM's fusion passes need the fp8 op schemas to exist.
cp bench/device/compile_op_schemas.py /tmp/site/
grep -q compile_op_schemas /tmp/site/sitecustomize.py || echo "import compile_op_schemas" >> /tmp/site/sitecustomize.py
