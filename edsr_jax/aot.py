"""Compiles the production train step for a Cloud TPU slice, on any machine, without a TPU.

  python -m edsr_jax.aot --tpu=v5litepod-8 --config=configs/edsr.py:x2 \
      [--config.batch_size=64] [--config.model.dtype=bfloat16] [--max_batch] \
      [--output_json=report.json] [--dump_hlo=step.hlo.txt]

The TPU compiler (libtpu, from PyPI) builds the slice's devices from a topology
description and compiles, ahead of time, the very `jax.jit` step `train_and_evaluate`
runs (`train.make_train_step`: the same function, shardings and donation) on
ShapeDtypeStructs of the train state and the global batch. The report says what the
slice will do before it is rented: per-chip HBM against the chip's capacity, what the
donation aliases, compiled FLOPs next to the analytical count, a roofline step time, the
collectives, and the dtype the convolutions run in. It also compiles the validation /
inference forward for the tile `inference.Upscaler` picks for a DIV2K image.

Nothing runs on a TPU here: the step times are estimates (roofline: the larger of FLOPs
over the chip's peak and HBM bytes over its bandwidth), the memory figures are the
compiler's own. A step that does not fit exits 1 with one `error:` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
from absl import flags
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

from edsr_jax import accelerators, cli, config_lib, errors, inference, models, train

DIV2K_IMAGE = (1356, 2040)  # HR height, width of a DIV2K image (landscape)
HEADROOM = 0.10  # below this fraction of HBM left free, the report warns

# ------------------------------------------------------------------ libtpu


def _quiet_libtpu(accelerator_type: str) -> None:
  """libtpu, loaded off a TPU VM, asks the VM metadata for the accelerator type and the
  worker hostnames and prints warnings when it finds none; it also takes a lock file
  that a second compiling process (or a test beside it) would fail on. Compile-only
  topologies need none of it."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


LIBTPU_FOLDER = "tpu-compiler"  # under the venv (sys.prefix), where `make venv` puts it


def libtpu_path() -> str | None:
  """libtpu.so: from an installed `libtpu` package (a TPU VM's jax[tpu]), else from the
  folder `make venv` installs it to (kept off site-packages: see the Makefile)."""
  if os.environ.get("TPU_LIBRARY_PATH") and os.path.isfile(os.environ["TPU_LIBRARY_PATH"]):
    return os.environ["TPU_LIBRARY_PATH"]
  # An installed libtpu package (jax[tpu]); looked up, not imported.
  spec = importlib.util.find_spec("libtpu")
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(spec.submodule_search_locations[0], "libtpu.so")
    if os.path.isfile(path):
      return path
  path = os.path.join(sys.prefix, LIBTPU_FOLDER, "libtpu", "libtpu.so")
  return path if os.path.isfile(path) else None


# What the compilers' native code prints to stderr on a machine without their hardware.
NATIVE_NOISE = (
  "Logging before InitGoogle",
  "before absl::InitializeLog",
  "Could not find cuda drivers",
  "TPU_ACCELERATOR_TYPE",
  "TPU_WORKER_HOSTNAMES",
  "libtpu_init_utils",
  "Source Location Trace",
  "gpu_hlo_schedule.cc",
  "hlo_rematerialization.cc",
)


_real_stderr: int | None = None  # while fd 2 is captured: a duplicate of the real one


@contextlib.contextmanager
def _without_native_noise():
  """Runs the block with the process's stderr (fd 2) captured, then passes on every line
  but the known no-hardware-here notices (env vars cannot silence all of them)."""
  global _real_stderr
  sys.stderr.flush()
  saved = _real_stderr = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      _real_stderr = None
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines():
        if line.strip() and not any(noise in line for noise in NATIVE_NOISE):
          print(line, file=sys.stderr)


GPU_COMPILER_FOLDER = "gpu-compiler"  # JAX's CUDA plugin, where `make venv` puts it
GPU_TARGETS = os.path.join(os.path.dirname(__file__), "gpu_targets")


def devices_for(tpu_slice: accelerators.Slice) -> list:
  """The slice's compile-only devices (JAX's view of the real slice: ids, hosts)."""
  # libtpu installs its own SIGINT handler when it loads, which swallows Ctrl-C; the
  # previous one (Python's, in a command-line run) is put back.
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.getsignal(signal.SIGINT) if main_thread else None
  try:
    if tpu_slice.chip.platform == "cuda":
      return gpu_devices(tpu_slice)
    return tpu_devices(tpu_slice)
  finally:
    if main_thread and previous is not None:
      signal.signal(signal.SIGINT, previous)


def gpu_devices(gpu_slice: accelerators.Slice) -> list:
  """Compile-only CUDA devices from a GPU target description (edsr_jax/gpu_targets/: the
  GPU's published limits), with JAX's CUDA plugin; no GPU, driver or CUDA library needed."""
  folder = os.path.join(sys.prefix, GPU_COMPILER_FOLDER)
  if os.path.isdir(folder) and folder not in sys.path:
    sys.path.append(folder)  # before JAX looks for plugins (its first backend use)
  # The plugin checks the CUDA libraries when it starts; compiling needs none of them.
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

  with open(os.path.join(GPU_TARGETS, f"{gpu_slice.chip.generation}_sxm.txtpb")) as f:
    target = f.read()
  try:
    with _without_native_noise():
      topology = topologies.get_topology_desc(
        platform="cuda", target_config=target, topology=gpu_slice.topology_name
      )
  except NotImplementedError:
    raise errors.UserError(
      "the GPU compiler (JAX's CUDA plugin) is not installed: `make venv` installs it into "
      f".venv/{GPU_COMPILER_FOLDER}; elsewhere `pip install --no-deps --target {folder} "
      "jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2`"
    ) from None
  return list(topology.devices)


def tpu_devices(tpu_slice: accelerators.Slice) -> list:
  """The slice's compile-only TPU devices, from libtpu's topology description."""
  path = libtpu_path()
  if path is None:
    raise errors.UserError(
      "the TPU compiler (libtpu) is not installed: `make venv` installs it into "
      f".venv/{LIBTPU_FOLDER}; elsewhere `pip install --target "
      f"{os.path.join(sys.prefix, LIBTPU_FOLDER)} libtpu==0.0.42.1`"
    )
  os.environ["TPU_LIBRARY_PATH"] = path
  _quiet_libtpu(tpu_slice.accelerator_type)

  kwargs = {"chip_config_name": "megacore"} if tpu_slice.chip.megacore else {}
  with _without_native_noise():
    topology = topologies.get_topology_desc(
      topology_name=tpu_slice.topology_name,
      platform="tpu",
      chips_per_host_bounds=tpu_slice.chips_per_host_bounds,
      **kwargs,
    )
  return list(topology.devices)


# ------------------------------------------------------------------ analytical FLOPs


def _conv_flops(cin: int, cout: int, k: int, h: int, w: int) -> int:
  """2 * MACs of a k x k 'SAME' convolution, counting only taps inside the image: along
  an axis of n pixels with padding p = k // 2 there are k*n - p*(p+1) of them."""
  p = k // 2
  return 2 * cin * cout * (k * h - p * (p + 1)) * (k * w - p * (p + 1))


def forward_conv_flops(model_config, patch: int, scale: int) -> tuple[int, int]:
  """(all convolutions, the head's) FLOPs of one forward pass on a patch x patch input."""
  f, size = model_config.num_features, patch
  head = _conv_flops(3, f, 3, size, size)
  total = head + (2 * model_config.num_blocks + 1) * _conv_flops(f, f, 3, size, size)
  if model_config.name == "mdsr":
    total += 4 * _conv_flops(f, f, 5, size, size)  # two 5x5 residual blocks
  for r in models.UPSAMPLE_STAGES[scale]:
    total += _conv_flops(f, f * r * r, 3, size, size)
    size *= r
  return total + _conv_flops(f, 3, 3, size, size), head


def train_step_flops(model_config, patch: int, scale: int, batch: int) -> int:
  """Convolution FLOPs of one train step on `batch` patches: the forward, the gradient
  for every weight (as many again) and for every activation but the input image's."""
  forward, head = forward_conv_flops(model_config, patch, scale)
  return batch * (3 * forward - head)


# ------------------------------------------------------------------ reading the HLO

_DTYPE_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
  "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][a-z\-]*)\((.*)$")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
HOST_OPS = ("send", "recv", "infeed", "outfeed", "host-compute")


def array_bytes(type_text: str) -> int:
  """Bytes of every array in an HLO type (`f32[3,64]{...}` or a tuple of them)."""
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _instructions(hlo_text: str):
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      yield m[1], m[2], m[3], m[4]


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {count, bytes}} of the cross-device collectives (async pairs counted once)."""
  out: dict[str, dict[str, int]] = {}
  for _, type_text, op, _ in _instructions(hlo_text):
    kind = op.removesuffix("-start")
    if kind in COLLECTIVES and not op.endswith("-done"):
      entry = out.setdefault(kind, {"count": 0, "bytes": 0})
      entry["count"] += 1
      entry["bytes"] += array_bytes(type_text)
  return out


def host_transfers(hlo_text: str) -> list[str]:
  """Instructions that move data to or from the host or call back into Python."""
  found = []
  for name, _, op, rest in _instructions(hlo_text):
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    if op in HOST_OPS or (op == "custom-call" and target and "callback" in target[1].lower()):
      found.append(f"{op} {name}")
  return found


def convolution_dtypes(hlo_text: str) -> dict[str, int]:
  """{operand dtypes: count} of the convolutions, e.g. {'bf16 x bf16': 107}."""
  types = {}
  convs = []
  for name, type_text, op, rest in _instructions(hlo_text):
    m = _ARRAY.search(type_text)
    if m:
      types[name] = m[1]
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    if op == "convolution" or (op == "custom-call" and target and "$conv" in target[1]):
      convs.append(re.findall(r"%([\w.\-]+)", rest.split(")")[0]))
  counts: dict[str, int] = {}
  for operands in convs:
    key = " x ".join(types.get(o, "?") for o in operands[:2])
    counts[key] = counts.get(key, 0) + 1
  return counts


def input_output_aliases(hlo_text: str) -> int:
  """How many entry parameters the compiled module aliases to outputs (donated buffers)."""
  header = next((line for line in hlo_text.splitlines() if line.startswith("HloModule")), "")
  # input_output_alias={ {0}: (0, {}, may-alias), {1}: (1, {}, may-alias), ... }
  return len(re.findall(r"\{[\d,]*\}: \(\d+, \{[\d,]*\}", header))


# ------------------------------------------------------------------ compiling


@dataclasses.dataclass
class Compiled:
  """One compiled program's figures, per chip."""

  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: float | None  # None: the compiler gives no cost analysis (GPU targets)
  bytes_accessed: float | None
  compile_seconds: float
  hlo: str = dataclasses.field(repr=False, default="")

  @property
  def total_bytes(self) -> int:
    """HBM the program needs on each chip: its inputs, the outputs that do not reuse a
    donated input, its temporaries and its code."""
    return (
      self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes
    )


class OutOfMemory(Exception):
  def __init__(self, needed: float | None, capacity: float | None, message: str):
    super().__init__(message)
    self.needed, self.capacity = needed, capacity


_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"


def _bytes(number: str, unit: str) -> float:
  return float(number) * 1024 ** "_KMGT".index(unit or "_")


def _parse_oom(message: str) -> OutOfMemory:
  needed = capacity = None
  m = re.search(rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)", message)
  if m:
    needed, capacity = _bytes(m[1], m[2]), _bytes(m[3], m[4])
  else:
    m = re.search(rf"Used {_SIZE} of {_SIZE} hbm", message)
    if m:
      needed, capacity = _bytes(m[1], m[2]), _bytes(m[3], m[4])
  return OutOfMemory(needed, capacity, message.splitlines()[0] if message else "")


def _compile(jitted, *args, **kwargs) -> Compiled:

  start = time.perf_counter()
  try:
    with _without_native_noise():  # XLA:GPU logs its own view of an out-of-memory program
      compiled = jitted.lower(*args, **kwargs).compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      raise _parse_oom(str(e)) from None
    raise
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  return Compiled(
    argument_bytes=memory.argument_size_in_bytes,
    output_bytes=memory.output_size_in_bytes,
    alias_bytes=memory.alias_size_in_bytes,
    temp_bytes=memory.temp_size_in_bytes,
    code_bytes=memory.generated_code_size_in_bytes,
    flops=float(cost["flops"]) if "flops" in cost else None,
    bytes_accessed=float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
    compile_seconds=seconds,
    hlo=compiled.as_text(),
  )


def target_dtype(config):
  """The compute dtype on TPU: 'auto' means float32 there (models.compute_dtype)."""
  name = config.model.dtype
  return jnp.dtype(jnp.float32 if name == "auto" else name)


def compile_train_steps(config, devices) -> dict[int, Compiled]:
  """The production train step, compiled for `devices` at each scale the model trains."""
  mesh = train.make_mesh(devices)
  model, tx = train.make_model_and_optimizer(config, target_dtype(config))
  step = train.make_train_step(model, tx, mesh)
  state = train.train_state_shapes(config, model, tx, mesh)
  return {
    s: _compile(step, state, train.batch_shapes(config, mesh, s), scale=s)
    for s in models.model_scales(config.model)
  }


def compile_inference_tile(config, device, scale: int) -> tuple[Compiled, object]:
  """The forward `inference.Upscaler` runs on one call of its tiling of a DIV2K image's
  LR (validation uses it too), on one chip."""
  upscaler = inference.Upscaler(config, params=None, dtype=target_dtype(config))
  lr_shape = (DIV2K_IMAGE[0] // scale, DIV2K_IMAGE[1] // scale, 3)
  plan = upscaler.plan(lr_shape, scale)
  on_chip = SingleDeviceSharding(device)
  model, tx = train.make_model_and_optimizer(config, target_dtype(config))
  params = train.train_state_shapes(config, model, tx, train.make_mesh([device])).params
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_chip), params)
  batch = jax.ShapeDtypeStruct((plan.per_call, *plan.window, 3), jnp.uint8, sharding=on_chip)
  compiled = _compile(
    upscaler._forward, params, batch, scale=scale, self_ensemble=False, quantize=True
  )
  return compiled, plan


# ------------------------------------------------------------------ the report


def _tree_bytes(tree) -> int:

  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def state_breakdown(config) -> dict[str, int]:
  """Logical bytes of the replicated train state on each chip (before TPU tiling)."""
  model, tx = train.make_model_and_optimizer(config, target_dtype(config))
  state = train.train_state_shapes(config, model, tx, train.make_mesh(jax.devices()[:1]))
  out = {"params": _tree_bytes(state.params), "adam": _tree_bytes(state.opt_state)}
  out["ema"] = _tree_bytes(state.ema_params) if state.has_ema else 0
  out["step_and_counters"] = _tree_bytes((state.step, state.nonfinite_streak))
  out["leaves"] = len(jax.tree.leaves(state))
  return out


def build_report(config, tpu_slice: accelerators.Slice, devices) -> dict:
  """Compiles everything and returns the report (raises OutOfMemory if the step does not
  fit)."""
  chip = tpu_slice.chip
  steps = compile_train_steps(config, devices)
  scales = list(steps)
  per_chip_batch = config.batch_size // tpu_slice.chips
  worst = max(steps.values(), key=lambda c: c.total_bytes)
  state = state_breakdown(config)
  per_scale = {}
  peak = chip.peak_for(str(target_dtype(config)))
  for s, c in steps.items():
    analytical = train_step_flops(config.model, config.patch_size, s, per_chip_batch)
    # Without the compiler's cost analysis (GPU): the analytical count, compute bound only.
    t_compute = (c.flops if c.flops is not None else analytical) / peak
    t_memory = c.bytes_accessed / chip.hbm_bandwidth if c.bytes_accessed is not None else 0.0
    per_scale[s] = {
      "hbm_bytes_per_chip": c.total_bytes,
      "argument_bytes": c.argument_bytes,
      "output_bytes": c.output_bytes,
      "alias_bytes": c.alias_bytes,
      "temp_bytes": c.temp_bytes,
      "code_bytes": c.code_bytes,
      "flops_per_step_per_chip": c.flops,
      "analytical_conv_flops_per_chip": analytical,
      "bytes_accessed_per_chip": c.bytes_accessed,
      "compute_seconds": t_compute,
      "memory_seconds": t_memory,
      "estimated_step_seconds": max(t_compute, t_memory),
      "bound": "compute" if t_compute >= t_memory else "memory",
      "collectives": collectives(c.hlo),
      "host_transfers": host_transfers(c.hlo),
      "convolution_dtypes": convolution_dtypes(c.hlo),
      "donated_buffers": input_output_aliases(c.hlo),
      "compile_seconds": round(c.compile_seconds, 1),
    }
  # MDSR draws its scale uniformly per step: the mean step time is what a run sees.
  step_seconds = sum(p["estimated_step_seconds"] for p in per_scale.values()) / len(scales)
  first = per_scale[scales[0]]
  total = worst.total_bytes
  report = {
    "accelerator": tpu_slice.accelerator_type,
    "device_kind": chip.device_kind,
    "topology": tpu_slice.topology_name,
    "chips": tpu_slice.chips,
    "hosts": tpu_slice.hosts,
    "chips_per_host": tpu_slice.chips // tpu_slice.hosts,
    "mesh": {"data": tpu_slice.chips},
    "model": config.model.name,
    "num_blocks": config.model.num_blocks,
    "num_features": config.model.num_features,
    "scales": scales,
    "dtype": str(target_dtype(config)),
    "batch_size": config.batch_size,
    "batch_per_chip": per_chip_batch,
    "patch_size": config.patch_size,
    "state_bytes_per_chip": state,
    "batch_bytes_per_chip": per_chip_batch * config.patch_size**2 * 3 * (1 + max(scales) ** 2),
    "hbm_bytes_per_chip": total,
    "hbm_capacity_bytes_per_chip": chip.hbm_bytes,
    "fits": total <= chip.hbm_bytes,
    "headroom_fraction": 1 - total / chip.hbm_bytes,
    "donated_bytes_per_chip": worst.alias_bytes,
    "flops_per_step_per_chip": (
      first["flops_per_step_per_chip"]
      if first["flops_per_step_per_chip"] is not None
      else first["analytical_conv_flops_per_chip"]
    ),
    "analytical_conv_flops_per_step_per_chip": first["analytical_conv_flops_per_chip"],
    "peak_flops_per_chip": peak,
    "flops_source": "compiler" if worst.flops is not None else "analytical (no cost analysis)",
    "hbm_bandwidth_bytes_per_second": chip.hbm_bandwidth,
    "estimated_step_seconds": step_seconds,
    "bound": first["bound"],
    "estimated_steps_per_second": 1 / step_seconds,
    "num_train_steps": config.num_train_steps,
    "estimated_train_hours": config.num_train_steps * step_seconds / 3600,
    "per_scale": {str(s): v for s, v in per_scale.items()},
    "compiled_by": (
      "the TPU compiler (libtpu), ahead of time; step times estimated, not run"
      if chip.platform == "tpu"
      else "JAX's CUDA plugin (XLA:GPU; cuDNN algorithms not autotuned without a GPU), ahead "
      "of time; step times estimated, not run"
    ),
    "hlo": {str(s): c.hlo for s, c in steps.items()},  # not written to --output_json
  }
  return report


def add_inference(report: dict, config, devices) -> None:
  scale = report["scales"][-1]
  try:
    compiled, plan = compile_inference_tile(config, devices[0], scale)
  except OutOfMemory as e:
    report["inference"] = {"scale": scale, "fits": False, "error": str(e)}
    return
  report["inference"] = {
    "scale": scale,
    "lr_image": [DIV2K_IMAGE[0] // scale, DIV2K_IMAGE[1] // scale],
    "tile_window": list(plan.window),
    "tiles_per_call": plan.per_call,
    "calls": len(plan.calls),
    "hbm_bytes_per_chip": compiled.total_bytes,
    "fits": compiled.total_bytes <= report["hbm_capacity_bytes_per_chip"],
    "flops_per_call": compiled.flops,
  }


# ------------------------------------------------------------------ the largest batch


def find_max_batch(
  config, tpu_slice, devices, log=print, exact: bool = True, known: dict | None = None
) -> tuple[int, dict]:
  """The largest global batch (a multiple of the chip count) whose step compiles and fits.

  HBM grows about linearly with the batch, so two compiles give a line whose crossing
  with the capacity is tried first; bisection between the largest batch known to fit and
  the smallest known not to settles it (usually 5-8 compiles). exact=False (the README
  table) stops within 5% of the largest, or when within 10% of the capacity.
  `known`: {per-chip batch: HBM bytes} already compiled."""
  chips = tpu_slice.chips
  capacity = tpu_slice.chip.hbm_bytes
  known = dict(known or {})  # per-chip batch -> HBM bytes, None: does not fit

  def probe(k: int) -> int | None:
    if k not in known:
      c = config.copy_and_resolve_references()
      c.batch_size = k * chips
      try:
        total = max(x.total_bytes for x in compile_train_steps(c, devices).values())
        known[k] = total if total <= capacity else None
      except OutOfMemory:
        known[k] = None
      shown = "does not fit" if known[k] is None else f"{known[k] / accelerators.GIB:.2f} GiB"
      log(f"  batch {k * chips} ({k} per chip): {shown}")
    return known[k]

  lo = min(known) if known else 1
  if probe(lo) is None:
    raise OutOfMemory(None, capacity, "not even one patch per chip fits")
  hi = None
  # HBM grows a little less than linearly at small batches (the compiler's layouts
  # change), so the line is refitted through the two largest batches that fit until a
  # guess does not fit.
  nxt = 4 * lo
  while hi is None:
    if probe(nxt) is None:
      hi = nxt
      break
    fitting = sorted(k for k, v in known.items() if v is not None)[-2:]
    lo = fitting[-1]
    (k1, m1), (k2, m2) = ((k, known[k]) for k in fitting)
    # Never flatter than a quarter of the mean bytes per patch (the compiler's figure can
    # stay flat between two batches), and at most 4x per step: a wild guess costs a
    # long bisection.
    slope = max((m2 - m1) / (k2 - k1), m2 / k2 / 4)
    room = capacity * (1 - HEADROOM / 2) - m2
    if not exact and room < capacity * HEADROOM:
      hi = lo + 1  # within the headroom of the capacity: close enough for a table
      break
    nxt = min(max(lo + 1, int(k2 + room / slope)), 4 * lo)
  # Bisection; exact=False stops within 5%.
  while hi - lo > (1 if exact else max(1, lo // 20)):
    mid = (lo + hi) // 2
    if probe(mid) is None:
      hi = mid
    else:
      lo = mid
  best = config.copy_and_resolve_references()
  best.batch_size = lo * chips
  return lo * chips, best


# ------------------------------------------------------------------ printing


def _gib(n: float) -> str:
  if n < accelerators.GIB:
    return f"{n / 2**20:.1f} MiB"
  return f"{n / accelerators.GIB:.2f} GiB"


def _flops(n: float) -> str:
  return f"{n / 1e9:.1f} GFLOP"


def format_report(r: dict) -> str:
  state = r["state_bytes_per_chip"]
  lines = [
    f"{r['accelerator']}: {r['chips']} x {r['device_kind']} on {r['hosts']} host(s) "
    f"({r['chips_per_host']} chips each), topology {r['topology']}, mesh data={r['chips']}",
    f"{r['model']} {r['num_blocks']}x{r['num_features']} x{'/x'.join(map(str, r['scales']))}, "
    f"{r['dtype']}, batch {r['batch_size']} ({r['batch_per_chip']} per chip) of "
    f"{r['patch_size']}x{r['patch_size']} LR patches",
    "",
    "HBM per chip (compiled):",
    f"  state (donated, as laid out)  {_gib(r['donated_bytes_per_chip'])}  "
    f"[params {_gib(state['params'])}, Adam {_gib(state['adam'])}, EMA {_gib(state['ema'])}"
    " before the compiler's tiling]",
  ]
  worst = max(r["per_scale"].values(), key=lambda p: p["hbm_bytes_per_chip"])
  lines += [
    f"  batch and other arguments      {_gib(worst['argument_bytes'] - worst['alias_bytes'])}",
    f"  temporaries                    {_gib(worst['temp_bytes'])}",
    f"  program                        {_gib(worst['code_bytes'])}",
    f"  total                          {_gib(r['hbm_bytes_per_chip'])} of "
    f"{_gib(r['hbm_capacity_bytes_per_chip'])}: "
    + (
      f"fits ({r['headroom_fraction']:.0%} free)"
      if r["fits"] and r["headroom_fraction"] >= HEADROOM
      else "fits, with little headroom"
      if r["fits"]
      else "DOES NOT FIT"
    ),
    f"  donation: {worst['donated_buffers']} of {state['leaves']} state buffers aliased "
    f"to the new state ({_gib(r['donated_bytes_per_chip'])})",
    "",
  ]
  peak = f"{r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s peak"
  for s, p in r["per_scale"].items():
    analytical = _flops(p["analytical_conv_flops_per_chip"])
    if p["flops_per_step_per_chip"] is None:
      flops = f"{analytical} analytical (convolutions); the compiler gives no cost analysis"
      roofline = (
        f"  roofline: compute only, {p['compute_seconds'] * 1e3:.2f} ms ({peak}; "
        f"no bytes-accessed figure for the memory bound)"
      )
    else:
      ratio = p["flops_per_step_per_chip"] / p["analytical_conv_flops_per_chip"]
      flops = (
        f"{_flops(p['flops_per_step_per_chip'])} compiled, {analytical} analytical "
        f"(convolutions), ratio {ratio:.3f}"
      )
      roofline = (
        f"  roofline: compute {p['compute_seconds'] * 1e3:.2f} ms ({peak}), memory "
        f"{p['memory_seconds'] * 1e3:.2f} ms ({p['bytes_accessed_per_chip'] / 1e9:.2f} GB at "
        f"{r['hbm_bandwidth_bytes_per_second'] / 1e9:.0f} GB/s): {p['bound']}-bound, "
        f"{p['estimated_step_seconds'] * 1e3:.2f} ms per step"
      )
    coll = ", ".join(
      f"{k} x{v['count']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in p["collectives"].items()
    )
    convs = ", ".join(f"{k}: {v}" for k, v in p["convolution_dtypes"].items())
    lines += [
      f"x{s}: FLOPs per step per chip {flops}",
      roofline,
      f"  collectives: {coll or 'none'}; host transfers: "
      f"{', '.join(p['host_transfers']) or 'none'}",
      f"  convolutions (operand dtypes): {convs}",
    ]
  lines += [
    "",
    f"estimated (not run): {r['estimated_steps_per_second']:.1f} steps/s, "
    f"{r['num_train_steps']:,} steps in {r['estimated_train_hours']:.2f} h",
  ]
  inf = r.get("inference")
  if inf and "tile_window" in inf:
    lines.append(
      f"inference x{inf['scale']} on a DIV2K image (LR {inf['lr_image'][1]}x"
      f"{inf['lr_image'][0]}): {inf['calls']} call(s) of {inf['tiles_per_call']} tile(s) "
      f"{inf['tile_window'][1]}x{inf['tile_window'][0]}, {_gib(inf['hbm_bytes_per_chip'])} "
      f"HBM on one chip: {'fits' if inf['fits'] else 'DOES NOT FIT'}"
    )
  elif inf:
    lines.append(f"inference x{inf['scale']}: DOES NOT FIT ({inf['error']})")
  if "max_batch" in r:
    lines.append(f"largest global batch that fits: {r['max_batch']}")
  lines.append(f"compiled by {r['compiled_by']}")
  return "\n".join(lines)


def does_not_fit_message(config, tpu_slice, needed: float | None, capacity: float | None) -> str:
  chip = tpu_slice.chip
  capacity = capacity or chip.hbm_bytes
  need = f"needs {_gib(needed)}" if needed else "needs more"
  return (
    f"{config.model.name} x{models_scales(config)} at batch {config.batch_size} "
    f"({config.batch_size // tpu_slice.chips} per chip, {config.model.dtype}) does not fit "
    f"a {chip.device_kind} chip of {tpu_slice.accelerator_type}: {need} of HBM per chip, "
    f"capacity {_gib(capacity)}; lower --config.batch_size (--max_batch finds the largest)"
  )


def models_scales(config) -> str:

  return "/x".join(map(str, models.model_scales(config.model)))


# ------------------------------------------------------------------ command line


def check(
  config, accelerator_type: str, *, max_batch=False, inference=True, log=print, devices=None
) -> dict:
  """The whole report for `config` on `accelerator_type` (a notebook can call this).

  Raises UserError (bad type, config, missing libtpu) and OutOfMemory (does not fit)."""
  tpu_slice = accelerators.slice_for(accelerator_type)
  # The data is not read here: validate the rest (a folder source without a folder yet is
  # fine: the check runs before the data is uploaded).
  checked = config.copy_and_resolve_references()
  checked.data.source = "demo"
  config_lib.validate(checked, 1)
  if config.batch_size % tpu_slice.chips and not max_batch:
    raise errors.ConfigError(
      f"config.batch_size={config.batch_size} does not divide over the {tpu_slice.chips} "
      f"chips of {accelerator_type}: allowed a multiple of {tpu_slice.chips}"
    )
  devices = devices_for(tpu_slice) if devices is None else devices
  best = None
  if max_batch:
    log(f"searching the largest batch that fits {accelerator_type}:")
    best, config = find_max_batch(config, tpu_slice, devices, log, exact=max_batch != "quick")
  report = build_report(config, tpu_slice, devices)
  if best is not None:
    report["max_batch"] = best
  if inference:
    add_inference(report, config, devices)
  return report


def _check_output_path(flag: str, path: str | None) -> None:
  """Refuses, before minutes of compiling, an output file that cannot be written."""
  if not path:
    return
  path = os.path.abspath(os.path.expanduser(path))
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if os.path.isdir(path):
    raise errors.UserError(f"--{flag}={path}: a folder; give a file name")
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise errors.UserError(
      f"--{flag}={path}: cannot write there ({parent} is not a writable folder)"
    )


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  config = FLAGS.config
  if bool(FLAGS.tpu) == bool(FLAGS.gpu):
    raise errors.UserError("give one of --tpu=TYPE (e.g. v5litepod-8) or --gpu=TYPE (h100-8)")
  accelerator = FLAGS.tpu or FLAGS.gpu
  kind = "tpu" if FLAGS.tpu else "cuda"
  tpu_slice = accelerators.slice_for(accelerator)
  if tpu_slice.chip.platform != kind:
    flag = "--gpu" if kind == "tpu" else "--tpu"
    raise errors.UserError(f"{accelerator!r} is not a {kind.upper()} type: give it as {flag}")
  _check_output_path("output_json", FLAGS.output_json)
  _check_output_path("dump_hlo", FLAGS.dump_hlo)
  devices = devices_for(tpu_slice)
  cli.log(f"compiling for {accelerator} (a minute or more for the large networks; Ctrl-C stops it)")
  try:
    report = _interruptible(
      lambda: check(
        config,
        accelerator,
        max_batch=FLAGS.max_batch,
        inference=FLAGS.inference,
        log=cli.log,
        devices=devices,
      )
    )
  except OutOfMemory as e:
    if FLAGS.output_json:
      _write_json(
        FLAGS.output_json,
        {
          "accelerator": accelerator,
          "chips": tpu_slice.chips,
          "hosts": tpu_slice.hosts,
          "batch_size": config.batch_size,
          "fits": False,
          "hbm_bytes_per_chip": e.needed,
          "hbm_capacity_bytes_per_chip": e.capacity or tpu_slice.chip.hbm_bytes,
          "compiler_message": str(e),
        },
      )
    raise errors.UserError(does_not_fit_message(config, tpu_slice, e.needed, e.capacity)) from None
  print(format_report(report), flush=True)
  hlo = report.pop("hlo")
  if FLAGS.dump_hlo:
    path = os.path.expanduser(FLAGS.dump_hlo)
    try:
      with open(path, "w") as f:
        f.write("\n".join(hlo.values()))
    except OSError as e:
      raise errors.UserError(f"--dump_hlo={path}: cannot write it: {errors.one_line(e)}") from e
  if FLAGS.output_json:
    _write_json(FLAGS.output_json, report)
  if not report["fits"]:
    raise errors.UserError(
      does_not_fit_message(config, tpu_slice, report["hbm_bytes_per_chip"], None)
    )
  return 0


def _interruptible(fn):
  """fn() in a worker thread: a compile is one long call into the compiler, during which
  the main thread could not take Ctrl-C; waiting here, it can (and stops at once)."""
  result = {}

  def work():
    try:
      result["value"] = fn()
    except BaseException as e:  # handed to the main thread
      result["error"] = e

  worker = threading.Thread(target=work, daemon=True, name="compile")
  worker.start()
  try:
    while worker.is_alive():
      worker.join(0.1)
  except KeyboardInterrupt:
    if _real_stderr is not None:  # the compile's stderr is captured: the message must show
      os.dup2(_real_stderr, 2)
    raise
  if "error" in result:
    raise result["error"]
  return result["value"]


def _write_json(path: str, data: dict) -> None:
  path = os.path.expanduser(path)
  try:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
      json.dump(data, f, indent=2)
      f.write("\n")
  except OSError as e:
    raise errors.UserError(f"--output_json={path}: cannot write it: {errors.one_line(e)}") from e


def _define_flags():
  flags.DEFINE_string("tpu", None, "Cloud TPU accelerator type, e.g. v5litepod-8, v4-32, v6e-8.")
  flags.DEFINE_string("gpu", None, "GPU host: h100-1 .. h100-8 (NVIDIA H100 SXM 80GB).")
  config_lib.define_config_flag()
  flags.DEFINE_bool("max_batch", False, "Find the largest global batch that fits.")
  flags.DEFINE_bool("inference", True, "Also compile the inference forward for a DIV2K tile.")
  cli.DEFINE_path("output_json", None, "Write the report to this JSON file.")
  cli.DEFINE_path("dump_hlo", None, "Write the compiled train step's HLO to this file.")
  flags.mark_flags_as_required(["config"])


def run() -> None:
  """`edsr-aot` (a console script, pyproject.toml) = `python -m edsr_jax.aot`."""
  _define_flags()
  cli.run(main, config_lib.check_config_args, start_jax_first=False)


if __name__ == "__main__":
  run()
