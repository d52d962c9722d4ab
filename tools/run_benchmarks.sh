#!/usr/bin/env bash
# Runs the CPU benchmarks and keeps each one's JSON line, with the commit and machine it ran on, in
# docs/results/benchmarks/<name>.json; the README's performance table is generated from those files
# (`python tools/readme_results.py --bench docs/results/benchmarks`). Run it on a quiet machine: the
# figures are ratios measured side by side, but a loaded machine still widens their spread.
# Usage: bash tools/run_benchmarks.sh [rollouts] [sampler] [train_step] [preflight_agreement]   (default: all;
#        preflight_agreement compiles for TPUs through libtpu on the CPU, about 13 minutes on 2 cores)
source "$(dirname "${BASH_SOURCE[0]}")/../launch/_venv.sh"
ensure_venv requirements-test.lock   # the sampler and train-step benchmarks compare against torch/transformers
OUT="${OUT:-$ROOT/docs/results/benchmarks}"
mkdir -p "$OUT"
names=("$@")
if [ "${#names[@]}" -eq 0 ]; then names=(rollouts sampler train_step preflight_agreement); fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # preflight_agreement imports configs/
for name in "${names[@]}"; do
  echo "=== benchmarks/$name.py"
  start=$(date +%s)
  line="$(JAX_PLATFORMS=cpu python "benchmarks/$name.py" | tail -n 1)"
  seconds=$(( $(date +%s) - start ))
  RESULT="$line" SECONDS_TAKEN="$seconds" NAME="$name" python - "$OUT/$name.json" <<'EOF'
import json, os, sys
sys.path.insert(0, "tools")
import keep_run  # the commit, code trees, lock and machine, as kept runs record them
record = {"benchmark": os.environ["NAME"], "command": f"python benchmarks/{os.environ['NAME']}.py",
          "result": json.loads(os.environ["RESULT"]), "seconds": int(os.environ["SECONDS_TAKEN"]),
          "provenance": keep_run.provenance()}
with open(sys.argv[1], "w") as f:
    json.dump(record, f, indent=2)
print(json.dumps(record["result"]))
EOF
done
