"""The README's TPU table, compiled by the TPU compiler (`edsr_jax.aot`) on any machine.

Every preset on v4-8, v5litepod-8, v6e-8 and one host of 8 H100 GPUs, in float32 and
bfloat16, at batch 16 and at the largest batch that fits, plus one multi-host slice
(v5litepod-16). Each row is one ahead-of-time compile of the production train step; the
step times are roofline estimates, not runs (for the GPU, compute-bound only: its
compiler gives no cost analysis).

  .venv/bin/python benchmarks/tpu_table.py --json=docs/tpu_table.json   # resumable
  .venv/bin/python benchmarks/tpu_table.py --json=docs/tpu_table.json --markdown > docs/tpu.md

Rows already in the JSON file are kept, so an interrupted run continues where it
stopped. On a 2-core CPU a baseline compile takes ~20 s, EDSR's ~1 min, and the largest
batch takes 4-6 compiles.
"""

import argparse
import json
import os
import sys
import time

PRESETS = {
  "EDSR baseline x2": "configs/edsr.py:x2,baseline",
  "EDSR x2": "configs/edsr.py:x2",
  "EDSR baseline x4": "configs/edsr.py:x4,baseline",
  "EDSR x4": "configs/edsr.py:x4",
  "MDSR": "configs/mdsr.py",
}
SINGLE_HOST = ("v5litepod-8", "v4-8", "v6e-8", "h100-8")
MULTI_HOST = (("EDSR x2", "v5litepod-16"),)
DTYPES = ("float32", "bfloat16")


def rows_to_make():
  """In the table's order."""
  for preset in PRESETS:
    for tpu in SINGLE_HOST:
      for dtype in DTYPES:
        yield preset, tpu, dtype
  for preset, tpu in MULTI_HOST:
    for dtype in DTYPES:
      yield preset, tpu, dtype


def rows_by_cost():
  """The order to compile them in: the x2 presets on TPU first, then the multi-host slice
  and the GPU, MDSR (three programs per row) last, so that an interrupted run has the
  most-read rows."""
  rank = {"EDSR baseline x2": 0, "EDSR x2": 1, "EDSR baseline x4": 4, "EDSR x4": 5, "MDSR": 6}

  def cost(row):
    preset, tpu, _ = row
    if (preset, tpu) in MULTI_HOST:
      return 2
    return 3 if tpu.startswith("h100") and rank[preset] < 2 else rank[preset]

  return sorted(rows_to_make(), key=cost)


def key(preset, tpu, dtype, which):
  return f"{preset} | {tpu} | {dtype} | {which}"


def summarize(report: dict) -> dict:
  scale = next(iter(report["per_scale"].values()))
  return {
    "batch": report["batch_size"],
    "chips": report["chips"],
    "hosts": report["hosts"],
    "fits": report["fits"],
    "hbm_gib": report["hbm_bytes_per_chip"] / 2**30,
    "capacity_gib": report["hbm_capacity_bytes_per_chip"] / 2**30,
    "donated_gib": report["donated_bytes_per_chip"] / 2**30,
    "flops_ratio": (
      scale["flops_per_step_per_chip"] / scale["analytical_conv_flops_per_chip"]
      if scale["flops_per_step_per_chip"] is not None
      else None
    ),
    "gflops_per_chip": report["flops_per_step_per_chip"] / 1e9,
    "bound": report["bound"],
    "step_ms": report["estimated_step_seconds"] * 1e3,
    "compute_ms": scale["compute_seconds"] * 1e3,
    "memory_ms": scale["memory_seconds"] * 1e3,
    "patches_per_s": report["batch_size"] / report["estimated_step_seconds"],
    "hours_300k": report["estimated_train_hours"] * 300_000 / report["num_train_steps"],
    "conv_dtypes": scale["convolution_dtypes"],
    "collectives": scale["collectives"],
  }


def log(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def make(json_path: str) -> None:
  from edsr_jax import aot, config_lib

  done = {}
  if os.path.exists(json_path):
    with open(json_path) as f:
      done = json.load(f)

  def save():
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(done, f, indent=1)
    os.replace(tmp, json_path)

  # Batch 16 everywhere first (one compile each), then the largest batches.
  for which in ("16", "max"):
    for preset, tpu, dtype in rows_by_cost():
      if key(preset, tpu, dtype, which) in done:
        continue
      config = config_lib.load_config_file(PRESETS[preset])
      config.model.dtype = dtype
      start = time.time()
      # The largest batch: within 5% (or 10% of HBM), each row a compile that fits;
      # `python -m edsr_jax.aot --max_batch` settles it exactly.
      report = aot.check(
        config, tpu, max_batch="quick" if which == "max" else False, inference=False, log=log
      )
      done[key(preset, tpu, dtype, which)] = summarize(report)
      save()
      log(f"{preset} {tpu} {dtype} batch {which}: {time.time() - start:.0f} s")


def markdown(json_path: str) -> str:
  with open(json_path) as f:
    done = json.load(f)
  lines = [
    "| preset | accelerator (chips, hosts) | dtype | batch | HBM per chip (capacity) | "
    "bound | est. step | est. patches/s | est. 300k steps | FLOPs compiled / analytical |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for preset, tpu, dtype in rows_to_make():
    for which in ("16", "max"):
      row = done.get(key(preset, tpu, dtype, which))
      if row is None:
        continue
      batch = f"{row['batch']}" + (" (largest)" if which == "max" else "")
      # GPU rows: FLOPs over peak only (no cost analysis), a bound the step cannot beat.
      at_least, at_most = ("≥ ", "≤ ") if row["flops_ratio"] is None else ("", "")
      hours = row["hours_300k"]
      duration = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
      lines.append(
        f"| {preset} | {tpu} ({row['chips']}, {row['hosts']}) | {dtype} | {batch} | "
        f"{row['hbm_gib']:.2f} GiB ({row['capacity_gib']:.0f}) | "
        f"{row['bound'] if row['flops_ratio'] is not None else 'compute only'} | "
        f"{at_least}{row['step_ms']:.2f} ms | {at_most}{row['patches_per_s']:,.0f} | "
        f"{at_least}{duration} | "
        + ("n/a |" if row["flops_ratio"] is None else f"{row['flops_ratio']:.3f} |")
      )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", required=True, help="rows, made or continued here")
  parser.add_argument("--markdown", action="store_true", help="print the table from --json")
  args = parser.parse_args()
  if args.markdown:
    print(markdown(args.json))
  else:
    make(args.json)


if __name__ == "__main__":
  main()
