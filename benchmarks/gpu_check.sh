#!/usr/bin/env bash
# Everything GPU-side in one command, for a fresh GPU machine with torch, transformers and accelerate installed:
# no install (the package runs from src/) and no download (models of real shapes get random weights here).
#
#   bash benchmarks/gpu_check.sh          # the gpu tests, scale.py (Llama-2-7B-shaped, bfloat16) and the packed
#                                         # vs unpacked scorer on CUDA, then one summary table; ~5 min on an H100
#   bash benchmarks/gpu_check.sh --full   # also the whole suite with the GPU visible (non-gpu tests pin the CPU)
#
# Logs go to $OUT/gpu_check (or /tmp/gpu_check). The exit code is the number of steps that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LASERLM_CACHE="${LASERLM_CACHE:-/tmp/laserlm-cache}"
PY=${PYTHON:-python3}
LOG="${OUT:-/tmp}/gpu_check"
mkdir -p "$LOG"
ROWS=()
FAILED=0

step() {  # step NAME COMMAND...: run it, keep its log, remember its exit code, time and SUMMARY line
    local name=$1 t0 rc
    shift
    echo "== $name: $*"
    t0=$(date +%s)
    "$@" >"$LOG/$name.log" 2>&1
    rc=$?
    tail -n 15 "$LOG/$name.log"
    [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
    ROWS+=("$name|$rc|$(($(date +%s) - t0))|$(grep -h '^SUMMARY\|passed\|failed' "$LOG/$name.log" | tail -n 1)")
}

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
    || exit 99
step gpu-tests $PY -m pytest -m gpu tests/gpu -q -p no:cacheprovider -o addopts=""
step scale $PY benchmarks/scale.py --device cuda --dtype bfloat16
step random-smollm2 $PY benchmarks/random_model.py --shape smollm2 -o /tmp/gpu_check_smollm2
step eval-speed $PY benchmarks/eval_speed.py --model /tmp/gpu_check_smollm2 --task bb_epistemic --limit 1000 --no-loop
step generation $PY benchmarks/gen_speed.py --model /tmp/gpu_check_smollm2 --limit 500 --layers 5,28
step tails $PY benchmarks/tail_speed.py --model /tmp/gpu_check_smollm2 --limit 500 --edit mlp_in:28:0.01
if [ "${1:-}" = "--full" ]; then
    step suite $PY -m pytest -q -p no:cacheprovider -m "not gpu"
fi

echo
echo "| step | exit | seconds | figures |"
echo "|---|---|---|---|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r name rc secs figures <<<"$row"
    echo "| $name | $rc | $secs | ${figures#SUMMARY } |"
done
exit "$FAILED"
