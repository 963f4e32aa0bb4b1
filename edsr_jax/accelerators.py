"""Accelerator types: chips, hosts, topology, and each chip's documented HBM and peaks.

Cloud TPU types and one GPU host (`h100-8`: 8 NVIDIA H100 SXM 80GB on one host, as in
an A3 VM or a DGX H100; `h100-1` .. `h100-8`).

`slice_for("v5litepod-8")` says what `gcloud compute tpus ... --accelerator-type` gives:

- v5e (`v5litepod-N`) and v6e (`v6e-N`): N chips, one TensorCore each. Slices of up to
  8 chips are one TPU VM (the 8-chip VM types ct5lp-hightpu-8t / ct6e-standard-8t);
  larger slices are made of 4-chip VMs (ct5lp-hightpu-4t / ct6e-standard-4t), a 2x2 block
  of the 2-D torus each: v5litepod-16 is 4 hosts.
- v4 (`v4-N`) and v5p (`v5p-N`): N counts TensorCores, two per chip fused as one JAX
  device (megacore), so N/2 chips; every VM holds 4 chips (a 2x2x1 block of the 3-D
  torus): v4-8 is one host, v4-32 is 16 chips on 4 hosts.

Sources: the Cloud TPU documentation's system-architecture pages for v4, v5e, v5p and
v6e (chip specifications, supported slice topologies, VM types); the same mapping is in
MaxText's accelerator_to_spec_map.py, which AOT-compiles for these types. The topology
description JAX builds from it (`topology_name`, `chips_per_host_bounds`) is checked in
tests/test_aot.py: it yields exactly `chips` devices on `hosts` processes.
"""

import dataclasses
import re

from edsr_jax import errors

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str  # the accelerator-type prefix: v4, v5litepod, v5p, v6e, h100
  device_kind: str  # what JAX calls the device
  topology_prefix: str  # libtpu's topology name prefix ("" for a GPU)
  hbm_bytes: int  # HBM per chip, as documented
  peak_flops: float  # dense bfloat16 FLOP/s per chip, as documented
  hbm_bandwidth: float  # bytes/s per chip, as documented
  cores_per_chip_in_name: int  # v4-8: the 8 counts TensorCores, 2 per chip
  megacore: bool
  # float32 convolutions: TPUs feed their matrix units bf16 passes at the bf16 peak
  # (JAX's default precision); GPUs use TF32 tensor cores, half the bf16 rate.
  peak_flops_float32: float = 0.0
  platform: str = "tpu"

  def peak_for(self, dtype: str) -> float:
    return (
      self.peak_flops_float32 if dtype == "float32" and self.peak_flops_float32 else self.peak_flops
    )


CHIPS = {
  "v4": Chip("v4", "TPU v4", "v4", 32 * GIB, 275e12, 1200e9, 2, True),
  "v5litepod": Chip("v5litepod", "TPU v5 lite", "v5e", 16 * GIB, 197e12, 819e9, 1, False),
  "v5p": Chip("v5p", "TPU v5", "v5", 95 * 10**9, 459e12, 2765e9, 2, True),
  "v6e": Chip("v6e", "TPU v6 lite", "v6e", 32 * GIB, 918e12, 1640e9, 1, False),
}
# NVIDIA's H100 SXM datasheet: 80 GB HBM3 at 3.35 TB/s, 989 TFLOP/s dense bf16, 495 TF32.
GPUS = {
  "h100": Chip(
    "h100", "NVIDIA H100 80GB HBM3", "", 80 * GIB, 989e12, 3350e9, 1, False, 494.7e12, "cuda"
  ),
}
MAX_GPUS_PER_HOST = 8

# Chips -> slice shape, as the documentation lists the supported topologies.
_TORUS_2D = {
  1: (1, 1),
  4: (2, 2),
  8: (2, 4),
  16: (4, 4),
  32: (4, 8),
  64: (8, 8),
  128: (8, 16),
  256: (16, 16),
}
_TORUS_3D = {
  4: (2, 2, 1),
  8: (2, 2, 2),
  16: (2, 2, 4),
  32: (2, 4, 4),
  64: (4, 4, 4),
  128: (4, 4, 8),
  256: (4, 8, 8),
  512: (8, 8, 8),
}
SINGLE_HOST_MAX_CHIPS_2D = 8  # v5e / v6e: up to 8 chips on one VM
CHIPS_PER_MULTI_HOST_VM = 4


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  chip: Chip
  chips: int
  hosts: int
  topology: tuple[int, ...]
  chips_per_host_bounds: tuple[int, int, int]

  @property
  def topology_name(self) -> str:
    if self.chip.platform == "cuda":  # the CUDA plugin's "<slices>x<hosts>x<devices>"
      return f"1x{self.hosts}x{self.chips // self.hosts}"
    return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.topology))}"


def supported_types() -> list[str]:
  names = []
  for gen, chip in CHIPS.items():
    table = _TORUS_3D if chip.megacore else _TORUS_2D
    names += [f"{gen}-{n * chip.cores_per_chip_in_name}" for n in table]
  return names + [f"{gpu}-{n}" for gpu in GPUS for n in range(1, MAX_GPUS_PER_HOST + 1)]


def slice_for(accelerator_type: str) -> Slice:
  """The slice an accelerator type names; UserError for one not known here."""
  gpu = re.fullmatch(r"(h100)-(\d+)", accelerator_type.strip())
  if gpu:
    count = int(gpu[2])
    if not 1 <= count <= MAX_GPUS_PER_HOST:
      raise errors.UserError(
        f"{accelerator_type!r}: one host of 1 to {MAX_GPUS_PER_HOST} GPUs (h100-1 .. h100-8)"
      )
    return Slice(accelerator_type.strip(), GPUS[gpu[1]], count, 1, (count,), (count, 1, 1))
  match = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-(\d+)", accelerator_type.strip())
  if not match or match[1] not in CHIPS:
    raise errors.UserError(
      f"{accelerator_type!r}: not an accelerator type known here; known: "
      f"{', '.join(supported_types())}"
    )
  chip = CHIPS[match[1]]
  count = int(match[2])
  table = _TORUS_3D if chip.megacore else _TORUS_2D
  chips = count // chip.cores_per_chip_in_name
  if count % chip.cores_per_chip_in_name or chips not in table:
    sizes = ", ".join(str(n * chip.cores_per_chip_in_name) for n in table)
    raise errors.UserError(f"{accelerator_type!r}: {chip.generation} slices come in sizes {sizes}")
  topology = table[chips]
  if not chip.megacore and chips <= SINGLE_HOST_MAX_CHIPS_2D:
    bounds = (*topology, 1)
  else:
    bounds = (2, 2, 1)
  hosts = max(1, chips // (bounds[0] * bounds[1] * bounds[2]))
  return Slice(accelerator_type.strip(), chip, chips, hosts, topology, bounds)
