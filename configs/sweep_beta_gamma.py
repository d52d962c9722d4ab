"""A beta x gamma sweep over any base experiment; expanded and launched by launch/sweep.py.

    python launch/sweep.py --sweep=configs/sweep_beta_gamma.py --base=configs/quickstart.py --workdir=runs/sweep
    (add --dry_run to print the commands)

Each point reuses the base config and overrides `drift.beta` and `returns.gamma` (the paper's ablation
favours beta = 0.1 and a small gamma such as 0.3). Points share nothing on disk: each has its own workdir.
"""


def get_sweep() -> list[dict[str, object]]:
    return [{"drift.beta": beta, "returns.gamma": gamma} for beta in (0.05, 0.1, 0.3, 1.0) for gamma in (0.3, 0.6, 0.9)]
