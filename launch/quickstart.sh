#!/usr/bin/env bash
# CPU quickstart of the whole pipeline (creates .venv and installs on first use): a tiny reference
# policy trained from scratch, rollouts, weights, weighted SFT, multi@k evaluation, report.
# Usage: bash launch/quickstart.sh [WORKDIR] [--config.x=y ...]     (a rerun resumes from the cached stages)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements.txt
WORKDIR="${1:-$ROOT/runs/quickstart}"
shift || true
python -m drift_jax.main --config=configs/quickstart.py --workdir="$WORKDIR" "$@"
echo
sed -n '/^| method | multi@1/,/^$/p' "$WORKDIR/report.md" | head -6
echo "Full report: $WORKDIR/report.md, $WORKDIR/report.png, $WORKDIR/results.json"
