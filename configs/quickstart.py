"""CPU quickstart: a tiny reference policy trained from scratch on a related task, then DRIFT on the target.

    bash launch/quickstart.sh                  # = python -m drift_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Task: `max a b c d` (the largest of four 2-digit numbers), 5 turns with "Incorrect. Please think again."
Reference: a 2-layer model trained from scratch for about 80 seconds (2 CPU cores) on demonstrations of the
easier `max a b` (half of them multi-turn, with wrong attempts that are numbers not in the list, so it knows the chat
format of feedback turns but was never taught to use the feedback), as an instruct model is trained on
data other than the task DRIFT is then run on. DRIFT: 512 training problems x 16 samples at temperature 1,
weights exp(R/beta)/Z per problem, weighted SFT on the last turn. Produces runs/quickstart/{results.json,
report.md, report.png}. Tuned values (beta, all_fail, each method's epochs) were chosen on the dev split
by launch/tune.py (docs/results/tune.md).
"""

import ml_collections

from configs import _args
from drift_jax.envs import DEFAULT_FEEDBACK


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Every method of the comparison; configs/quickstart_drift.py runs the reference and DRIFT only.
    c.methods = ("reference", "drift", "sft_rollouts", "rft", "sft", "online_rl")
    c.max_turns = 5
    c.max_new_tokens = 8  # "<answer>85</answer>" + end of turn is 5 tokens
    c.feedback = DEFAULT_FEEDBACK
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.task = dict(name="synthetic", data_dir="", manual_dir="",
                  knobs=dict(num_operands=4, max_digits=2, modulus=0, ops=("max",)))  # modulus 0: none
    c.model = dict(preset="", hf_path="", tokenizer_path="", param_dtype="", compute_dtype="", remat="none",
                   scratch=dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=384))
    # task: where the demonstrations come from (name "": c.task).
    c.reference = dict(num_demos=4000, max_wrong_turns=1, task=dict(name="synthetic", data_dir="", manual_dir="",
                                                                     knobs=dict(num_operands=2, max_digits=2, modulus=0, ops=("max",))),
                       train=dict(lr=3e-3, warmup_ratio=0.05, schedule="cosine", weight_decay=0.0, clip_norm=1.0,
                                  batch_size=8, seq_len=128, epochs=4, save_every=1000, progress_bar=True))
    # engine: the rollout engine's fixed shapes (rows = rows_per_batch): decode chunk steps, prompt
    # buckets (one prefill compile each; prompts here are ~30 tokens), cache length (0: the longest
    # episode from the largest bucket used fits), prompts prefilled together (each into its K samples' rows).
    c.rollout = dict(num_problems=512, num_samples=16, temperature=1.0, top_k=0, top_p=1.0,
                     rows_per_batch=512, problems_per_shard=128,
                     engine=dict(chunk_steps=16, prompt_buckets=(32, 64), cache_length=0, prefill_rows=4))
    c.returns = dict(gamma=0.9, format_penalty=-0.1, repeat_penalty=0.5)
    # beta and all_fail: the best on the dev split (docs/results/tune.md): beta 0.03 (0.1, 0.3, 1.0 below it),
    # all_fail="batch" (a third of the groups have no success with this weak reference: "batch" normalises
    # them against the whole batch, so their mass is small; "drop", 0.2 points below, drops them; "keep",
    # the reference code's, fits their failed attempts with full mass and was 5 points below).
    c.drift = dict(beta=0.03, normalize="group", all_fail="batch", clip=0.0, supervision="terminal")
    c.train = dict(lr=3e-4, warmup_ratio=0.1, schedule="constant", weight_decay=0.1, clip_norm=1.0,
                   batch_size=16, seq_len=128, epochs=3, save_every=1000, progress_bar=True)
    # Each offline method's epochs (0: train.epochs), the best of each on the dev split over 1-12 epochs
    # (launch/tune.py; docs/results/tune.md).
    c.budgets = dict(drift=8, sft_rollouts=8, rft=5, sft=8)
    # Online multi-turn RL: 32 problems x 8 samples per iteration from the current policy, one on-policy
    # step each; budget 4x DRIFT's wall time (or budget_seconds when DRIFT is not run), extended up to 2x
    # while its multi@5 on the dev split still rises. kl_coef and lr: chosen on dev by
    # `python launch/tune.py --groups=online_rl` (5 points of 499 iterations, seed 0; docs/results/tune.md).
    c.online_rl = dict(budget_ratio=4.0, budget_seconds=300.0, extend_while_rising=2.0, max_iterations=0,
                       problems_per_iteration=32, samples_per_problem=8, kl_coef=0.01, scale_by_std=False,
                       eval_every=10,
                       train=dict(lr=1e-3, warmup_ratio=0.0, warmup_steps=5, schedule="constant", weight_decay=0.0,
                                  clip_norm=1.0, batch_size=128, seq_len=256, loss_reduction="token_sum",
                                  progress_bar=False))
    c.eval = dict(task=dict(name=""), split="test", num_problems=1000, rows_per_batch=500,  # task: as c.task
                  engine=dict(chunk_steps=16, prompt_buckets=(32, 64), cache_length=0, prefill_rows=32))
    return _args.apply(c, arg)
