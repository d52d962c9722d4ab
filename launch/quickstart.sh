#!/usr/bin/env bash
# CPU quickstart of the whole pipeline (creates .venv and installs on first use): a tiny reference
# policy trained from scratch, rollouts, weights, weighted SFT, multi@k evaluation, report; then the
# baselines (sft, sft_rollouts, rft, online_rl) on the same reference and task. Time on 2 CPU cores, from
# launch/tune.py's base runs: reference + DRIFT 7 minutes on one machine, 16 on a 2-core AMD EPYC (AVX2,
# 2 GHz); online RL alone gets 4x DRIFT's wall time, so the whole comparison takes about 1 to 1.5 hours.
# Usage: bash launch/quickstart.sh [WORKDIR] [--config.x=y ...]     (a rerun resumes from the cached stages)
#        bash launch/quickstart.sh runs/q100 --config.seed=100       (a seed the README's study did not use)
# Then, for the full comparison, where the run lands against the README's study (docs/results/study): each
# method and DRIFT's paired differences against the 95% prediction intervals (drift_jax/evaluation/replicate.py).
#        CONFIG=configs/quickstart_drift.py bash launch/quickstart.sh    (reference and DRIFT only)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements.lock
WORKDIR="${1:-$ROOT/runs/quickstart}"
shift || true
python -m drift_jax.main --config="${CONFIG:-configs/quickstart.py}" --workdir="$WORKDIR" "$@"
echo
sed -n '/^| method | multi@1/,/^$/p' "$WORKDIR/report.md" | head -9
echo "Full report: $WORKDIR/report.md, $WORKDIR/report.png, $WORKDIR/results.json"
STUDY="$ROOT/docs/results/study/study.json"
if [ -z "${CONFIG:-}" ] && [ -f "$STUDY" ]; then
  echo
  python -m drift_jax.evaluation.replicate "$STUDY" "$WORKDIR" || true  # exit 1: some value outside (see its table)
fi
