#!/usr/bin/env bash
# The M-IDoL claim tested on the demo data (what `make study` runs): the demo's synth -> ingest ->
# shard (reused when present), then every variant x 3 seeds of recipes/smoke.yaml pre-trained, probed
# on the five synth tasks and compared with midol by paired differences; the supervised ceiling
# (recipes/finetune_smoke.yaml from random init) and fine-tuning from pre-trained beside them.
# Outputs: $D/study/study.md (also printed), study.json, study.png. Re-running reuses every run.
set -euo pipefail
D="${1:-demo}"
SEEDS="${STUDY_SEEDS:-3}"
export MIDOL_CACHE_DIR="$D/cache"
start=$(date +%s)
DEMO_DATA_ONLY=1 bash scripts/demo.sh "$D"
TASK_DATA=()  # probe and fine-tune each task on its modality's manifest (fine-tuning reads manifests)
for m in xray fundus oct dermoscopy pathology; do TASK_DATA+=(--task-data "synth-$m=$D/manifests/$m.parquet"); done
midol study recipes/smoke.yaml --data "$D/shards" \
  --tasks synth-xray,synth-fundus,synth-oct,synth-dermoscopy,synth-pathology "${TASK_DATA[@]}" \
  --variants midol,no_moe,no_inter,no_intra,other_reading,random --seeds "$SEEDS" \
  --finetune recipes/finetune_smoke.yaml --finetune-seeds "${STUDY_FINETUNE_SEEDS:-1}" --out "$D/study"
echo "study finished in $(( $(date +%s) - start )) s; outputs under $D/study/" >&2
