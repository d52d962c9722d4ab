"""Entry point: `python -m drift_jax.main --config=configs/quickstart.py --workdir=DIR [--config.x=y]`.

Only flags live here; the stages are in `pipeline.py` so Colab can import and run them directly.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from drift_jax import pipeline, stages, validate
from drift_jax.preflight.analysis import DoesNotFit
from drift_jax.runtime import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<experiment>.py[:args]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where every stage writes; a rerun resumes", required=True)
_ON_CHANGE = flags.DEFINE_enum("on_change", "error", stages.ON_CHANGE,
                                "when the config differs from the workdir's earlier run: stop with what changed "
                                "(error) or recompute the stages it invalidates and everything downstream")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "detect the cluster (TPU pod, SLURM) for jax.distributed")
_PRECOMPILE = flags.DEFINE_bool("precompile", True, "compile every stage on the real devices before the first "
                                 "one starts, so a stage that does not fit stops the run in minutes")


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.WARNING)  # orbax and absl are chatty at INFO
    logging.getLogger("drift_jax").setLevel(logging.INFO)
    distributed.initialize(auto=_MULTIHOST.value)
    try:
        pipeline.run(_CONFIG.value, _WORKDIR.value, precompile=_PRECOMPILE.value, on_change=_ON_CHANGE.value)
    except (validate.ConfigError, stages.StaleStageError, stages.Preempted, DoesNotFit) as e:  # the message says it all
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
