"""config.ema_decay: an exponential moving average of the parameters, kept by the train
step, saved and resumed with the state, and used by validation and inference."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import (
  checkpoint,
  config_lib,
  data,
  errors,
  image_io,
  inference,
  metrics,
  models,
  train,
)

ROOT = pathlib.Path(__file__).parent.parent


def tiny(ema_decay=0.9, steps=4, name="demo.py", arg=None):
  c = config_lib.load_config_file(ROOT / "configs" / name, arg)
  c.model.num_blocks = 1
  c.model.num_features = 8
  c.patch_size = 12
  c.batch_size = 4
  c.ema_decay = ema_decay
  c.num_train_steps = steps
  c.log_every_steps = 1
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 2
  c.data.demo_train_images = ("astronaut", "rocket")
  c.data.demo_val_images = ("chelsea",)
  return c


def _setup(c):
  model = models.create_model(c.model)
  tx = train.make_optimizer(c)
  mesh = train.make_mesh()
  state = train.create_train_state(c, model, tx, mesh, jax.random.key(0))
  return model, tx, mesh, state, train.make_train_step(model, tx, mesh)


def _batch(rng, s=2, nan=False):
  hr = rng.integers(0, 256, (4, 12 * s, 12 * s, 3), dtype=np.uint8)
  lr = hr[:, ::s, ::s].astype(np.float32)
  if nan:
    lr[0, 0, 0, 0] = np.nan
  return {"hr": jnp.asarray(hr), "lr": jnp.asarray(lr)}


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_ema_follows_the_numpy_formula_and_skips_non_finite_steps():
  decay = 0.9
  _, _, _, state, step = _setup(tiny(decay))
  assert isinstance(state, train.EMATrainState) and state.ema_decay == decay
  _equal(state.ema_params, state.params)  # the average starts at the initial parameters
  reference = jax.device_get(state.ema_params)
  rng = np.random.default_rng(0)
  for _ in range(3):
    state, metrics = step(state, _batch(rng), scale=2)
    assert bool(metrics["finite"])
    params = jax.device_get(state.params)
    reference = jax.tree.map(
      lambda e, p: decay * np.float32(e) + (1 - decay) * np.float32(p), reference, params
    )
    jax.tree.map(
      lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7),
      jax.device_get(state.ema_params),
      reference,
    )
  # Three steps of 0.1 towards the moving parameters: the average lags behind them.
  assert not np.allclose(state.ema_params["head"]["kernel"], state.params["head"]["kernel"])
  before = jax.device_get(state)
  state, metrics = step(state, _batch(rng, nan=True), scale=2)
  assert not bool(metrics["finite"])
  _equal(state.ema_params, before.ema_params)
  _equal(state.params, before.params)


def test_mdsr_branches_not_trained_keep_their_average():
  _, _, _, state, step = _setup(tiny(0.5, name="mdsr.py", arg="baseline,runlocal"))
  rng = np.random.default_rng(1)
  state, _ = step(state, _batch(rng, 2), scale=2)
  before = jax.device_get(state.ema_params)
  state, _ = step(state, _batch(rng, 3), scale=3)
  after = jax.device_get(state.ema_params)
  for key in before:
    same = jax.tree.leaves(jax.tree.map(np.array_equal, before[key], after[key]))
    if key.endswith(("_x2", "_x4")):
      assert all(same), f"the EMA of {key} changed in a x3 step"
    else:  # the shared parts and the x3 branch move
      assert not all(same), f"the EMA of {key} did not move in a x3 step"


def test_without_ema_the_state_and_checkpoint_are_as_before(tmp_path):
  _, _, _, state, _ = _setup(tiny(0.0))
  assert type(state) is train.TrainState
  fields = {"step", "params", "opt_state", "nonfinite_streak"}
  assert {path[0].name for path, _ in jax.tree_util.tree_leaves_with_path(state)} == fields
  final = train.train_and_evaluate(tiny(0.0, steps=2), str(tmp_path))
  assert type(final) is train.TrainState
  metadata = json.loads((tmp_path / "checkpoints" / "2" / "state" / "_METADATA").read_text())
  assert {v["key_metadata"][0]["key"] for v in metadata["tree_metadata"].values()} == fields
  upscaler = inference.load(tmp_path)
  assert not upscaler.ema and "params=raw" in repr(upscaler)
  with pytest.raises(errors.CheckpointError, match="no EMA of the parameters"):
    inference.load(tmp_path, use_ema=True)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  """4 steps with EMA, straight through; and the same run stopped at 2 and resumed."""
  straight = tmp_path_factory.mktemp("straight")
  final = train.train_and_evaluate(tiny(0.9, steps=4), str(straight))
  resumed = tmp_path_factory.mktemp("resumed")
  train.train_and_evaluate(tiny(0.9, steps=2), str(resumed))
  again = train.train_and_evaluate(tiny(0.9, steps=4), str(resumed))
  return straight, jax.device_get(final), resumed, jax.device_get(again)


def test_checkpoint_holds_the_ema_and_inference_uses_it(ema_run):
  straight, final, _, _ = ema_run
  assert "ema_params" in (straight / "checkpoints" / "4" / "state" / "_METADATA").read_text()
  upscaler = inference.load(straight)
  assert upscaler.ema and "params=ema" in repr(upscaler)
  _equal(upscaler.params, final.ema_params)
  raw = inference.load(straight, use_ema=False)
  assert not raw.ema
  _equal(raw.params, final.params)
  assert not np.array_equal(upscaler.params["head"]["kernel"], raw.params["head"]["kernel"])
  lr = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
  assert not np.array_equal(upscaler.upscale(lr), raw.upscale(lr))


def test_resume_restores_the_ema_bitwise(ema_run):
  _, final, resumed, again = ema_run
  assert int(again.step) == 4
  _equal(again.ema_params, final.ema_params)
  _equal(again.params, final.params)


def test_ema_switched_on_or_off_at_resume(tmp_path):
  train.train_and_evaluate(tiny(0.0, steps=2), str(tmp_path))
  on = train.train_and_evaluate(tiny(0.5, steps=3), str(tmp_path))  # starts at step 2
  assert isinstance(on, train.EMATrainState)
  at_2 = inference.load(tmp_path / "checkpoints" / "2").params
  on = jax.device_get(on)
  jax.tree.map(
    lambda e, p2, p3: np.testing.assert_allclose(e, 0.5 * p2 + 0.5 * p3, rtol=1e-6, atol=1e-7),
    on.ema_params,
    jax.device_get(at_2),
    on.params,
  )
  assert inference.load(tmp_path).ema
  off = train.train_and_evaluate(tiny(0.0, steps=4), str(tmp_path))
  assert type(off) is train.TrainState
  assert not inference.load(tmp_path).ema


def test_init_from_starts_the_ema_at_the_copied_weights(ema_run):
  straight, final, _, _ = ema_run
  c = tiny(0.9, name="edsr.py", arg="x3,baseline,runlocal")
  model, tx, mesh, fresh, _ = _setup(c)
  state = checkpoint.init_from(fresh, str(straight), tx, mesh)
  assert isinstance(state, train.EMATrainState)
  _equal(state.ema_params, state.params)
  # The source's EMA is what a checkpoint with one serves: its body is copied.
  _equal(state.params["body"], final.ema_params["body"])


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_ema_decay_outside_0_1_is_refused(value):
  c = tiny(value)
  with pytest.raises(errors.ConfigError, match=r"config.ema_decay=.* is invalid: allowed a number"):
    config_lib.validate(c)


def _tool(module, *args):
  return subprocess.run(
    [sys.executable, "-m", f"edsr_jax.{module}", *map(str, args)],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_upscale_and_evaluate_use_the_ema_and_say_so(ema_run, shared_data, tmp_path):
  straight, _, _, _ = ema_run
  lr = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
  image_io.write_image(tmp_path / "in.png", lr)
  result = _tool("upscale", f"--checkpoint={straight}", f"--output_dir={tmp_path}", tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "params=ema)" in result.stderr
  np.testing.assert_array_equal(
    image_io.read_rgb(tmp_path / "in_x2_SR.png"), inference.load(straight).upscale(lr)
  )
  result = _tool(
    "evaluate",
    f"--checkpoint={straight}",
    f"--benchmark_dir={shared_data / 'benchmark'}",
    "--datasets=Set5",
    "--max_images=1",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "params=ema)" in result.stderr
  assert "EDSR (step 4, EMA)" in result.stdout


def test_demo_reports_the_ema(tmp_path):
  result = _tool(
    "demo",
    "--config=configs/demo.py",
    f"--workdir={tmp_path}",
    "--config.model.num_blocks=1",
    "--config.model.num_features=8",
    "--config.patch_size=16",
    "--config.batch_size=4",
    "--config.num_train_steps=3",
    "--config.data.demo_val_images=('chelsea',)",
    "--config.ema_decay=0.9",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(the model's EMA parameters, config.ema_decay=0.9)" in result.stdout
  assert "validation x2 (EMA parameters)" in result.stderr
  reported = json.loads((tmp_path / "demo_results.json").read_text())
  upscaler = inference.load(tmp_path)
  assert upscaler.ema
  means, _ = metrics.score(upscaler, data.load_val_images(upscaler.config, (2,)), 2, "benchmark")
  assert reported["psnr"] == pytest.approx(means["psnr"], abs=1e-9)
