#!/usr/bin/env bash
# Every GPU test and benchmark we have, as one command on a lent GPU machine (one H100/H200, < 8 min),
# writing one results file. Prepare here first (wheels, the reference's sources, the shared reference
# facts, into the ignored folder .gpu/):
#
#     bash benchmarks/gpu_prepare.sh /work/.mirror/RVC-Boss+GPT-SoVITS/repo
#
# then with the device tool:   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# and commit the file it returns as benchmarks/results/gpu_check-<date>.md.
#
# Steps (each under its own time limit; a failed or timed-out step is recorded and the next one runs):
#   env        the GPU, driver, torch and CUDA versions
#   tests      the model's tests with CUDA present: tests/test_engine.py (CUDA-graph engine = eager, bf16
#              and fp16; the graph ladder follows the sentences at hand), tests/test_multi_lora.py,
#              tests/test_model.py, tests/test_reference_equivalence.py
#   vs_ref     benchmarks/vs_reference.py --device cuda: our engine against the reference side by side,
#              fp32 / bf16 / fp16, batches 1, 32, 128, 256; batch 1 also against the reference's own
#              CUDA-graph runner
#   e2e        benchmarks/synthesizer_e2e.py --device cuda: text to waveform, English + Chinese, 4 voices
#   rtf        benchmarks/model_rtf.py --device cuda: GPT tokens/s and RTF by batch
#   lora       benchmarks/multi_lora.py --device cuda: 64 LoRA voices x 8 lines, mixed batches vs per voice
# Not here: the render pipeline on Ray Data (Ray's wheel alone, 79 MB, is over the device tool's 64 MiB
# carry limit, and the image has no Ray) and the watermark / ASR models of line QC (their wheels are
# 34 and 75 MB).
#
# GPU_CHECK_DRY=1 runs the same plumbing on this CPU with tiny sizes (to check it before spending
# device time): results then go to $OUT or /tmp/vf-gpu-check.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GPU=$ROOT/.gpu
OUT=${OUT:-/tmp/vf-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-}
RESULT=$OUT/gpu_check.md
[ -d "$GPU/whl" ] || { echo "no $GPU/whl: run benchmarks/gpu_prepare.sh here first and carry .gpu" >&2; exit 2; }

# packages the image lacks, from the carried wheels; voicefleet importable from this tree, uninstalled
SITE=/tmp/vf-gpu-site
rm -rf "$SITE" && mkdir -p "$SITE/voicefleet"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$GPU"/whl/*.whl || exit 2
for d in model tasks flows; do ln -s "$ROOT/$d" "$SITE/voicefleet/$d"; done
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export VOICEFLEET_REFERENCE_FACTS=$GPU/shared-reference PYTHONUNBUFFERED=1

{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)${DRY:+ · DRY RUN on CPU (plumbing only, not figures)}"
} > "$RESULT"

# step NAME LIMIT_S CMD...: the command's output, exit code and seconds, appended to the results file
# (limits: 8 minutes in all on the GPU machine; three times as long for the dry run on a shared CPU)
step() {
  local name=$1 limit=$(( $2 * ${LIMIT_SCALE:-1} )); shift 2
  local start=$SECONDS log="$OUT/$name.log"
  echo "== $name: $*"
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local status="ok"; [ $rc -eq 124 ] && status="timed out after ${limit} s"; [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc)"
  { echo; echo "## $name: $status, $((SECONDS - start)) s"; echo; echo '```'; echo "\$ $*"; tail -c 12000 "$log"; echo '```'; } >> "$RESULT"
  rm -f "$log"
  echo "   $status, $((SECONDS - start)) s"
}

if [ -n "$DRY" ]; then
  DEV=cpu; LIMIT_SCALE=3; VS="--batches 1 --tokens 8 --repeats 1 --precisions fp32 --threads 2"
  E2E="--tiny --sentences 2 --voices 1 --precisions fp32 --threads 2"; RTF="--quick"; TESTS="-k cuda"
  LORA="--voices 4 --lines 2 --dim 64 --layers 1 --threads 2"
else
  DEV=cuda; VS="--batches 1,32,128,256 --tokens 100 --repeats 2 --precisions fp32,bf16,fp16 --threads 8"
  E2E="--sentences 512 --voices 4 --precisions bf16,fp32 --threads 8"; RTF="--threads 8"; TESTS=""
  LORA="--max-batch 256 --layers 24 --threads 8"
fi

step env 60 "$PY" -c "
import subprocess, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f'{p.total_memory / 2**30:.0f} GiB', p.multi_processor_count, 'SMs')
    print(subprocess.run(['nvidia-smi', '--query-gpu=driver_version,clocks.max.sm', '--format=csv'], capture_output=True, text=True).stdout)
"
# shellcheck disable=SC2086
step tests 110 "$PY" -m pytest -q -p no:cacheprovider -o addopts= $TESTS \
  tests/test_engine.py tests/test_multi_lora.py tests/test_model.py tests/test_reference_equivalence.py
# shellcheck disable=SC2086
step vs_ref 160 "$PY" benchmarks/vs_reference.py --device $DEV --reference "$GPU/reference" $VS
# shellcheck disable=SC2086
step e2e 80 "$PY" benchmarks/synthesizer_e2e.py --device $DEV $E2E
# shellcheck disable=SC2086
step rtf 45 "$PY" benchmarks/model_rtf.py --device $DEV $RTF
# shellcheck disable=SC2086
step lora 60 "$PY" benchmarks/multi_lora.py --device $DEV $LORA
echo "results: $RESULT"
