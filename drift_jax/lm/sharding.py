"""Device mesh and the tables that map logical array axes to mesh axes: one for training, one for rollouts.

Every parameter, activation and KV-cache array in drift_jax is described by logical axis names
(`embed`, `heads`, ...). `RULES` below maps each name to zero or more mesh axes (`data`, `fsdp`,
`tensor`) for training; `ROLLOUT_RULES` does so for rollouts and evaluation (`with use_rules(...)`
makes a table the one in force). Changing a parallelism strategy means editing a table, nothing else.

A logical axis whose size does not divide the product of its mesh axes is replicated instead (e.g. 2
KV heads on tensor=4), so tiny test models run on any mesh.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. Parameters shard `embed` over fsdp (ZeRO-3 style) and the
# head/mlp/vocab dims over tensor (Megatron style); activations shard the batch over data x fsdp.
RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "layers": (),
    # activations and cache
    "batch": ("data", "fsdp"),
    "length": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    "cache_length": (),
}

# Rollouts and evaluation (the sampler, the KV cache): parameters are NOT split over fsdp, which would
# all-gather every weight on every decoded token; they stay split over tensor only, and the rows of the
# batch go over data x fsdp. Activations and the cache are laid out as in training.
ROLLOUT_RULES: dict[str, tuple[str, ...]] = {**RULES, "embed": ()}

_IN_FORCE: list[Mapping[str, tuple[str, ...]]] = [RULES]


@contextlib.contextmanager
def use_rules(rules: Mapping[str, tuple[str, ...]]):
    """Makes `rules` the table that `logical_to_spec` (and so `constrain`) uses by default, e.g. the
    rollout table while tracing the sampler."""
    _IN_FORCE.append(rules)
    try:
        yield rules
    finally:
        _IN_FORCE.pop()


Logical = Sequence[str | None]


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices.

    Example: `make_mesh({"data": -1, "fsdp": 1, "tensor": 2})` on 8 devices -> data=4.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(shape or {"data": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    sizes = {name: int(shape.get(name, 1)) for name in MESH_AXES}
    free = [n for n, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    if any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(
                f"mesh {sizes}: the fixed axes multiply to {fixed}, which does not divide "
                f"the {len(devices)} available devices"
            )
        sizes[free[0]] = len(devices) // fixed
    total = math.prod(sizes.values())
    if total != len(devices):
        raise ValueError(
            f"mesh {sizes} needs {total} devices but {len(devices)} are available; "
            f"set one axis to -1 or change the mesh shape"
        )
    dims = tuple(sizes[n] for n in MESH_AXES)
    return jax.make_mesh(
        dims, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def logical_to_spec(
    names: Logical,
    shape: Sequence[int] | None = None,
    mesh: Mesh | jax.sharding.AbstractMesh | None = None,
    rules: Mapping[str, tuple[str, ...]] | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec, replicating dims the mesh does not divide."""
    rules = _IN_FORCE[-1] if rules is None else rules
    used: set[str] = set()
    spec: list[Any] = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no entry in the sharding rules")
        axes = tuple(a for a in rules[name] if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes:
                size = math.prod(mesh.shape[a] for a in axes)
                if shape[i] % size:
                    axes = ()
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def require_divisible_rows(mesh: Mesh, rows: int, knob: str) -> None:
    """A batch must split evenly over the data x fsdp devices: `logical_to_spec` would otherwise
    replicate it, and every device would hold (and compute) the whole batch."""
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % devices:
        raise ValueError(
            f"a batch of {rows} rows does not divide over the data x fsdp = {devices} devices of mesh "
            f"{dict(mesh.shape)}: it would be replicated on every device. Set {knob} so that the rows "
            f"per batch are a multiple of {devices} (or shrink the data/fsdp mesh axes)"
        )


def named_sharding(mesh: Mesh, names: Logical, shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def tree_shardings(mesh: Mesh, logical_tree: Any, abstract_tree: Any) -> Any:
    """Shardings for a pytree, given a matching pytree of logical-name tuples (PartitionSpecs)."""
    return jax.tree.map(
        lambda names, x: named_sharding(mesh, tuple(names), x.shape),
        logical_tree,
        abstract_tree,
        is_leaf=lambda n: isinstance(n, PartitionSpec),
    )


def constrain(x: jax.Array, names: Logical) -> jax.Array:
    """Sharding hint for an activation inside jit; a no-op when no mesh is set (`jax.set_mesh`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def put(x: np.ndarray | jax.Array, mesh: Mesh | None, names: Logical) -> jax.Array:
    """Places a host array on the mesh with its logical sharding (each device gets only its shard)."""
    if mesh is None:
        return jax.numpy.asarray(x)
    sharding = named_sharding(mesh, names, np.shape(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
