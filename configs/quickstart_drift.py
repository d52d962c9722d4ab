"""The quickstart for a quick look: the reference and DRIFT only (about 2 minutes on 2 CPU cores)."""

import ml_collections

from configs import _args, quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = quickstart.get_config()
    c.methods = ("reference", "drift")
    return _args.apply(c, arg)
