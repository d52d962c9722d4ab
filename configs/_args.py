"""The `arg` of `--config=configs/X.py:arg`: comma-separated dotted overrides, e.g. `drift.beta=0.3,seed=1`."""

import ast

import ml_collections


def apply(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    for item in filter(None, (arg or "").split(",")):
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare string
        node[leaf] = parsed
    return c
