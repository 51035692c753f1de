#!/usr/bin/env bash
# Run HERE (not on the device): builds the git-ignored folders a device call carries.
#   bash bench/device/prepare.sh        then carry: [".gpu-bundle", ".device-wheels", ".device-old"]
#   .gpu-bundle    vLLM 0.9.2's Python + the pure-PyTorch op shim (../shared/gpu-harness, ~38 MB)
#   .device-wheels what the device image lacks: s3tokenizer (built from its sdist), and for the
#                  reference chatterbox-tts 0.1.2 side-by-side runs its imports (librosa, conformer,
#                  diffusers, ...; perth is stubbed by with_reference.py) (~4.5 MB)
#                  and what the server needs beyond the image: uvicorn, cffi (soundfile's backend),
#                  websockets (WS route), pyloudnorm (Turbo voices), pedalboard (speed)
#   .device-data   benchmark-text-1.txt and voice-01.wav from ../shared/data (the product benchmark)
#   .device-old    the s3gen and chatterbox-meta sources at BEFORE_REF (default HEAD), for
#                  before/after timings of S3Gen and of the server (PYTHONPATH=.device-old/...)
#                  (0.6 MB); the 2026-12-01 numbers used BEFORE_REF=d68f657 (before the fast path)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for d in /.gpu-bundle/ /.device-wheels/ /.device-old/ /.device-data/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
harness=${GPU_HARNESS:-../shared/gpu-harness}
[ -f .gpu-bundle/vllm_shim.py ] && cmp -s .gpu-bundle/vllm_shim.py "$harness/vllm_shim.py" \
  || { rm -rf .gpu-bundle; "$harness/build-bundle.sh" .gpu-bundle; }
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p .device-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d .device-wheels chatterbox-tts==0.1.2 librosa==0.11.0 conformer==0.3.2 \
  diffusers==0.29.0 audioread pooch platformdirs soxr soundfile decorator \
  uvicorn==0.54.0 cffi==1.17.1 pycparser==2.22 websockets==16.1.1 pyloudnorm==0.2.0 pedalboard==0.9.26
# The product benchmark's inputs (../shared/data does not travel with the checkout).
mkdir -p .device-data
cp ../shared/data/benchmark-text-1.txt ../shared/data/voice-01.wav .device-data/
# s3tokenizer 0.1.7 is published as an sdist only.
ls .device-wheels/s3tokenizer-0.1.7-*.whl >/dev/null 2>&1 \
  || python3 -m pip wheel -q --no-deps -w .device-wheels s3tokenizer==0.1.7
rm -rf .device-old && mkdir .device-old
git archive "${BEFORE_REF:-HEAD}" packages/s3gen/src packages/chatterbox-meta/src | tar -x -C .device-old
du -sh .gpu-bundle .device-wheels .device-old .device-data
