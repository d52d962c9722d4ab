"""`python -m drift_jax.preflight --config=configs/X.py --topology=v5e:4x8 [--config.a.b=v] [--json]`.

Checks the config first as `main` does (`validate`; files this machine lacks, such as the weights, are
listed but do not stop it), then compiles every stage of the config for the named slice on this machine's
CPU (device descriptions from libtpu; JAX_PLATFORMS=cpu keeps it from claiming a device), prints one row
per stage (or one JSON object) and exits 1 when a stage does not fit, naming it, the memory and the knobs.
"""

import json
import logging
import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags
from ml_collections import config_flags

from drift_jax import validate
from drift_jax.preflight import analysis, chips, report
from drift_jax.preflight.programs import Shapes

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<experiment>.py[:args]", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "the target slice, e.g. v5e:4x8, v5p:2x2x2, h100:8", required=True)
_JSON = flags.DEFINE_bool("json", False, "one JSON object on stdout instead of the table")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 0, "the longest prompt; 0: measured on the task data when it "
                               f"is here, else {Shapes().prompt_tokens}")
_HEADROOM = flags.DEFINE_float("headroom", 0.0, "fail unless every stage leaves this share of HBM free")


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.WARNING)
    cfg = _CONFIG.value
    num_devices = math.prod(chips.parse_topology(_TOPOLOGY.value)[1])
    problems, absent = report.config_problems(cfg, num_devices)
    if absent:  # the run's machine must have them; sizing the stages does not
        print("not checked here (files the run reads, missing or unusable on this machine):\n" + "\n".join(f"  - {p}" for p in absent), file=sys.stderr)
    if problems:  # as main stops
        sys.exit(f"error: {validate.ConfigError(problems)}")
    shapes = report.data_shapes(cfg)
    if _PROMPT.value:
        shapes = Shapes(_PROMPT.value, shapes.feedback_tokens, shapes.stop_tokens, shapes.pad_id)
    result = report.run(cfg, topology=_TOPOLOGY.value, shapes=shapes)
    print(json.dumps(result.json(), indent=1) if _JSON.value else result.table())
    try:
        analysis.check(result.stages, result.topology, _HEADROOM.value)
    except analysis.DoesNotFit as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
