"""CPU quickstart: the synthetic modular-arithmetic task, a tiny reference policy trained from scratch, DRIFT.

    python -m drift_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
    (or: bash launch/quickstart.sh)

Should produce runs/quickstart/{results.json, report.md, report.png} in about 5-10 minutes on 2 CPU
cores, with DRIFT's held-out multi@5 well above the reference policy's (README: measured numbers).
"""

import ml_collections

from configs import _args

from drift_jax.envs import DEFAULT_FEEDBACK


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.methods = ("reference", "drift")
    c.max_turns = 5
    c.max_new_tokens = 8  # "<answer>3</answer>" + end of turn is 4 tokens
    c.feedback = DEFAULT_FEEDBACK
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.task = dict(name="synthetic", data_dir="", manual_dir="",
                  knobs=dict(num_operands=2, max_digits=2, modulus=7, ops=("+",)))
    c.model = dict(hf_path="", tokenizer_path="", param_dtype="", compute_dtype="", remat="none",
                   scratch=dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=384))
    # The reference policy: trained from scratch on single-turn demonstrations, briefly, so it is
    # imperfect by design (it solves some problems, and has never seen the feedback turn).
    # task: where the demonstrations come from (name "": c.task); a related task, as for an instruct model.
    c.reference = dict(num_demos=4000, max_wrong_turns=0, task=dict(name="", data_dir="", manual_dir="", knobs=dict(
        num_operands=2, max_digits=2, modulus=7, ops=("+",))),
                       train=dict(lr=3e-3, warmup_ratio=0.05, schedule="cosine", weight_decay=0.0, clip_norm=1.0,
                                  batch_size=32, seq_len=128, epochs=2, save_every=1000, progress_bar=True))
    c.rollout = dict(num_problems=512, num_samples=8, temperature=1.0, top_k=0, top_p=1.0,
                     rows_per_batch=512, problems_per_shard=128)
    c.returns = dict(gamma=0.9, format_penalty=-0.1, repeat_penalty=0.5)
    c.drift = dict(beta=0.1, normalize="group", all_fail="keep", clip=0.0, supervision="terminal")
    c.train = dict(lr=1e-3, warmup_ratio=0.1, schedule="constant", weight_decay=0.1, clip_norm=1.0,
                   batch_size=32, seq_len=128, epochs=2, save_every=1000, progress_bar=True)
    c.eval = dict(task=dict(name=""), split="test", num_problems=500, rows_per_batch=500)  # task: as c.task
    return _args.apply(c, arg)
