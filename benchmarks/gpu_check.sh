#!/usr/bin/env bash
# One prepared GPU session: GPU tests, loader throughput (data.decode=cpu vs gpu, one-core rates),
# pre-training throughput (a short table) and the peers comparison of the pre-training step (issue 30).
# Installs nothing from the network. Missing pure-Python packages (pydantic, webdataset, pydicom; for the
# peers lightly and tqdm) may be carried as wheels in .whl/ (see docs/performance.md); they are installed
# into /tmp/site. Fill .whl/ on a machine with the package index (pure-Python wheels, any Python):
#   pip download --no-deps --only-binary=:all: -d .whl pydantic webdataset pydicom lightly==1.6.0 tqdm
# (pydantic-core is compiled: add `pydantic-core --python-version 3.12 --platform manylinux2014_x86_64`
# when the GPU machine lacks it.) lightly-train itself needs Lightning, OpenCV, transformers, ... (far
# over what a session carries); where it does not import, the peers run uses lightly 1.6's blocks.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine; writes $OUT (or ./bench-out)
#   DRY_RUN=1 bash benchmarks/gpu_check.sh  # on a CPU machine: checks the script starts, tiny sizes
#   ONLY=peers DRY_RUN=1 bash benchmarks/gpu_check.sh   # one part: tests, loader, throughput or peers
# The whole script stays within BUDGET_S seconds (default 570, one H100 session of 10 minutes): a part
# that would start past it is skipped and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S="${BUDGET_S:-570}"
want() { [ -z "${ONLY:-}" ] || [ "${ONLY}" = "$1" ]; }
left() { echo $(( BUDGET_S - SECONDS )); }
cap() {  # seconds a part may take: its own cap, or what is left of the budget; 0 = skip it
  local l; l=$(left)
  if [ "$l" -lt 45 ]; then echo 0; elif [ "$l" -lt "$1" ]; then echo "$l"; else echo "$1"; fi
}
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

if want tests; then
echo "== GPU tests"
"$PY" -m pytest -q -m gpu tests --ignore=tests/data/test_gpu_views.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"

echo "== data.decode=gpu: tests (device path vs CPU views, pre-training steps)"
"$PY" -m pytest -q -rs -m gpu tests/data/test_gpu_views.py 2>&1 | tail -5 | tee "$OUT/gpu_views_tests.txt"
fi

# Loader: views delivered to the GPU, data.decode=cpu vs gpu (same workers), and the one-core rates of
# this machine's (server) cores, for docs/performance.md "Feeding one H100".
if [ "${DRY_RUN:-0}" = "1" ]; then
  LOADER="--n 64 --epochs 1 --workers 1"; PERCORE="--n 64 --repeats 1 --workers 1"
else
  LOADER="--n 2000 --epochs 2 --workers 4"; PERCORE="--n 500 --repeats 3 --workers 8"
fi
loader_step() {  # name, args...
  local name=$1; shift
  local t; t=$(cap 150)
  echo "== loader: $name"
  [ "$t" = 0 ] && { echo "$name: skipped (time budget of ${BUDGET_S}s spent)"; return 1; }
  if OMP_NUM_THREADS=1 timeout "$t" "$PY" benchmarks/loader.py "$@" > "$OUT/$name.log" 2>&1; then
    grep -E "img/s|ratio|cores" "$OUT/$name.log" | tail -8
  else
    echo "$name: failed (see $OUT/$name.log)"; tail -3 "$OUT/$name.log"
  fi
}
if want loader; then
  loader_step loader_decode --decode both --device cuda $LOADER
  loader_step loader_per_core --per-core $PERCORE
fi

# Peers (issue 30, docs/performance.md "Against the peers"): midol's pre-training step (M-IDoL, no_moe)
# against lightly-train's DINO and SimCLR on the same encoder, views and batch, bf16, eager (with a
# profile of one step each) and torch.compile'd on both sides. Where lightly-train does not import, the
# same steps from lightly 1.6's blocks (ly-*); where neither does, the part says which wheels are missing.
peers_step() {  # name, cap seconds, args...
  local name=$1; shift
  local t; t=$(cap "$1"); shift
  echo "== peers: $name"
  [ "$t" = 0 ] && { echo "$name: skipped (time budget of ${BUDGET_S}s spent)"; return 1; }
  if LIGHTLY_TRAIN_EVENTS_DISABLED=1 timeout "$t" "$PY" benchmarks/peers_pretrain.py "$@" \
       --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1; then
    grep -E "img/s|ratio|^  profile|^device|^peer" "$OUT/$name.log" | cut -c1-220
  else
    echo "$name: failed (see $OUT/$name.log)"; tail -3 "$OUT/$name.log"
  fi
}
if want peers; then
  if "$PY" -c "import lightly_train" 2>/dev/null; then
    PEERS="midol,no_moe,lt-dino,lt-simclr"; PEERS_C="midol,lt-dino"
  elif "$PY" -c "import lightly.loss, tqdm" 2>/dev/null; then
    PEERS="midol,no_moe,ly-dino,ly-simclr"; PEERS_C="midol,ly-dino"
  else
    PEERS=""; echo "== peers: skipped: neither lightly-train nor lightly 1.6 imports (wheels for .whl/: lightly==1.6.0, tqdm)"
  fi
  if [ "${DRY_RUN:-0}" = "1" ]; then
    PEER_ARGS="--dry-run --precision bf16"
  else
    PEER_ARGS="--recipe recipes/base.yaml --batch 128 --precision bf16 --reps 5 --steps 3 --warmup 3"
  fi
  if [ -n "$PEERS" ]; then
    peers_step peers_eager 150 $PEER_ARGS --variants "$PEERS" --profile
    peers_step peers_compile 240 $PEER_ARGS --variants "$PEERS_C" --compile
  fi
fi

if want throughput; then
echo "== throughput: $RECIPE"
results=()
run() {  # name, env, args...
  local name=$1; shift
  local env=$1; shift
  local t; t=$(cap 300)
  [ "$t" = 0 ] && { echo "$name: skipped (time budget of ${BUDGET_S}s spent)"; return 1; }
  if env $env timeout "$t" "$PY" benchmarks/pretrain_step.py --recipe "$RECIPE" $EXTRA --json "$OUT/$name.json" "$@" \
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
fi
echo "== done in ${SECONDS}s (budget ${BUDGET_S}s)"
