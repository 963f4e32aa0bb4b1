"""The train loop in-process: what it writes, donation, compile counts, devices."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import config_lib, models, train

ROOT = pathlib.Path(__file__).parent.parent


def tiny_config(steps=6):
  c = config_lib.load_config_file(ROOT / "configs" / "demo.py")
  c.model.num_blocks = 1
  c.model.num_features = 8
  c.patch_size = 16
  c.batch_size = 4
  c.num_train_steps = steps
  c.log_every_steps = 2
  c.eval_every_steps = steps
  c.checkpoint_every_steps = steps
  c.data.demo_val_images = ("chelsea",)
  return c


def test_writes_metrics_images_config_and_checkpoint(tmp_path, scalars):
  config = tiny_config(6)
  train.train_and_evaluate(config, str(tmp_path))
  for tag in ("train/loss", "train/learning_rate", "steps_per_sec"):
    assert sorted(scalars(tmp_path, tag)) == [2, 4, 6], tag
  # Steps 1-6 are before the first decay: the configured rate.
  assert scalars(tmp_path, "train/learning_rate")[6] == pytest.approx(config.learning_rate)
  psnr = scalars(tmp_path, "val/psnr")[6]
  bicubic = scalars(tmp_path, "val/bicubic_psnr")[6]
  assert 5 < psnr < 60 and 30 < bicubic < 40  # chelsea x2 bicubic is ~35 dB
  assert 0 < scalars(tmp_path, "val/ssim")[6] <= 1
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  assert "val/chelsea/lr_bicubic_sr_hr" in acc.Tags()["tensors"]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["num_features"] == 8
  assert (tmp_path / "checkpoints" / "6" / "state").is_dir()
  assert (
    json.loads((tmp_path / "checkpoints" / "6" / "config" / "metadata").read_text())["model"][
      "num_blocks"
    ]
    == 1
  )


def test_train_step_donates_state_and_reduces_loss():
  c = tiny_config()
  model = models.create_model(c.model)
  tx = train.make_optimizer(c)
  mesh = train.make_mesh()
  state = train.create_train_state(c, model, tx, mesh, jax.random.key(0))
  step = train.make_train_step(model, tx, mesh)
  rng = np.random.default_rng(0)
  hr = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  batch = {"hr": jnp.asarray(hr), "lr": jnp.asarray(hr[:, ::2, ::2])}
  old_leaf = jax.tree.leaves(state.params)[0]
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch, scale=2)
    losses.append(float(metrics["loss"]))
  assert old_leaf.is_deleted()  # the input state's buffers were donated
  assert int(state.step) == 20
  assert losses[-1] < losses[0]


def test_train_step_compiles_once(tmp_path, compiles):
  for steps in (4, 12):
    n = compiles(
      lambda steps=steps: train.train_and_evaluate(tiny_config(steps), str(tmp_path / str(steps))),
      "train_step",
    )
    assert n == 1, f"{steps} steps compiled the train step {n} times"
