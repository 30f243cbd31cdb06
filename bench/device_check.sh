#!/usr/bin/env bash
# One command for the day a CUDA GPU is lent: runs the cuda-marked tests, `t2 demo` in bf16 and the bf16-vs-float32
# RL-step / rollout / CEM / decode / serve benchmark on the GPU, and prints one table (check, status, seconds, detail).
#
#     bash bench/device_check.sh [--device cuda:0] [--skip-demo]
#     bash bench/device_check.sh --device cpu     # dry run: the same steps on the CPU (checks this script itself)
#
# Without a GPU it says so and exits 0 without running anything (nothing to check on this machine). `--device cpu`
# runs every step on the CPU instead: the cuda-marked tests then skip, and the table shows that each step starts,
# finishes and is reported, so that the day a GPU is lent the script itself is not what fails.
# Logs of every step land in $OUT (default: a temporary folder), printed at the end.
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
SKIP_DEMO=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --skip-demo) SKIP_DEMO=1; shift ;;
    *) echo "device_check: unknown option $1 (use --device cuda:N, --skip-demo)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

if [ "${DEVICE%%:*}" = cpu ]; then
  GPU="dry run on the CPU ($($PY -c 'import torch; print("torch", torch.__version__)' 2>/dev/null)): the cuda tests skip"
elif ! GPU=$($PY -c "import torch, sys
if not torch.cuda.is_available(): sys.exit(1)
print(torch.cuda.get_device_name(0), '|', round(torch.cuda.get_device_properties(0).total_memory / 2**30), 'GiB |',
      'bf16' if torch.cuda.is_bf16_supported() else 'no bf16', '| torch', torch.__version__)" 2>/dev/null); then
  echo "device_check: no CUDA GPU visible to torch $($PY -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
       "on $(hostname); nothing to check here (run it on a machine with a GPU)"
  exit 0
fi
echo "device_check: $GPU; logs in $OUT"

ROWS=()  # "check|status|seconds|detail"

t0=$SECONDS
$PY -m pytest -q -m cuda tests/test_precision.py -p no:cacheprovider >"$OUT/tests.log" 2>&1
rc=$?
ROWS+=("cuda tests|$([ $rc -eq 0 ] && echo ok || echo "FAIL($rc)")|$((SECONDS - t0))|$(tail -n 1 "$OUT/tests.log")")

if [ "$SKIP_DEMO" -eq 0 ]; then
  t0=$SECONDS
  $PY -m transformer_squared demo --device "$DEVICE" --dtype bfloat16 --workdir "$OUT/demo" >"$OUT/demo.log" 2>&1
  rc=$?
  ROWS+=("demo bf16 (first run)|$([ $rc -eq 0 ] && echo ok || echo "FAIL($rc)")|$((SECONDS - t0))|$(grep -m1 'precision:' "$OUT/demo.log" | sed 's/^ *//')")
  t0=$SECONDS
  $PY -m transformer_squared demo --device "$DEVICE" --dtype bfloat16 --workdir "$OUT/demo" >"$OUT/demo2.log" 2>&1
  rc=$?
  ROWS+=("demo bf16 (cached)|$([ $rc -eq 0 ] && echo ok || echo "FAIL($rc)")|$((SECONDS - t0))|")
fi

t0=$SECONDS
$PY bench/bench_precision.py --device "$DEVICE" --only rl rollout cem decode serve --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1
rc=$?
ROWS+=("bench rl/rollout/cem/decode/serve|$([ $rc -eq 0 ] && echo ok || echo "FAIL($rc)")|$((SECONDS - t0))|see below")

echo
printf '%-26s %-9s %8s  %s\n' check status seconds detail
printf '%-26s %-9s %8s  %s\n' ----- ------ ------- ------
failed=0
for row in "${ROWS[@]}"; do
  IFS='|' read -r name status secs detail <<<"$row"
  printf '%-26s %-9s %8s  %s\n' "$name" "$status" "$secs" "$detail"
  [ "$status" = ok ] || failed=1
done
echo
grep -E "^(rl|rollout|cem|decode|serve) " "$OUT/bench.log" || tail -n 5 "$OUT/bench.log"
echo "logs: $OUT"
exit $failed
