r"""Train steps/s, FLOPs and memory: our jitted step next to the official PyTorch step.

  python benchmarks/train_throughput.py              # CPU: EDSR baseline, batch 16, f32 + bf16
  python benchmarks/train_throughput.py --peak_tflops=989   # a GPU (e.g. H100 SXM dense bf16):
                                                     # baseline + full, batch 16 + 64
  python benchmarks/train_throughput.py --networks=demo --patch_size=32  # the demo's network
  python benchmarks/train_throughput.py --smoke      # a tiny network, seconds (the tests)

Both sides train the same network (PyTorch: the official architecture from
tests/torch_reference.py) with Adam and the L1 loss on 0..255, on the same batch size and
LR patch (x2), one after the other on the same machine, so the ratio is meaningful;
absolute numbers depend on the machine and on what else runs on it.

- Device (`--device=auto`): PyTorch on CUDA when `torch.cuda.is_available()`, else CPU;
  JAX on its default backend (GPU with `jax[cuda12]`). One device each: the batch is not
  split, so the numbers are per chip. On a TPU there is no PyTorch side ('-').
- dtypes: `float32` is JAX's default precision against PyTorch with TF32 allowed
  (`torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True`),
  which on a GPU means TF32 tensor cores on both sides; `bfloat16` is our
  `model.dtype=bfloat16` (parameters, Adam and the loss in float32) against
  `torch.autocast(dtype=torch.bfloat16)` around the forward pass.
- FLOPs per step come from XLA's cost analysis of our compiled step
  (`jit(...).lower(...).compile().cost_analysis()`); it does not count the conv taps that
  fall on the zero padding (~3% at patch 48). The same count is used for PyTorch's
  TFLOP/s: both compute the same network. MFU = achieved TFLOP/s / `--peak_tflops`.
- Timing: `--warmup` steps (2; compiling, cuDNN autotuning), then `--steps` steps with no
  host sync inside; the clock stops after `jax.block_until_ready(state)` resp.
  `torch.cuda.synchronize()`. Neither side reads the loss every step.
- Peak memory: on a GPU, the allocator's peak (`device.memory_stats()['peak_bytes_in_use']`,
  `torch.cuda.max_memory_allocated()`); on a CPU, the process's peak resident memory
  (VmHWM), libraries included. Each measurement runs in its own process (so peaks are per
  row, and JAX's GPU memory preallocation cannot starve PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import harness

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name: (residual blocks, features, res_scale); all x2.
NETWORKS = {
  "tiny": (2, 8, 1.0),
  "demo": (8, 32, 1.0),  # configs/demo.py
  "baseline": (16, 64, 1.0),  # configs/edsr.py:x2,baseline
  "full": (32, 256, 0.1),  # configs/edsr.py:x2
}
SCALE = 2
DTYPES = ("float32", "bfloat16")


def peak_rss_bytes() -> int | None:
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def cost_flops(compiled) -> float | None:
  """FLOPs from XLA's cost analysis (a dict, or a list of one dict in older JAX)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


# ------------------------------------------------------------------ children


def jax_child(spec: dict) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  sys.path.insert(0, str(ROOT))
  from edsr_jax import config_lib, models, train

  blocks, features, res_scale = NETWORKS[spec["network"]]
  config = config_lib.base_config()
  config.model.num_blocks, config.model.num_features = blocks, features
  config.model.res_scale, config.model.scales = res_scale, (SCALE,)
  config.model.dtype = spec["dtype"]
  config.batch_size, config.patch_size = spec["batch"], spec["patch"]
  device = jax.devices()[0]
  mesh = jax.make_mesh((1,), (train.DATA_AXIS,), devices=[device])
  model = models.create_model(config.model, jnp.dtype(spec["dtype"]))
  tx = train.make_optimizer(config)
  state = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
  step_fn = train.make_train_step(model, tx, mesh)
  b, p = spec["batch"], spec["patch"]
  rng = np.random.default_rng(0)
  sharding = NamedSharding(mesh, P(train.DATA_AXIS))
  batch = {
    "lr": jax.device_put(rng.integers(0, 256, (b, p, p, 3), np.uint8), sharding),
    "hr": jax.device_put(rng.integers(0, 256, (b, p * SCALE, p * SCALE, 3), np.uint8), sharding),
  }
  compiled = step_fn.lower(state, batch, scale=SCALE).compile()
  flops = cost_flops(compiled)
  for _ in range(spec["warmup"]):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(spec["steps"]):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  loss = float(metrics["loss"])
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    peak, peak_kind = stats["peak_bytes_in_use"], "device"
  else:
    peak, peak_kind = peak_rss_bytes(), "rss"
  return {
    "steps_per_sec": spec["steps"] / seconds,
    "flops": flops,
    "peak": peak,
    "load": os.getloadavg()[0],
    "peak_kind": peak_kind,
    "loss": loss,
    "platform": device.platform,
    "device": getattr(device, "device_kind", device.platform),
    "version": f"JAX {jax.__version__}",
  }


def torch_child(spec: dict) -> dict:
  import torch

  sys.path.insert(0, str(ROOT / "tests"))
  import torch_reference

  cuda = spec["device"] != "cpu" and torch.cuda.is_available()
  if spec["device"] == "cuda" and not cuda:
    raise SystemExit("--device=cuda, but torch.cuda.is_available() is False")
  dev = torch.device("cuda" if cuda else "cpu")
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convs
  torch.manual_seed(0)
  blocks, features, res_scale = NETWORKS[spec["network"]]
  net = torch_reference.EDSR(SCALE, blocks, features, res_scale).to(dev)
  memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
  net = net.to(memory_format=memory_format)
  opt = torch.optim.Adam(
    [q for q in net.parameters() if q.requires_grad], lr=1e-4, betas=(0.9, 0.999), eps=1e-8
  )
  b, p = spec["batch"], spec["patch"]
  lr = torch.randint(0, 256, (b, 3, p, p), device=dev).float()
  lr = lr.contiguous(memory_format=memory_format)
  hr = torch.randint(0, 256, (b, 3, p * SCALE, p * SCALE), device=dev).float()
  bf16 = spec["dtype"] == "bfloat16"

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      sr = net(lr)
    loss = torch.nn.functional.l1_loss(sr.float(), hr)
    loss.backward()
    opt.step()
    return loss

  def sync():
    if cuda:
      torch.cuda.synchronize()

  for _ in range(spec["warmup"]):
    step()
  sync()
  if cuda:
    torch.cuda.reset_peak_memory_stats()
    step()  # the peak of a steady-state step
    sync()
  start = time.perf_counter()
  for _ in range(spec["steps"]):
    loss = step()
  sync()
  seconds = time.perf_counter() - start
  if cuda:
    peak, peak_kind = torch.cuda.max_memory_allocated(), "device"
    device = torch.cuda.get_device_name(dev)
  else:
    peak, peak_kind, device = peak_rss_bytes(), "rss", "cpu"
  return {
    "steps_per_sec": spec["steps"] / seconds,
    "peak": peak,
    "peak_kind": peak_kind,
    "load": os.getloadavg()[0],
    "loss": float(loss),
    "platform": dev.type,
    "device": device,
    "version": f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)",
  }


def probe_child(spec: dict) -> dict:
  """Which backends the children will get (run in a child: JAX would take the GPU here)."""
  import jax

  out = {"jax": jax.default_backend(), "jax_device": jax.devices()[0].device_kind, "torch": None}
  try:
    import torch

    out["torch"] = "cuda" if torch.cuda.is_available() else "cpu"
  except ImportError:
    pass
  return out


CHILDREN = {"jax": jax_child, "torch": torch_child, "probe": probe_child}


def run_child(kind: str, spec: dict, env: dict) -> dict:
  result = harness.run(__file__, {"kind": kind, **spec}, env, ROOT)
  if "error" in result:
    return {"error": f"{kind} failed ({result['error']})"}
  return result


# ------------------------------------------------------------------ table


def fmt(value, spec: str, suffix: str = "") -> str:
  return "-" if value is None else format(value, spec) + suffix


def gb(result: dict) -> str:
  if not result or result.get("peak") is None:
    return "-"
  return f"{result['peak'] / 1e9:.2f}{'' if result['peak_kind'] == 'device' else ' rss'}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--networks",
    default=None,
    help=f"comma list of {', '.join(NETWORKS)} (default: baseline on CPU, "
    "baseline,full on an accelerator)",
  )
  parser.add_argument(
    "--batch_sizes", default=None, help="comma list (default: 16 on CPU, 16,64 on an accelerator)"
  )
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--patch_size", type=int, default=None, help="LR patch side (48)")
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="timed steps per row (default: 10 on CPU, 100 on an accelerator)",
  )
  parser.add_argument(
    "--rounds",
    type=int,
    default=1,
    help="measure every row this many times, in turn; report the fastest",
  )
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
  parser.add_argument(
    "--peak_tflops",
    type=float,
    default=None,
    help="the device's peak TFLOP/s for the dtype, for MFU",
  )
  parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
  parser.add_argument("--frameworks", default="jax,torch", help="jax,torch or either one")
  parser.add_argument(
    "--torch_channels_last",
    action="store_true",
    help="PyTorch in channels_last (the official code uses NCHW)",
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="tiny network, batch 4, patch 16, 2 steps: a test in seconds",
  )
  parser.add_argument(
    "--json", default=None, help="also write the rows to this JSON file (after each row)"
  )
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    spec = json.loads(args.child)
    harness.answer(CHILDREN[spec["kind"]](spec))
    return

  # The checkout first; what PYTHONPATH already holds (packages installed with --target,
  # as benchmarks/gpu_check.sh does on a GPU image) stays visible to the children.
  pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="3")
  if args.device == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
  probe = run_child("probe", {}, dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
  if "error" in probe:
    raise SystemExit(probe["error"])
  accelerator = probe["jax"] != "cpu" or probe["torch"] == "cuda"
  if args.smoke:
    networks, batches, patch, steps = ["tiny"], [4], args.patch_size or 16, args.steps or 2
  else:
    networks = (args.networks or ("baseline,full" if accelerator else "baseline")).split(",")
    batches = [int(b) for b in (args.batch_sizes or ("16,64" if accelerator else "16")).split(",")]
    patch, steps = args.patch_size or 48, args.steps or (100 if accelerator else 10)
  dtypes = args.dtypes.split(",")
  for name in networks:
    if name not in NETWORKS:
      parser.error(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
  for dtype in dtypes:
    if dtype not in DTYPES:
      parser.error(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
  frameworks = args.frameworks.split(",")
  # PyTorch runs where JAX runs: CUDA next to JAX's GPU, CPU next to JAX's CPU. On a TPU
  # there is no PyTorch counterpart.
  torch_ok = probe["torch"] is not None and (
    (probe["jax"] == "gpu" and probe["torch"] == "cuda") or probe["jax"] == "cpu"
  )
  if probe["jax"] == "cpu" and probe["torch"] == "cuda":
    env["CUDA_VISIBLE_DEVICES"] = ""  # JAX has no GPU here: compare on the CPU
  if "torch" in frameworks and not torch_ok:
    print(
      f"note: no PyTorch side (JAX on {probe['jax']}, PyTorch {probe['torch'] or 'not installed'})"
    )
    frameworks = [f for f in frameworks if f != "torch"]

  torch_device = "-"
  if "torch" in frameworks:
    torch_device = "cpu" if env.get("CUDA_VISIBLE_DEVICES") == "" else probe["torch"]
  print(
    f"host: {harness.cpu_model()}, {os.cpu_count()} CPUs; JAX backend {probe['jax']} "
    f"({probe['jax_device']}); PyTorch device {torch_device}",
    flush=True,
  )
  print(
    f"x{SCALE}, LR patch {patch}, {steps} timed steps per row after {args.warmup}"
    f"{', PyTorch channels_last' if args.torch_channels_last else ''}",
    flush=True,
  )

  specs = [
    dict(
      network=name,
      batch=batch,
      patch=patch,
      dtype=dtype,
      steps=steps,
      warmup=max(1, args.warmup),
      device=args.device,
      channels_last=args.torch_channels_last,
    )
    for name in networks
    for batch in batches
    for dtype in dtypes
  ]
  results = [{fw: [] for fw in frameworks} for _ in specs]
  versions = {}

  def collect(measured: int) -> list[dict]:
    rows = []
    for spec, result in list(zip(specs, results, strict=True))[:measured]:
      row = {**spec}
      for fw, outs in result.items():
        if outs:
          outs = sorted(outs, key=lambda o: o["steps_per_sec"])
          row[fw] = {**outs[-1], "rounds": [o["steps_per_sec"] for o in outs]}
      rows.append(row)
    return rows

  # Rounds go over all rows in turn, so that a slow spell of a shared host spreads over
  # the rows instead of landing on one; each row reports its fastest round (other work on
  # the host only ever slows a measurement down).
  for round_ in range(args.rounds):
    for k, (spec, result) in enumerate(zip(specs, results, strict=True)):
      for fw in frameworks:
        out = run_child(fw, spec, env)
        if "error" in out:
          print(
            f"  {spec['network']} batch {spec['batch']} {spec['dtype']}: {out['error']}", flush=True
          )
          continue
        versions[fw] = f"{out['version']} on {out['device']}"
        result[fw].append(out)
      print(
        f"  done: {spec['network']} batch {spec['batch']} {spec['dtype']}"
        f"{f' (round {round_ + 1} of {args.rounds})' if args.rounds > 1 else ''}",
        flush=True,
      )
      if args.json and round_ == 0:  # the rows so far: a run cut short keeps them
        pathlib.Path(args.json).write_text(json.dumps(collect(k + 1), indent=2))
  rows = collect(len(specs))

  print("\n" + "; ".join(versions.values()))
  header = (
    f"{'network':<9}{'batch':>6} {'dtype':<9}{'JAX steps/s':>12}{'PyTorch steps/s':>16}"
    f"{'ratio':>8}{'GFLOP/step':>11}{'JAX TFLOP/s':>12}{'PT TFLOP/s':>11}"
    f"{'JAX MFU':>9}{'PT MFU':>9}{'JAX peak GB':>12}{'PT peak GB':>11}"
  )
  print(header + "\n" + "-" * len(header))
  for row in rows:
    ours, theirs = row.get("jax") or {}, row.get("torch") or {}
    j, t = ours.get("steps_per_sec"), theirs.get("steps_per_sec")
    flops = ours.get("flops")
    j_tf = j * flops / 1e12 if j and flops else None
    t_tf = t * flops / 1e12 if t and flops else None
    peak = args.peak_tflops
    print(
      f"{row['network']:<9}{row['batch']:>6} {row['dtype']:<9}{fmt(j, '.3f'):>12}"
      f"{fmt(t, '.3f'):>16}{fmt(j / t if j and t else None, '.2f', 'x'):>8}"
      f"{fmt(flops / 1e9 if flops else None, '.2f'):>11}{fmt(j_tf, '.3g'):>12}"
      f" {fmt(t_tf, '.3g'):>10}"
      f" {fmt(j_tf / peak * 100 if j_tf and peak else None, '.3g', '%'):>8}"
      f" {fmt(t_tf / peak * 100 if t_tf and peak else None, '.3g', '%'):>8}"
      f"{gb(ours):>12}{gb(theirs):>11}"
    )
  spreads = [
    f"{row['network']} {row['batch']} {row['dtype']} {fw}: "
    + "/".join(f"{v:.3f}" for v in row[fw]["rounds"])
    for row in rows
    for fw in ("jax", "torch")
    if len(row.get(fw, {}).get("rounds", [])) > 1
  ]
  if spreads:
    print("\nsteps/s of each round, sorted: " + "; ".join(spreads))
  loads = [o["load"] for result in results for outs in result.values() for o in outs]
  if loads:
    print(
      f"\n1-minute load average at the end of each measurement: {min(loads):.1f} to "
      f"{max(loads):.1f} ({os.cpu_count()} CPUs; above that, other work shared the CPUs)"
    )
  print(
    "\nratio = JAX / PyTorch steps/s. GFLOP/step from XLA's cost analysis of our step (both "
    "sides compute the same network). float32 = TF32 on GPU (both sides). "
    "'rss' = process peak resident memory (CPU), else the device allocator's peak."
  )
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
  main()
