"""Host side of multi-host runs: whole arrays on every host, one writer for shared files, barriers.

Every function here is collective when `jax.process_count() > 1`: every process calls it, in the same
order, or the job hangs. With one process they are plain `device_get` / no-ops.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_writer() -> bool:
    """Whether this process writes the files every process would write alike (exports, reports, markers)."""
    return jax.process_index() == 0


def to_host(x: jax.Array) -> np.ndarray:
    """The whole global array as numpy on every host; shards other hosts hold arrive by an all-gather."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier of this name (what one wrote, all may now read)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
