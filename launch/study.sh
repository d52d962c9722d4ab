#!/usr/bin/env bash
# Multi-seed study of the quickstart: runs the config with seeds FIRST..FIRST+SEEDS-1 into WORKDIR/seed-N
# (the seed changes the reference, the rollouts, the data order and the sampled eval problems), then writes
# WORKDIR/study.json and study.md: mean and 95% interval per method, paired tests between methods
# (drift_jax/evaluation/study.py). A rerun resumes every seed from its cached stages.
# Usage: bash launch/study.sh [WORKDIR] [--config.x=y ...]          (SEEDS=3, FIRST=0: runs/study/seed-{0,1,2})
#        SEEDS=5 FIRST=100 bash launch/study.sh runs/study-unseen      (seeds the README's numbers never saw)
#        CONFIG=configs/quickstart_drift.py bash launch/study.sh       (reference and DRIFT only)
#        KEEP=docs/results/study bash launch/study.sh                   (a study that spans sessions or machines)
# KEEP: each finished seed's record (results, per-problem evaluations, stage markers, config, provenance;
# tools/keep_run.py) is copied to KEEP/seed-N as soon as it ends, a seed already kept there is not run
# again, and study.json/study.md are written to KEEP from the kept records, after checking that they were
# made by the same code and config. Commit KEEP after each seed: a workdir does not outlive its machine.
# Then: python tools/readme_results.py WORKDIR/study.json   (the README's results block, from study.json)
# New seeds against a kept study's prediction intervals (the README's unseen-seed check):
#   python -m drift_jax.evaluation.replicate docs/results/study/study.json KEEP/seed-100 --out KEEP
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements.lock
WORKDIR="${1:-$ROOT/runs/study}"
shift || true
SEEDS="${SEEDS:-3}"
FIRST="${FIRST:-0}"
KEEP="${KEEP:-}"
dirs=()
for ((seed = FIRST; seed < FIRST + SEEDS; seed++)); do
  if [ -n "$KEEP" ] && [ -f "$KEEP/seed-$seed/results.json" ]; then
    echo "=== seed $seed: kept in $KEEP/seed-$seed, not run again"
    dirs+=("$KEEP/seed-$seed")
    continue
  fi
  echo "=== seed $seed -> $WORKDIR/seed-$seed"
  start=$(date +%s)
  python -m drift_jax.main --config="${CONFIG:-configs/quickstart.py}" --workdir="$WORKDIR/seed-$seed" \
    --config.seed="$seed" "$@"
  echo "=== seed $seed: $(( $(date +%s) - start )) s"
  if [ -n "$KEEP" ]; then
    python tools/keep_run.py keep "$WORKDIR/seed-$seed" "$KEEP/seed-$seed"
    dirs+=("$KEEP/seed-$seed")
  else
    dirs+=("$WORKDIR/seed-$seed")
  fi
done
OUT="$WORKDIR"
if [ -n "$KEEP" ]; then
  python tools/keep_run.py check "${dirs[@]}"
  OUT="$KEEP"
fi
python -m drift_jax.evaluation.study "$OUT" "${dirs[@]}"
echo "Study: $OUT/study.md, $OUT/study.json"
