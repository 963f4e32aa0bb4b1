"""MDSR training: one scale per step, PyTorch's Adam semantics, one compile per scale."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import checkpoint, config_lib, data, errors, models, train

ROOT = pathlib.Path(__file__).parent.parent


def tiny_mdsr(steps=6):
  c = config_lib.load_config_file(ROOT / "configs" / "mdsr.py", "baseline,runlocal")
  c.model.num_blocks = 1
  c.model.num_features = 8
  c.patch_size = 12
  c.num_train_steps = steps
  c.log_every_steps = 1
  c.eval_every_steps = steps
  c.checkpoint_every_steps = steps
  c.data.demo_train_images = ("astronaut", "rocket")
  c.data.demo_val_images = ("chelsea",)
  return c


def test_step_at_one_scale_leaves_other_branches_bitwise_unchanged():
  c = tiny_mdsr()
  model = models.create_model(c.model)
  tx = train.make_optimizer(c)
  mesh = train.make_mesh()
  state = train.create_train_state(c, model, tx, mesh, jax.random.key(0))
  step = train.make_train_step(model, tx, mesh)
  rng = np.random.default_rng(0)

  def batch(s):
    hr = rng.integers(0, 256, (4, 12 * s, 12 * s, 3), dtype=np.uint8)
    return {"hr": jnp.asarray(hr), "lr": jnp.asarray(hr[:, ::s, ::s])}

  state, _ = step(state, batch(2), scale=2)  # give the x2 branch some Adam state
  before = jax.device_get(state)
  state, _ = step(state, batch(3), scale=3)
  after = jax.device_get(state)
  for tree in ("params", "opt_state"):
    b, a = getattr(before, tree), getattr(after, tree)
    if tree == "opt_state":
      b, a = {"mu": b.mu, "nu": b.nu, "count": b.count}, {"mu": a.mu, "nu": a.nu, "count": a.count}
    for path, old in jax.tree_util.tree_leaves_with_path(b):
      new = a
      for key in path:
        new = new[key.key]
      name = jax.tree_util.keystr(path)
      if "_x2" in name or "_x4" in name:
        assert np.array_equal(old, new), f"{tree}{name} changed in a x3 step"
      elif "kernel" in name and "count" not in name:
        assert not np.array_equal(old, new), f"{tree}{name} did not change in a x3 step"


def test_training_visits_every_scale_compiles_once_per_scale_and_resumes(
  tmp_path, scalars, compiles
):
  assert {data.scale_for_step(0, s, (2, 3, 4)) for s in range(12)} == {2, 3, 4}
  for steps in (6, 12):
    n = compiles(
      lambda steps=steps: train.train_and_evaluate(tiny_mdsr(steps), str(tmp_path / str(steps))),
      "train_step",
    )
    visited = len({data.scale_for_step(0, k, (2, 3, 4)) for k in range(steps)})
    assert n == visited, f"{steps} steps at {visited} scales compiled the train step {n} times"

  # Resume the 12-step run to 18 and validate every scale.
  state = train.train_and_evaluate(tiny_mdsr(18), str(tmp_path / "12"))
  assert int(state.step) == 18
  counts = state.opt_state.count
  for s in (2, 3, 4):
    drawn = sum(data.scale_for_step(0, n, (2, 3, 4)) == s for n in range(18))
    assert int(jax.tree.leaves(counts[f"upsample_x{s}"])[0]) == drawn
  assert int(jax.tree.leaves(counts["head"])[0]) == 18
  for s in (2, 3, 4):
    assert 18 in scalars(tmp_path / "12", f"val/psnr_x{s}")


def _tiny_edsr(scale, features=8):
  c = config_lib.load_config_file(ROOT / "configs" / "edsr.py", f"x{scale},baseline,runlocal")
  c.model.num_blocks = 1
  c.model.num_features = features
  c.patch_size = 12
  c.num_train_steps = 2
  c.data.demo_train_images = ("astronaut",)
  c.data.demo_val_images = ("chelsea",)
  return c


@pytest.mark.parametrize("scale", [3, 4])
def test_init_from_x2_copies_all_but_the_upsampler(tmp_path, scale):
  from edsr_jax import inference

  train.train_and_evaluate(_tiny_edsr(2), str(tmp_path / "x2"))
  source = jax.device_get(inference.load(str(tmp_path / "x2")).params)
  c = _tiny_edsr(scale)
  model = models.create_model(c.model)
  tx = train.make_optimizer(c)
  mesh = train.make_mesh()
  fresh = train.create_train_state(c, model, tx, mesh, jax.random.key(1))
  fresh_upsample = jax.device_get(fresh.params["upsample"])
  state = checkpoint.init_from(fresh, str(tmp_path / "x2"), tx, mesh)
  params = jax.device_get(state.params)
  for key in ("head", "body", "tail"):
    jax.tree.map(np.testing.assert_array_equal, params[key], source[key])
  jax.tree.map(np.testing.assert_array_equal, params["upsample"], fresh_upsample)
  assert int(state.step) == 0 and int(jax.tree.leaves(state.opt_state.count)[0]) == 0

  # Through the config key: the x3/x4 run starts from the x2 body and trains on.
  c.init_from = str(tmp_path / "x2")
  c.num_train_steps = 1
  trained = train.train_and_evaluate(c, str(tmp_path / f"x{scale}"))
  assert int(trained.step) == 1
  # One Adam step (lr 1e-4) away from the x2 weights, far from a random init.
  head = jax.device_get(trained.params["head"]["kernel"])
  np.testing.assert_allclose(head, source["head"]["kernel"], atol=1e-3)
  assert not np.allclose(
    jax.device_get(fresh.params["head"]["kernel"]), source["head"]["kernel"], atol=1e-3
  )


def test_init_from_a_different_body_is_a_clear_error(tmp_path):
  train.train_and_evaluate(_tiny_edsr(2, features=8), str(tmp_path / "x2"))
  c = _tiny_edsr(3, features=16)
  c.init_from = str(tmp_path / "x2")
  with pytest.raises(
    errors.ConfigError,
    match=r"is a different network: \['body'\]\['block0'\]\['conv1'\]"
    r"\['bias'\]: \(8,\) there, \(16,\) here",
  ):
    train.train_and_evaluate(c, str(tmp_path / "x3"))
  assert not (tmp_path / "x3" / "checkpoints" / "1").exists()
