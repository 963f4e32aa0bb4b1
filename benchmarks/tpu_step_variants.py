"""What the TPU compiler says about variants of the train step: before/after of each fix.

  .venv/bin/python benchmarks/tpu_step_variants.py [--tpu=v5litepod-8] \
      [--config=configs/edsr.py:x2,baseline] [--batch=128] [--dtype=float32]

Compiles (edsr_jax.aot, no TPU needed) the production step and, side by side, the same
step with one thing changed back, and prints per-chip HBM, temporaries and the compiler's
bytes accessed and FLOPs:

- "pixel shuffle, PyTorch order": the upsampler as it was before `models.ShuffleConv`
  (conv to F*r*r channels in PyTorch's (c, i, j) order, then `models.pixel_shuffle`);
- "no non-finite guard": the step without the selects that keep a non-finite update out
  of the state (to price the guard; it stays).
"""

import argparse
import contextlib

import jax
import jax.numpy as jnp

from edsr_jax import accelerators, aot, config_lib, models, train


class PyTorchOrderUpsampler(models.Upsampler):
  """The upsampler before ShuffleConv: same parameters, shuffle in PyTorch's order."""

  @models.nn.compact
  def __call__(self, x):
    for i, r in enumerate(models.UPSAMPLE_STAGES[self.scale]):
      x = models._conv(self.features * r * r, 3, self.dtype, name=f"conv{i}")(x)
      x = models.pixel_shuffle(x, r)
    return x


def step_without_guard(state, batch, *, model, tx, scale):
  lr, hr = batch["lr"].astype(jnp.float32), batch["hr"].astype(jnp.float32)

  def loss_fn(params):
    return jnp.mean(jnp.abs(model.apply({"params": params}, lr, scale) - hr))

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  active = models.active_params(state.params, scale)
  params, opt_state = tx.update(grads, state.opt_state, state.params, state.step, active)
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new, {"loss": loss, "finite": jnp.isfinite(loss)}


@contextlib.contextmanager
def replaced(module, name, value):
  """`module.name` is `value` inside the block (the step is traced anew at each compile)."""
  original = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, original)


def measure(config, devices):
  (compiled,) = aot.compile_train_steps(config, devices).values()
  return compiled


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tpu", default="v5litepod-8")
  parser.add_argument("--config", default="configs/edsr.py:x2,baseline")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  config = config_lib.load_config_file(args.config)
  config.batch_size, config.model.dtype = args.batch, args.dtype
  devices = aot.tpu_devices(accelerators.slice_for(args.tpu))

  rows = [("production step", measure(config, devices))]
  with replaced(models, "Upsampler", PyTorchOrderUpsampler):
    rows.append(("pixel shuffle, PyTorch order", measure(config, devices)))
  with replaced(train, "train_step", step_without_guard):
    rows.append(("no non-finite guard", measure(config, devices)))

  def mib(n):
    return f"{n / 2**20:9.1f}"

  print(
    f"{args.tpu}, {args.config}, batch {args.batch} ({args.batch // len(devices)} per chip), "
    f"{args.dtype}; compiled by the TPU compiler, per chip"
  )
  print(f"{'variant':30s} {'HBM MiB':>9s} {'temp MiB':>9s} {'GB accessed':>11s} {'GFLOP':>8s}")
  base = rows[0][1]
  for name, c in rows:
    print(
      f"{name:30s} {mib(c.total_bytes)} {mib(c.temp_bytes)} {c.bytes_accessed / 1e9:11.3f} "
      f"{c.flops / 1e9:8.2f}"
      + (
        ""
        if c is base
        else f"   ({c.bytes_accessed / base.bytes_accessed:.3f}x the production step's bytes,"
        f" {c.temp_bytes / max(base.temp_bytes, 1):.3f}x its temporaries)"
      )
    )


if __name__ == "__main__":
  main()
