"""`python -m drift_jax.preflight --config=configs/X.py --topology=v5e:4x8 [--config.a.b=v] [--json]`.

Compiles every stage of the config for the named slice on this machine's CPU (device descriptions
from libtpu; JAX_PLATFORMS=cpu keeps it from claiming a device), prints one row per stage (or one
JSON object) and exits 1 when a stage does not fit, naming it, the memory and the knobs.
"""

import json
import logging
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from drift_jax.preflight import analysis, report  # noqa: E402
from drift_jax.preflight.programs import Shapes  # noqa: E402

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
