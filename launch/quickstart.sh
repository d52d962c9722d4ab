#!/usr/bin/env bash
# CPU quickstart of the whole pipeline (creates .venv and installs on first use).
# Usage: bash launch/quickstart.sh [WORKDIR] [--config.x=y ...]
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements.txt
WORKDIR="${1:-$ROOT/runs/quickstart}"
shift || true
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=true"
if [ -f drift_jax/main.py ] && [ -f configs/quickstart.py ]; then
  exec python -m drift_jax.main --config=configs/quickstart.py --workdir="$WORKDIR" "$@"
fi
# Until the end-to-end pipeline lands: exercise what exists (model <-> HF bridge on a random model).
python - "$WORKDIR" <<'PY'
import sys, time, jax, numpy as np
from drift_jax import hf, model
workdir = sys.argv[1]
cfg = model.ModelConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=32, mlp_dim=256, qkv_bias=True)
params = model.init_params(cfg, jax.random.key(0))
hf.save_hf(cfg, params, f"{workdir}/random_qwen2")
cfg2, params2 = hf.load_hf(f"{workdir}/random_qwen2")
tokens = np.random.RandomState(0).randint(0, 512, (4, 64))
t0 = time.time()
out = model.logits(params2, cfg2, tokens)
print(f"model: exported and reloaded a random Qwen2 ({cfg.num_params:,} params) in {workdir}/random_qwen2; "
      f"logits {tuple(out.shape)} in {time.time() - t0:.2f}s")
print("not built yet: rollouts, weighted SFT, evaluation and the report (see the open issues)")
PY
