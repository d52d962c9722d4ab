#!/usr/bin/env bash
# Multi-seed study of the quickstart: runs the config with seeds FIRST..FIRST+SEEDS-1 into WORKDIR/seed-N
# (the seed changes the reference, the rollouts, the data order and the sampled eval problems), then writes
# WORKDIR/study.json and study.md: mean and 95% interval per method, paired tests between methods
# (drift_jax/evaluation/study.py). A rerun resumes every seed from its cached stages.
# Usage: bash launch/study.sh [WORKDIR] [--config.x=y ...]          (SEEDS=3, FIRST=0: runs/study/seed-{0,1,2})
#        SEEDS=5 FIRST=100 bash launch/study.sh runs/study-unseen      (seeds the README's numbers never saw)
#        CONFIG=configs/quickstart_drift.py bash launch/study.sh       (reference and DRIFT only)
# Then: python tools/readme_results.py WORKDIR/study.json   (the README's results block, from study.json)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements.lock
WORKDIR="${1:-$ROOT/runs/study}"
shift || true
SEEDS="${SEEDS:-3}"
FIRST="${FIRST:-0}"
dirs=()
for ((seed = FIRST; seed < FIRST + SEEDS; seed++)); do
  echo "=== seed $seed -> $WORKDIR/seed-$seed"
  start=$(date +%s)
  python -m drift_jax.main --config="${CONFIG:-configs/quickstart.py}" --workdir="$WORKDIR/seed-$seed" \
    --config.seed="$seed" "$@"
  echo "=== seed $seed: $(( $(date +%s) - start )) s"
  dirs+=("$WORKDIR/seed-$seed")
done
python -m drift_jax.evaluation.study "$WORKDIR" "${dirs[@]}"
echo "Study: $WORKDIR/study.md, $WORKDIR/study.json"
