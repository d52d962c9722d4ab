"""Published per-chip figures of the accelerators a run may target, and their devices compiled for on a CPU.

Sources (vendor spec pages, per chip): Cloud TPU system architecture pages
docs.cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} ("Peak compute per chip (bf16)", "HBM capacity/bandwidth
per chip", "Bidirectional inter-chip interconnect (ICI) bandwidth per chip"); v4 gives no per-chip ICI
figure there, so it is 6 links x 2 directions x 45 GB/s from the v4 paper (Jouppi et al., ISCA 2023).
NVIDIA H100 SXM / H200 SXM datasheets (dense bf16 tensor core, HBM3/HBM3e, NVLink 4 900 GB/s).
ICI time in the roofline is collective bytes / the bidirectional per-chip figure: a lower bound.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # capacity per chip
    peak_flops: float  # bf16 dense, per chip
    hbm_bandwidth: float  # bytes/s per chip
    ici_bandwidth: float  # bytes/s per chip, bidirectional (NVLink for GPUs)
    platform: str = "tpu"


GiB, GB = 1 << 30, 10**9
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200 * GB, 540 * GB),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819 * GB, 400 * GB),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765 * GB, 1200 * GB),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1638 * GB, 800 * GB),
    "h100": Chip("h100", 80 * GB, 989e12, 3350 * GB, 900 * GB, platform="cuda"),
    "h200": Chip("h200", 141 * GB, 989e12, 4800 * GB, 900 * GB, platform="cuda"),
}
# jax's device_kind of real devices -> chip name.
_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
          "TPU v6 lite": "v6e", "TPU v6e": "v6e", "NVIDIA H100 80GB HBM3": "h100", "NVIDIA H200": "h200"}


def chip_of_devices(devices) -> Chip | None:
    """The table entry of real devices (None for CPUs and unknown kinds)."""
    kind = devices[0].device_kind
    name = _KINDS.get(kind) or next((v for k, v in _KINDS.items() if kind.startswith(k)), None)
    return CHIPS.get(name) if name else None


def parse_topology(topology: str) -> tuple[Chip, tuple[int, ...]]:
    """'v5e:4x8' -> (v5e, (4, 8)); 'h100:8' -> (h100, (8,))."""
    m = re.fullmatch(r"(\w+):(\d+(?:x\d+)*)", topology)
    if not m or m.group(1) not in CHIPS:
        raise ValueError(f"topology must look like v5e:4x8 or h100:8 with a chip in {sorted(CHIPS)}; got {topology!r}")
    return CHIPS[m.group(1)], tuple(int(d) for d in m.group(2).split("x"))


def topology_devices(topology: str) -> tuple[Chip, list[Any]]:
    """Device descriptions of a slice that no machine here has: compile for them, never run on them.

    TPU: libtpu's deviceless topology (installed with jax[tpu] at the jax version). GPU: the jax CUDA
    plugin's, where it is installed. JAX_PLATFORMS should stay `cpu` so libtpu does not claim a device.
    """
    from jax.experimental import topologies

    chip, dims = parse_topology(topology)
    if chip.platform == "tpu":
        # libtpu asks the metadata server for a TPU it is not on; this says there is none to ask. It
        # also locks /tmp/libtpu_lockfile against a second process, which compiling needs no guard from.
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        # v4 and v5p name 3-D slices (2x2x2); the host holds a 2x2x1 block of chips either way.
        host = (2, 2, 1) if math.prod(dims) >= 4 else (*dims, *(1,) * (3 - len(dims)))
        try:
            topo = topologies.get_topology_desc(
                platform="tpu", topology_name=topology, chip_config_name="default",
                chips_per_host_bounds=host, num_slices=1,
            )
        except Exception as e:
            raise RuntimeError(f"cannot describe TPU topology {topology} on this machine ({e}); "
                               "install jax[tpu] at the installed jax version") from e
        return chip, list(topo.devices)
    # The jax CUDA plugin (jax[cuda12]) compiles for a GPU described by XLA's GpuTargetConfigProto; the
    # fields below are those of xla/backends/gpu/target_config/specs/h100_sxm.txtpb that compiling reads.
    target = _GPU_TARGET.format(memory=chip.hbm_bytes, bandwidth=int(chip.hbm_bandwidth), name=_GPU_NAMES[chip.name])
    topo = topologies.get_topology_desc(
        platform="cuda", topology_name="", topology=f"1x1x{math.prod(dims)}", target_config=target,
    )
    return chip, list(topo.devices)


_GPU_NAMES = {"h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200"}
_GPU_TARGET = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98 device_memory_size: {memory}
  shared_memory_per_block_optin: 232448 cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 1 }}
device_description_str: "{name}"
"""
