"""Mesh construction and the logical-axis table."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from drift_jax.lm import sharding


def test_mesh_fills_minus_one():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize(
    "shape,msg",
    [
        ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices but 8"),
        ({"data": -1, "tensor": 3}, "multiply to 3, which does not divide the 8"),
        ({"data": -1, "tensor": -1}, "at most one"),
        ({"pipeline": 2}, "unknown mesh axes"),
    ],
)
def test_bad_mesh_is_a_clear_error(shape, msg):
    with pytest.raises(ValueError, match=msg):
        sharding.make_mesh(shape)


def test_rules_map_and_replicate_indivisible_dims():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.logical_to_spec(("batch", "length", "act_embed"), (8, 5, 16), mesh) == P(("data", "fsdp"), None, None)
    assert sharding.logical_to_spec(("layers", "embed", "heads", "head_dim"), (2, 16, 4, 8), mesh) == P(None, "fsdp", "tensor", None)
    # 3 kv heads cannot be split over tensor=2: replicated instead of an error.
    assert sharding.logical_to_spec(("embed", "kv_heads"), (16, 3), mesh) == P("fsdp", None)
    with pytest.raises(KeyError, match="no entry"):
        sharding.logical_to_spec(("nonsense",))


def test_put_places_only_shards():
    import numpy as np

    mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
    x = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    arr = sharding.put(x, mesh, ("batch", "act_vocab"))
    assert arr.addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(arr), x)
    assert len(jax.devices()) == 8
