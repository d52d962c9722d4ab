"""The quickstart for a quick look: the reference and DRIFT only (about 7 minutes on 2 CPU cores).

Measured in launch/tune.py's base run (dev split, seed 0): reference 53 s, rollouts 39 s, DRIFT's 8 epochs
327 s, plus the evaluations.
"""

import ml_collections

from configs import _args, quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = quickstart.get_config()
    c.methods = ("reference", "drift")
    return _args.apply(c, arg)
