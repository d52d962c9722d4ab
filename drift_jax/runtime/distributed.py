"""Multi-host start-up: `jax.distributed.initialize` from explicit arguments or the environment.

Environment (used when an argument is None): DRIFT_COORDINATOR ("host:port"), DRIFT_NUM_PROCESSES,
DRIFT_PROCESS_ID. With none of them set, jax's own cluster detection (SLURM, TPU pods, ...) is used if
`auto=True`, otherwise this is a no-op for single-process runs.
"""

from __future__ import annotations

import os

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Returns True if jax.distributed was initialised. Call before any other jax call."""
    coordinator_address = coordinator_address or os.environ.get("DRIFT_COORDINATOR")
    if num_processes is None and "DRIFT_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["DRIFT_NUM_PROCESSES"])
    if process_id is None and "DRIFT_PROCESS_ID" in os.environ:
        process_id = int(os.environ["DRIFT_PROCESS_ID"])
    if coordinator_address is None and not auto:
        return False
    if num_processes == 1:
        return False
    # CPU processes need an explicit cross-process collectives backend (all-reduce over TCP).
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True
