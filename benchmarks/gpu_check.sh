#!/usr/bin/env bash
# One prepared GPU session: GPU tests, loader throughput (data.decode=cpu vs gpu, one-core rates) and
# pre-training throughput, a short table at the end.
# Installs nothing from the network. Missing pure-Python packages (pydantic, webdataset, pydicom)
# may be carried as wheels in .whl/ (see docs/performance.md); they are installed into /tmp/site.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine; writes $OUT (or ./bench-out)
#   DRY_RUN=1 bash benchmarks/gpu_check.sh  # on a CPU machine: checks the script starts, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch, timm, pydantic, webdataset; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" || exit 2
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$OUT/gpu.txt"

if [ "${DRY_RUN:-0}" = "1" ]; then
  RECIPE=recipes/smoke.yaml; BATCHES="8"; EXTRA="--blocks 1 --steps 1 --warmup 1"
else
  RECIPE=recipes/base.yaml; BATCHES="128 256 384 512"; EXTRA="--blocks 3 --steps 5 --warmup 3"
fi

echo "== GPU tests"
"$PY" -m pytest -q -m gpu tests --ignore=tests/data/test_gpu_views.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"

echo "== data.decode=gpu: tests (device path vs CPU views, pre-training steps)"
"$PY" -m pytest -q -rs -m gpu tests/data/test_gpu_views.py 2>&1 | tail -5 | tee "$OUT/gpu_views_tests.txt"

# Loader: views delivered to the GPU, data.decode=cpu vs gpu (same workers), and the one-core rates of
# this machine's (server) cores, for docs/performance.md "Feeding one H100".
if [ "${DRY_RUN:-0}" = "1" ]; then
  LOADER="--n 64 --epochs 1 --workers 1"; PERCORE="--n 64 --repeats 1 --workers 1"
else
  LOADER="--n 2000 --epochs 2 --workers 4"; PERCORE="--n 500 --repeats 3 --workers 8"
fi
loader_step() {  # name, args...
  local name=$1; shift
  echo "== loader: $name"
  if OMP_NUM_THREADS=1 timeout 300 "$PY" benchmarks/loader.py "$@" > "$OUT/$name.log" 2>&1; then
    grep -E "img/s|ratio|cores" "$OUT/$name.log" | tail -8
  else
    echo "$name: failed (see $OUT/$name.log)"; tail -3 "$OUT/$name.log"
  fi
}
loader_step loader_decode --decode both --device cuda $LOADER
loader_step loader_per_core --per-core $PERCORE

echo "== throughput: $RECIPE"
results=()
run() {  # name, env, args...
  local name=$1; shift
  local env=$1; shift
  if env $env timeout 300 "$PY" benchmarks/pretrain_step.py --recipe "$RECIPE" $EXTRA --json "$OUT/$name.json" "$@" \
       > "$OUT/$name.log" 2>&1; then
    results+=("$name")
  else
    echo "$name: failed (see $OUT/$name.log)"; tail -3 "$OUT/$name.log"
  fi
}
largest=""
for b in $BATCHES; do
  run "eager_b$b" "TIMM_FUSED_ATTN=1" --batch "$b" && largest=$b || break
done
if [ -n "$largest" ]; then
  run "eager_nofused_b$largest" "TIMM_FUSED_ATTN=0" --batch "$largest"
  run "compile_b$largest" "TIMM_FUSED_ATTN=1" --batch "$largest" --compile
fi

"$PY" - "$OUT" "${results[@]}" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'run':22s} {'batch':>5s} {'bare img/s':>10s} {'full img/s':>10s} {'overhead':>8s} {'MFU%':>6s} {'mem GiB':>7s}")
for name in sys.argv[2:]:
    r = json.loads((out / f"{name}.json").read_text())
    print(f"{name:22s} {r['batch']:5d} {r['bare_images_per_s']:10.1f} {r['full_images_per_s']:10.1f} "
          f"{r['overhead_pct']:+7.1f}% {r.get('mfu_pct', float('nan')):6.1f} {r.get('peak_mem_gib_full', float('nan')):7.1f}")
PYEOF
