"""Host side of multi-host runs: whole arrays on every host, one writer for shared files, barriers.

Every function here is collective when `jax.process_count() > 1`: every process calls it, in the same
order, or the job hangs. With one process they are plain `device_get` / no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import msgpack
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


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


# ----------------------------------------------------------------------------- per-host work
# Rollouts and evaluation run on each host's own devices (`local_mesh`): a host decodes its share of
# the rows with no cross-host traffic, and hosts with unequal work never wait on each other inside a
# decode loop. What they produce is gathered afterwards (`allgather_objects`).


def my_range(n: int) -> range:
    """This process's contiguous share of n items (shares differ by at most one item)."""
    p, i = jax.process_count(), jax.process_index()
    return range(i * n // p, (i + 1) * n // p)


def local_mesh(mesh: Mesh) -> Mesh:
    """The mesh of this host's devices for per-host work: `tensor` as in `mesh`, every other device on
    `data`. With one process it is `mesh` itself (so single-host runs are unchanged)."""
    if jax.process_count() == 1:
        return mesh
    local = jax.local_devices()
    tensor = mesh.shape.get("tensor", 1)
    if len(local) % tensor:
        raise ValueError(f"mesh.tensor={tensor} does not divide this host's {len(local)} devices: rollouts and "
                         "evaluation run per host, so the tensor axis must fit inside one host")
    names = tuple(mesh.axis_names)
    dims = tuple(len(local) // tensor if n == "data" else tensor if n == "tensor" else 1 for n in names)
    return jax.make_mesh(dims, names, devices=local, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def localize(tree: Any, mesh: Mesh | None) -> Any:
    """A (possibly multi-host) array tree as arrays on this host's `mesh`, replicated there (the sampler
    reshards them to its own layout). One leaf at a time, so host memory holds one whole leaf at most."""
    if jax.process_count() == 1 or mesh is None:
        return tree
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(to_host(x), replicated), tree)


def allgather_objects(items: Sequence[Any]) -> list[Any]:
    """Every process's `items` (msgpack-able), concatenated in process order, on every process."""
    if jax.process_count() == 1:
        return list(items)
    blob = np.frombuffer(msgpack.packb(list(items), use_bin_type=True), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([blob.size], np.int64))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    gathered = multihost_utils.process_allgather(padded)  # [P, max size]
    out: list[Any] = []
    for row, size in zip(gathered, np.ravel(sizes)):
        out += msgpack.unpackb(row[: int(size)].tobytes(), raw=False)
    return out


def agree(value: float) -> float:
    """Process 0's `value` on every process: decisions taken from clocks (budgets, curve points) must be
    the same everywhere, or the processes part ways at the next collective."""
    if jax.process_count() == 1:
        return value
    return float(multihost_utils.broadcast_one_to_all(np.float64(value)))
