"""Train steps/s: this project's jitted step next to the official code's PyTorch step.

  python benchmarks/train_throughput.py [--steps=20] [--presets=demo,edsr_baseline_x2]

Both sides train the same network (PyTorch: the official architecture from
tests/torch_reference.py) with Adam and the L1 loss on the same batch size and patch, in
one run on this machine, so the ratio is meaningful; absolute numbers depend on the
machine. Needs torch (a test dependency). Prints a table.
"""

import argparse
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from edsr_jax import config_lib, models, train  # noqa: E402


def jax_steps_per_sec(config, steps: int) -> float:
  model = models.create_model(config.model)
  tx = train.make_optimizer(config)
  mesh = train.make_mesh()
  state = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
  step_fn = train.make_train_step(model, tx, mesh)
  p, s, b = config.patch_size, config.model.scale, config.batch_size
  rng = np.random.default_rng(0)
  batch = {"lr": jnp.asarray(rng.integers(0, 256, (b, p, p, 3), np.uint8)),
           "hr": jnp.asarray(rng.integers(0, 256, (b, p * s, p * s, 3), np.uint8))}
  for _ in range(2):  # compile and warm up
    state, metrics = step_fn(state, batch, scale=s)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch, scale=s)
  jax.block_until_ready(metrics)
  return steps / (time.perf_counter() - start)


def torch_steps_per_sec(config, steps: int) -> float:
  import torch
  import torch_reference

  torch.manual_seed(0)
  m = config.model
  net = torch_reference.EDSR(m.scale, m.num_blocks, m.num_features, m.res_scale)
  opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=1e-4,
                         betas=(0.9, 0.999), eps=1e-8)
  p, s, b = config.patch_size, m.scale, config.batch_size
  lr = torch.randint(0, 256, (b, 3, p, p)).float()
  hr = torch.randint(0, 256, (b, 3, p * s, p * s)).float()

  def step():
    opt.zero_grad()
    loss = torch.nn.functional.l1_loss(net(lr), hr)
    loss.backward()
    opt.step()
    return loss.item()  # the official loop also reads the loss every step

  for _ in range(2):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return steps / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--presets", default="demo,edsr_baseline_x2")
  args = parser.parse_args()
  import torch

  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, "
        f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)")
  rows = []
  for preset in args.presets.split(","):
    config = config_lib.load_config_file(ROOT / "configs" / f"{preset}.py")
    config.batch_size, config.patch_size = 16, 48
    ours = jax_steps_per_sec(config, args.steps)
    theirs = torch_steps_per_sec(config, args.steps)
    rows.append((preset, ours, theirs))
  print(f"\n{'network (batch 16, LR patch 48, x2)':<38}{'JAX steps/s':>12}"
        f"{'PyTorch steps/s':>17}{'ratio':>8}")
  for preset, ours, theirs in rows:
    print(f"{preset:<38}{ours:>12.2f}{theirs:>17.2f}{ours / theirs:>7.2f}x")


if __name__ == "__main__":
  main()
