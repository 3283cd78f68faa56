#!/usr/bin/env bash
# Device check for issue 12 (GPU kernel family): one prepared run on an NVIDIA machine without
# network, following /work/shared/device/README.md. NOT YET RUN: no device was lent to the
# session that wrote it (see docs/BENCHMARKS.md, "Real GPU").
#
#   bash scripts/device_check.sh          # from the project root; logs under $OUT
#
# Needs, prepared on a networked machine and carried along (git-ignored, never committed):
#   .gl/*.deb            Vulkan loader and GL dispatch libraries
#   .deno/deno.xz        Deno 2.9.6, xz-compressed
#   .deno/cache          DENO_DIR with the npm dependencies
# Steps (each under a timeout, each logged to $OUT/NAME.log; the run goes on after a failure):
#   1. adapter_info: the adapter must be the NVIDIA GPU (not llvmpipe); the measured family
#   2. kernel tests (matmul, attention, decoder layer; each loops over both families)
#   3. kernel bench, BF16, T = 1 and 8, both families (GB/s and % of the read probe)
#   4. the Llama-3-8B-shaped checkpoint with 32 layers (~14 GB, ~40 s)
#   5. captures of layers 5 and 31 from local files (2 runs each)
# and prints a short table last. Targets (issue 12): GEMV T = 1 >= 70 % of the probe,
# T = 8 >= 50 %, layer-31 capture under 2 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device_check}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

# --- environment, as in the device README ----------------------------------------------------
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.deno/deno.xz'),open('/tmp/deno','wb'))"
chmod +x /tmp/deno
export PATH="/tmp:$PATH" DENO_DIR="$PWD/.deno/cache" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export GQA_VIZ_CACHE="$OUT/cache" # kernels.json (the measured family) lands here
nvidia-smi >"$OUT/nvidia-smi.log" 2>&1 || true

# step NAME SECONDS COMMAND...: runs COMMAND with a timeout, logs it, records rc and seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%-16s rc=%-3s %5d s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$SUMMARY"
  return $rc
}

step adapter_info 120 deno run -A scripts/adapter_info.ts
if grep -qi llvmpipe "$OUT/adapter_info.log"; then
  echo "the adapter is llvmpipe: the NVIDIA Vulkan driver was not found" >>"$SUMMARY"
fi
step kernel_tests 240 deno test -A tests/matmul_test.ts tests/attention_test.ts \
  tests/decoder_layer_test.ts tests/choose_test.ts
step bench 240 deno run -A scripts/bench_kernels.ts --quick --families cpu,gpu
step make_8b 240 deno run -A scripts/make_8b_shaped.ts /tmp/l3-8b --layers 32
step capture_l5 180 deno run -A scripts/bench_capture.ts /tmp/l3-8b --layer 5 --runs 2 --layers 32
step capture_l31 240 deno run -A scripts/bench_capture.ts /tmp/l3-8b --layer 31 --runs 2 --layers 32

# --- the short table, last -----------------------------------------------------------------
{
  echo
  echo "== adapter"
  grep -E "^(adapter|kernel family|limits)" "$OUT/adapter_info.log"
  echo "== kernel tests"
  grep -aE "passed|failed" "$OUT/kernel_tests.log" | tail -1
  echo "== matmul (BF16; of probe = % of the best read-probe bandwidth)"
  grep -E "^\| \(|probe best" "$OUT/bench.log"
  echo "== captures (wall per run, per-layer seconds)"
  grep -aE "run|wall|layer" "$OUT/capture_l5.log" | tail -4
  grep -aE "run|wall|layer" "$OUT/capture_l31.log" | tail -4
} >>"$SUMMARY"
cat "$SUMMARY"
