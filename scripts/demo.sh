#!/usr/bin/env bash
# The whole midol pipeline on the embedded synthetic data (what `make demo` runs):
#   synth -> ingest (5 modalities) -> shard -> verify -> pretrain (smoke) -> probe 5 tasks x
#   {pre-trained, random init} -> report, then a check that pre-training beat random init: the paired
#   difference of the primary metrics (same test images, patients resampled) must have a 95% CI above 0.
# Re-running is cheap: every stage reuses what is already there (ingest is incremental,
# shard completes a set, pretrain resumes, embeddings are cached).
set -euo pipefail
D="${1:-demo}"
MODS=(xray fundus oct dermoscopy pathology)
export MIDOL_CACHE_DIR="$D/cache"
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
start=$(date +%s)

say "1/7 synth: procedural images in five public-dataset layouts -> $D/raw"
if [ -f "$D/raw/synth.json" ]; then echo "reusing $D/raw" >&2; else midol synth "$D/raw" --seed 0 --per-class 200 --corrupt 5 --workers 2; fi

say "2/7 ingest: one manifest per modality (damaged files become rejected rows)"
for m in "${MODS[@]}"; do
  midol ingest "$D/raw/$m" --modality "$m" --out "$D/manifests/$m.parquet" --workers 2 >/dev/null
done

say "3/7 shard: all modalities -> WebDataset shards, then verify"
midol shard "$D"/manifests/*.parquet --out "$D/shards" --max-side 96 --workers 2
midol shard --verify "$D/shards"
if [ "${DEMO_DATA_ONLY:-0}" = 1 ]; then exit 0; fi  # scripts/study.sh needs only the data

say "4/7 pretrain: recipes/smoke.yaml (tiny ResNet, 64 px) on 2 CPU cores"
midol pretrain recipes/smoke.yaml "data.shards=$D/shards" --out "$D/runs/smoke" --resume auto

say "5/7 embed: representation metrics and t-SNE maps"
midol embed --weights "$D/runs/smoke" --data "$D/shards" --out "$D/emb/smoke.parquet" --plot "$D/plots/smoke"

say "6/7 probe: five synth tasks, pre-trained vs the same encoder at random init"
for m in "${MODS[@]}"; do
  for w in "$D/runs/smoke" "random:$D/runs/smoke"; do
    midol probe --task "synth-$m" --weights "$w" --data "$D/manifests/$m.parquet" --out "$D/results" \
      --fractions 0.1,1.0 --seeds 3 --n-boot 500
  done
done

say "7/7 report"
midol report "$D/results" | tee "$D/report.md"
midol report "$D/results" --format json > "$D/report.json"

python scripts/demo_check.py "$D/results" smoke random-smoke
echo "demo finished in $(( $(date +%s) - start )) s; outputs under $D/" >&2
