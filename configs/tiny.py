"""A smoke-test run in a minute or two on CPU: every stage (reference, rollouts, weights, SFT, eval, online RL)
at toy sizes, on 8 devices laid out data=4 x tensor=2 (one process of 8 fake CPU devices, or two of 4).

    bash launch/local_multihost.sh 2 configs/tiny.py /tmp/tiny-2x4
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m drift_jax.main --config=configs/tiny.py --workdir=/tmp/tiny-1x8

Its numbers mean nothing (the reference is trained for seconds); it checks that a run goes through, and the
multi-host tests compare its results across process layouts. Online RL runs `max_iterations` iterations
(its budget is set far above what they take), so its result does not depend on wall time.
"""

import ml_collections

from configs import _args, quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = quickstart.get_config()
    c.methods = ("reference", "drift", "online_rl")
    c.max_turns = 2
    c.mesh = dict(data=4, fsdp=1, tensor=2)
    c.model.scratch = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    c.task.knobs.num_operands = 2  # the demonstrations' task: the reference solves some of it
    c.reference.num_demos = 512
    c.reference.train.update(lr=1e-2, epochs=2, batch_size=8, seq_len=64, progress_bar=False)
    c.rollout.update(num_problems=6, num_samples=2, rows_per_batch=8, problems_per_shard=2)
    c.train.update(epochs=1, batch_size=4, seq_len=96, progress_bar=False)
    c.budgets = dict(drift=0, sft_rollouts=0, rft=0, sft=0)  # train.epochs for every method
    c.eval.update(num_problems=16, rows_per_batch=4)
    c.online_rl.update(problems_per_iteration=4, samples_per_problem=2, eval_every=1, max_iterations=2,
                       budget_ratio=1e6)
    c.online_rl.train.update(batch_size=4, seq_len=96)
    c.drift.all_fail = "keep"  # a barely trained policy solves little: "drop" could leave no examples
    return _args.apply(c, arg)
