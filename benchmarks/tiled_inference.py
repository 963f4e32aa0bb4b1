r"""Peak host memory and wall time of whole-image inference, tiled and untiled.

  python benchmarks/tiled_inference.py            # ~4-5 minutes on a 2-core CPU
  python benchmarks/tiled_inference.py --quick    # ~2 minutes
  python benchmarks/tiled_inference.py --full     # every tiled run to the end (long on CPU)
  python benchmarks/tiled_inference.py --full --only='2040x1356 x4 auto'  # one row

The network is the EDSR baseline (16 blocks, 64 features) with random weights unless
--checkpoint is given: timing and memory do not depend on the weights. Inputs are
random uint8 images of a DIV2K-sized LR (2040x1356, x4) and a 4K-wide LR (3840x2160,
x2), plus a small image (510x340, x4) where tiled and untiled both run in full and
their outputs are compared.

Each configuration runs in a fresh process, whose peak resident memory (VmHWM in
/proc/self/status) is reported: XLA's buffers are not Python allocations, so tracemalloc
cannot see them. "RSS setup" is the peak before the image is processed (imports,
weights, the input and output arrays).

Untiled runs happen only when XLA's own estimate of the program's buffers
(`compiled.memory_analysis()`) fits in half the memory available now; otherwise the
row shows that estimate. Tiled runs go call by call; unless --full, they stop after
--budget_s seconds and the total time is extrapolated from the calls made (every call
has the same shape and cost; marked `~`). The first call includes compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import harness

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# (label, LR height, LR width, scale, tile_size); tile None = automatic, 0 = untiled.
CONFIGS = [
  ("small x4", 340, 510, 4, 0),
  ("small x4", 340, 510, 4, 256),
  ("2040x1356 x4", 1356, 2040, 4, 0),
  ("2040x1356 x4", 1356, 2040, 4, None),
  ("2040x1356 x4", 1356, 2040, 4, 256),
  ("3840x2160 x2", 2160, 3840, 2, 0),
  ("3840x2160 x2", 2160, 3840, 2, None),
  ("3840x2160 x2", 2160, 3840, 2, 256),
]
QUICK = {
  ("small x4", 0),
  ("small x4", 256),
  ("2040x1356 x4", 0),
  ("2040x1356 x4", None),
  ("3840x2160 x2", 0),
  ("3840x2160 x2", None),
}


def _proc_status_gb(key: str) -> float:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(key + ":"):
      return int(line.split()[1]) * 1024 / 1e9  # kB
  raise KeyError(key)


def _mem_available_gb() -> float:
  for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
    if line.startswith("MemAvailable:"):
      return int(line.split()[1]) * 1024 / 1e9
  raise KeyError("MemAvailable")


def _upscaler(scale: int, checkpoint: str | None):
  import jax
  import jax.numpy as jnp

  from edsr_jax import config_lib, inference, models

  if checkpoint:
    return inference.load(checkpoint)
  config = config_lib.base_config()  # EDSR baseline: 16 blocks, 64 features
  config.model.scales = (scale,)
  model = models.create_model(config.model)
  params = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), scale)["params"])(
    jax.random.key(0)
  )
  return inference.Upscaler(config, params)


def measure(spec: dict) -> dict:
  """One configuration, in this fresh process."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  h, w, scale, tile_size = spec["h"], spec["w"], spec["scale"], spec["tile_size"]
  upscaler = _upscaler(scale, spec["checkpoint"])
  image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
  plan = upscaler.plan(image.shape, scale, tile_size=tile_size)
  batch = jax.ShapeDtypeStruct((plan.per_call, *plan.window, 3), jnp.uint8)
  analysis = upscaler._forward.lower(
    upscaler.params, batch, scale=scale, self_ensemble=False, quantize=True
  ).compile()
  xla_gb = analysis.memory_analysis().temp_size_in_bytes / 1e9
  result = {
    "tile": plan.tile_size,
    "window": list(plan.window),
    "tiles": plan.num_tiles,
    "calls": len(plan.calls),
    "per_call": plan.per_call,
    "xla_gb": xla_gb,
  }
  if plan.tile_size == 0 and xla_gb > 0.5 * _mem_available_gb():
    return {
      **result,
      "skipped": f"XLA needs {xla_gb:.1f} GB, {_mem_available_gb():.1f} GB available",
    }

  out = np.zeros((h * scale, w * scale, 3), np.uint8)
  out[...] = 1  # touch every page, as a finished run would
  result["rss_setup_gb"] = _proc_status_gb("VmHWM")
  times = []
  start = time.perf_counter()
  for group in plan.calls:
    t = time.perf_counter()
    upscaler._run_call(image, plan, group, out)
    times.append(time.perf_counter() - t)
    if not spec["full"] and time.perf_counter() - start > spec["budget_s"]:
      break
  done = len(times)
  total = times[0] + (np.mean(times[1:]) * (len(plan.calls) - 1) if done > 1 else 0.0)
  result.update(
    calls_done=done,
    seconds=float(total),
    first_call_s=times[0],
    rss_peak_gb=_proc_status_gb("VmHWM"),
  )
  if spec.get("save") and done == len(plan.calls):
    np.save(spec["save"], out)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer configurations, 15 s each")
  parser.add_argument("--full", action="store_true", help="run every tiled image to the end")
  parser.add_argument(
    "--budget_s",
    type=float,
    default=None,
    help="seconds per tiled run before extrapolating (default 30, quick 15)",
  )
  parser.add_argument("--checkpoint", default=None, help="time a trained model instead")
  parser.add_argument(
    "--only",
    default=None,
    help="run the configurations whose '<image> <tiles>' contains this, "
    "e.g. '2040x1356 x4 auto' or 'untiled'",
  )
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    harness.answer(measure(json.loads(args.child)))
    return

  budget = args.budget_s or (15.0 if args.quick else 30.0)
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  model = f"checkpoint {args.checkpoint}" if args.checkpoint else "EDSR baseline, random weights"
  limit = "none (--full)" if args.full else f"{budget:.0f} s"
  print(
    f"host: {os.cpu_count()} CPUs, {_mem_available_gb():.1f} GB available; model: {model}; "
    f"time budget per tiled run: {limit}",
    flush=True,
  )
  header = (
    f"{'image':<13} {'tiles':<21} {'window':>9} {'calls':>6} {'XLA GB/call':>11} "
    f"{'RSS setup':>9} {'RSS peak':>8} {'time s':>8} {'1st call':>8}"
  )
  print(header + "\n" + "-" * len(header), flush=True)
  outputs = {}
  for label, h, w, scale, tile in CONFIGS:
    if args.quick and (label, tile) not in QUICK:
      continue
    tile_name = {None: "auto", 0: "untiled"}.get(tile, str(tile))
    if args.only and args.only not in f"{label} {tile_name}":
      continue
    save = None
    if label.startswith("small"):
      save = f"/tmp/tiled_inference_{os.getpid()}_{tile}.npy"
    spec = dict(
      h=h,
      w=w,
      scale=scale,
      tile_size=tile,
      full=args.full,
      budget_s=budget,
      checkpoint=args.checkpoint,
      save=save,
    )
    r = harness.run(__file__, spec, env, REPO_ROOT)
    if "error" in r:
      print(f"{label:<13} failed ({r['error']})")
      continue
    kind = "untiled" if r["tile"] == 0 else f"{r['tile']}{' (auto)' if tile is None else ''}"
    kind += f", {r['tiles']} tile{'s' if r['tiles'] > 1 else ''}" if r["tile"] else ""
    window = f"{r['window'][1]}x{r['window'][0]}"
    if "skipped" in r:
      print(
        f"{label:<13} {kind:<21} {window:>9} {r['calls']:>6} {r['xla_gb']:>11.2f} "
        f"  skipped: {r['skipped']}",
        flush=True,
      )
      continue
    seconds = ("~" if r["calls_done"] < r["calls"] else "") + f"{r['seconds']:.1f}"
    print(
      f"{label:<13} {kind:<21} {window:>9} {r['calls']:>6} {r['xla_gb']:>11.2f} "
      f"{r['rss_setup_gb']:>9.2f} {r['rss_peak_gb']:>8.2f} {seconds:>8} "
      f"{r['first_call_s']:>8.1f}",
      flush=True,
    )
    if save and pathlib.Path(save).exists():
      outputs[tile] = save
  if len(outputs) == 2:
    import numpy as np

    a, b = (np.load(p) for p in outputs.values())
    print(
      f"small x4: tiled output {'==' if np.array_equal(a, b) else '!='} untiled output "
      f"({'identical' if np.array_equal(a, b) else f'{int((a != b).sum())} values differ'})"
    )
  for p in outputs.values():
    pathlib.Path(p).unlink()
  if not args.full:
    print("~: extrapolated from the calls run within the budget (all calls cost the same).")


if __name__ == "__main__":
  main()
