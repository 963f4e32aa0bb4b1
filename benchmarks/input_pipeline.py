"""Is training input-bound? The input pipeline's patches/s next to the train step's.

  python benchmarks/input_pipeline.py [--data_dir=$EDSR_SHARED_DATA/benchmark]

Measures, in one run on this host's CPU:
- `PatchSampler.batch` alone (batch 16, LR patch 48, x2) on the HR images of B100, Set14
  and Set5 (with their LR files) as loaded by `data.load_folder`;
- the same through `prefetch_batches` onto the CPU device (host batch -> jax.Array);
- what the CPU train step consumes (`train.create_train_state` / `make_train_step`) for
  the EDSR baseline x2 and a small EDSR, fed one fixed device batch, and the small one
  fed by `prefetch_batches` (so any input stall or CPU contention shows).
Targets: the pipeline >= 10x what the train step consumes and >= 2,000 patches/s/host.
"""

import argparse
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from edsr_jax import config_lib, data, models, train  # noqa: E402

BATCH, PATCH, SCALE = 16, 48, 2
SETS = ("B100", "Set14", "Set5")


def load_images(data_dir: pathlib.Path) -> data.SRImages:
  parts = [data.load_folder(data_dir / name, (SCALE,), "valid") for name in SETS]
  return data.SRImages(
    [n for p in parts for n in p.names],
    [h for p in parts for h in p.hr],
    {SCALE: [lr for p in parts for lr in p.lr[SCALE]]},
  )


def rate(run_once, min_seconds: float, min_calls: int = 3) -> float:
  """Calls per second of `run_once` over at least `min_seconds` (after one warm-up call)."""
  run_once(-1)
  n, start = 0, time.perf_counter()
  while n < min_calls or time.perf_counter() - start < min_seconds:
    run_once(n)
    n += 1
  return n / (time.perf_counter() - start)


def sampler_rate(sampler, seconds) -> float:
  return BATCH * rate(lambda i: sampler.batch(i + 1, SCALE), seconds)


def prefetch_rate(sampler, sharding, seconds, steps: int = 2000) -> float:
  it = data.prefetch_batches(sampler, range(steps), (SCALE,), sharding)
  jax.block_until_ready(next(it)[2])
  n, start = 0, time.perf_counter()
  for _, _, batch in it:
    jax.block_until_ready(batch)
    n += 1
    if time.perf_counter() - start > seconds:
      break
  elapsed = time.perf_counter() - start
  it.close()
  return BATCH * n / elapsed


def train_rates(num_blocks, num_features, sampler, sharding, seconds, with_prefetch):
  config = config_lib.base_config()
  config.model.num_blocks, config.model.num_features = num_blocks, num_features
  config.batch_size, config.patch_size = BATCH, PATCH
  mesh = jax.make_mesh((1,), (train.DATA_AXIS,), devices=jax.devices()[:1])
  model = models.create_model(config.model, jnp.float32)
  tx = train.make_optimizer(config)
  state = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
  step_fn = train.make_train_step(model, tx, mesh)
  fixed = {k: jax.device_put(v, sharding) for k, v in sampler.batch(0, SCALE).items()}
  holder = {"state": state}

  def fixed_step(_):
    holder["state"], metrics = step_fn(holder["state"], fixed, scale=SCALE)
    jax.block_until_ready(metrics)

  fixed_rate = BATCH * rate(fixed_step, seconds)
  fed_rate = None
  if with_prefetch:
    n, start = 0, None
    for _, _, batch in data.prefetch_batches(sampler, range(10**6), (SCALE,), sharding):
      holder["state"], metrics = step_fn(holder["state"], batch, scale=SCALE)
      jax.block_until_ready(metrics)
      if start is None:
        start = time.perf_counter()  # the first step includes the prefetch warm-up
      else:
        n += 1
        if time.perf_counter() - start > seconds:
          break
    fed_rate = BATCH * n / (time.perf_counter() - start)
  params = sum(x.size for x in jax.tree.leaves(holder["state"].params))
  return params, fixed_rate, fed_rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  default = pathlib.Path(os.environ.get("EDSR_SHARED_DATA", "../shared/data")) / "benchmark"
  parser.add_argument("--data_dir", type=pathlib.Path, default=default)
  parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
  parser.add_argument("--train_seconds", type=float, default=20.0, help="per train model")
  args = parser.parse_args()

  start = time.perf_counter()
  images = load_images(args.data_dir)
  print(
    f"{len(images)} images ({', '.join(SETS)}) loaded in {time.perf_counter() - start:.1f} s;"
    f" {os.cpu_count()} CPUs, JAX on {jax.devices()[0].platform}"
  )
  sampler = data.PatchSampler(images, scales=(SCALE,), patch_size=PATCH, global_batch=BATCH, seed=0)
  sharding = NamedSharding(
    jax.make_mesh((1,), (train.DATA_AXIS,), devices=jax.devices()[:1]), P(train.DATA_AXIS)
  )

  pipeline = {
    "PatchSampler.batch": sampler_rate(sampler, args.seconds),
    "prefetch_batches -> CPU device": prefetch_rate(sampler, sharding, args.seconds),
  }
  consumers = {}
  for label, blocks, features, fed in (
    ("EDSR baseline x2 (B16 F64)", 16, 64, False),
    ("small EDSR x2 (B4 F32)", 4, 32, True),
  ):
    params, fixed_rate, fed_rate = train_rates(
      blocks, features, sampler, sharding, args.train_seconds, fed
    )
    consumers[f"train step, {label}, {params:,} params, fixed batch"] = fixed_rate
    if fed_rate is not None:
      consumers[f"train step, {label}, fed by prefetch_batches"] = fed_rate

  slowest = min(pipeline.values())
  width = max(map(len, [*pipeline, *consumers]))
  print(f"\nbatch {BATCH}, LR patch {PATCH}x{PATCH}, x{SCALE}; patches/s")
  print(f"{'':{width}}  {'patches/s':>10}  {'pipeline / this':>15}")
  for name, value in pipeline.items():
    print(f"{name:{width}}  {value:10,.0f}  {'':>15}")
  for name, value in consumers.items():
    print(f"{name:{width}}  {value:10,.1f}  {slowest / value:14,.0f}x")
  need = 10 * max(consumers.values())
  print(
    f"\ntarget >= 2,000 patches/s: {'met' if slowest >= 2000 else 'MISSED'} "
    f"({slowest:,.0f}); target >= 10x the train step ({need:,.0f}): "
    f"{'met' if slowest >= need else 'MISSED'}"
  )


if __name__ == "__main__":
  main()
