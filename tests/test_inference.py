"""Tests for edsr_jax.inference: restoring checkpoints, tiling, self-ensemble."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import checkpoint, config_lib, errors, inference, models, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(checkpoint_every=4):
  """EDSR x2 with 1 block of 8 features, 4 steps on the demo photos."""
  config = config_lib.runlocal(config_lib.base_config())
  config.model.num_blocks = 1
  config.model.num_features = 8
  config.num_train_steps = config.eval_every_steps = 4
  config.checkpoint_every_steps = checkpoint_every
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A real training run with checkpoints at steps 2 and 4, and its final state."""
  workdir = tmp_path_factory.mktemp("run")
  state = train.train_and_evaluate(tiny_config(checkpoint_every=2), str(workdir))
  return workdir, jax.device_get(state.params), state


def random_upscaler(name="edsr", scale=2, num_blocks=1, num_features=8, seed=0):
  """An Upscaler with random weights and random (non-zero) biases, so every path counts."""
  config = config_lib.base_config()
  config.model.name = name
  config.model.scales = (scale,) if name == "edsr" else (2, 3, 4)  # MDSR: every branch
  config.model.num_blocks = num_blocks
  config.model.num_features = num_features
  model = models.create_model(config.model)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)), scale)["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
    lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32) if x.ndim == 1 else x, params
  )
  return inference.Upscaler(config, params)


def random_image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ loading


def test_load_workdir_restores_latest_params(trained):
  workdir, final_params, _ = trained
  upscaler = inference.load(workdir)
  assert upscaler.source.endswith(os.path.join("checkpoints", "4"))
  assert_trees_equal(upscaler.params, final_params)
  assert upscaler.scales == (2,)
  assert upscaler.config.model.num_features == 8  # the saved config, not the default 64
  device = jax.devices()[0]
  assert all(
    x.sharding == jax.sharding.SingleDeviceSharding(device)
    for x in jax.tree.leaves(upscaler.params)
  )


def test_load_step_dir_and_checkpoints_dir(trained):
  workdir, final_params, _ = trained
  assert_trees_equal(inference.load(workdir / "checkpoints" / "4").params, final_params)
  assert_trees_equal(inference.load(workdir / "checkpoints").params, final_params)
  earlier = inference.load(workdir / "checkpoints" / "2")
  assert earlier.source.endswith(os.path.join("checkpoints", "2"))
  diff = [
    not np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(earlier.params), jax.tree.leaves(final_params), strict=True)
  ]
  assert any(diff)  # two more Adam steps changed the weights


def test_restored_model_reproduces_training_model(trained):
  workdir, final_params, _ = trained
  upscaler = inference.load(workdir)
  lr = random_image(20, 17)
  model = models.create_model(tiny_config().model)
  expected = model.apply({"params": final_params}, jnp.asarray(lr[None], jnp.float32), 2)[0]
  np.testing.assert_array_equal(upscaler.upscale_float(lr, tile_size=0), np.asarray(expected))


@pytest.mark.parametrize("case", ["missing", "file", "empty_dir", "only_unfinished"])
def test_load_errors_name_the_path(tmp_path, case):
  path = tmp_path / "run"
  if case == "file":
    path.write_text("not a checkpoint")
  elif case == "empty_dir":
    path.mkdir()
  elif case == "only_unfinished":
    (path / "checkpoints" / "5.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
  with pytest.raises(errors.CheckpointError) as info:
    inference.load(path)
  message = str(info.value)
  assert str(path) in message
  expected = {
    "missing": "no such file",
    "file": "not a directory",
    "empty_dir": "neither a training workdir",
    "only_unfinished": "no finished checkpoints",
  }[case]
  assert expected in message


def _copy_run(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir, workdir / "checkpoints" / "4"


# When one read fails, orbax closes its event loop while tensorstore still completes the
# other reads, whose callbacks then report "Event loop is closed" as unraisable errors.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_array_files_are_reported(trained, tmp_path):
  workdir, step_dir = _copy_run(trained, tmp_path)
  data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data_files
  for p in data_files:
    p.write_bytes(p.read_bytes()[:16])
  with pytest.raises(errors.CheckpointError, match="cannot restore the parameters") as info:
    inference.load(workdir)
  assert str(step_dir / "state") in str(info.value)
  assert "\n" not in str(info.value)
  time.sleep(0.5)  # let those stray callbacks land inside this test


@pytest.mark.parametrize("item", ["state/_METADATA", "config/metadata"])
def test_garbled_metadata_is_reported(trained, tmp_path, item):
  workdir, step_dir = _copy_run(trained, tmp_path)
  target = step_dir / item
  assert target.is_file()
  target.write_bytes(b'{"tree_metadata": {garbled')
  with pytest.raises(errors.CheckpointError) as info:
    inference.load(step_dir)
  assert str(step_dir / item.split("/")[0]) in str(info.value)
  assert "corrupt" in str(info.value)


def test_non_finite_parameters_are_refused(trained, tmp_path):
  # A real orbax save of a diverged state (NaN weights).
  state = trained[2]
  state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save(manager, 1, state, tiny_config())
  manager.wait_until_finished()
  with pytest.raises(errors.CheckpointError, match="non-finite parameters"):
    inference.load(tmp_path)


_EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from edsr_jax import checkpoint, config_lib, inference, models
    from edsr_jax.train import create_train_state, make_mesh, make_optimizer
    assert jax.device_count() == 8, jax.devices()
    one_device_run, out = sys.argv[1], sys.argv[2]
    # Restore a checkpoint written on 1 device here on 8, and run it.
    upscaler = inference.load(one_device_run)
    lr = np.random.default_rng(0).integers(0, 256, (21, 18, 3), dtype=np.uint8)
    np.save(out + "/sr.npy", upscaler.upscale(lr))
    # Write a checkpoint from 8 devices (state replicated on the 8-device mesh).
    config = config_lib.runlocal(config_lib.base_config())
    config.model.num_blocks, config.model.num_features, config.batch_size = 1, 8, 8
    model = models.create_model(config.model)
    mesh = make_mesh()
    state = create_train_state(config, model, make_optimizer(config), mesh, jax.random.key(7))
    assert len(state.params["head"]["kernel"].sharding.device_set) == 8
    manager = checkpoint.make_manager(out + "/run8")
    checkpoint.save(manager, 3, state, config)
    manager.wait_until_finished()
    np.save(out + "/head.npy", np.asarray(state.params["head"]["kernel"]))
""")


@pytest.mark.slow  # a fresh 8-device process that imports the training stack: ~25 s
def test_checkpoints_move_between_device_counts(trained, tmp_path):
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO_ROOT),
  )
  proc = subprocess.run(
    [sys.executable, "-c", _EIGHT_DEVICE_SCRIPT, str(trained[0]), str(tmp_path)],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lr = np.random.default_rng(0).integers(0, 256, (21, 18, 3), dtype=np.uint8)
  here = inference.load(trained[0]).upscale(lr)
  np.testing.assert_array_equal(np.load(tmp_path / "sr.npy"), here)
  assert jax.device_count() == 1
  from_eight = inference.load(tmp_path / "run8")
  np.testing.assert_array_equal(
    np.asarray(from_eight.params["head"]["kernel"]), np.load(tmp_path / "head.npy")
  )


# ------------------------------------------------------------------ receptive field / tiling


@pytest.mark.parametrize(
  "name,num_blocks,scale",
  [("edsr", 1, 2), ("edsr", 2, 3), ("edsr", 2, 4), ("mdsr", 1, 3), ("mdsr", 1, 4)],
)
def test_halo_is_the_measured_receptive_field(name, num_blocks, scale):
  upscaler = random_upscaler(name, scale, num_blocks)
  radius = inference.receptive_field_radius(upscaler.config.model, scale)
  assert radius == 2 * num_blocks + (12 if name == "mdsr" else 4)
  # Flip one LR pixel in the middle and see which HR pixels move.
  size = 2 * radius + 9
  centre = size // 2
  lr = random_image(size, size, seed=scale)
  changed = lr.copy()
  changed[centre, centre] = 255 - changed[centre, centre]
  a = upscaler.upscale_float(lr, scale, tile_size=0)
  b = upscaler.upscale_float(changed, scale, tile_size=0)
  ys, xs = np.nonzero(np.abs(a - b).max(axis=-1) > 0)
  measured = max(np.abs(ys // scale - centre).max(), np.abs(xs // scale - centre).max())
  assert measured == radius


@pytest.mark.parametrize(
  "name,num_blocks,scale,h,w,tile",
  [
    # odd sizes, several tiles along both axes
    ("edsr", 2, 2, 45, 37, 7),
    ("edsr", 2, 3, 31, 50, 10),
    ("mdsr", 1, 4, 47, 39, 9),
    # one tile plus its halos already covers the height; several along the width
    ("edsr", 2, 4, 20, 61, 9),
    # an image smaller than one tile
    ("edsr", 2, 3, 13, 11, 64),
  ],
)
def test_tiled_equals_untiled_exactly(monkeypatch, name, num_blocks, scale, h, w, tile):
  upscaler = random_upscaler(name, scale, num_blocks, seed=scale)
  # A small per-call budget: several calls per image, the last one padded.
  monkeypatch.setattr(inference, "AUTO_MAX_PIXELS", 3 * 40 * 40)
  lr = random_image(h, w, seed=h * w)
  whole = upscaler.upscale_float(lr, scale, tile_size=0)
  tiled = upscaler.upscale_float(lr, scale, tile_size=tile)
  assert tiled.shape == (h * scale, w * scale, 3)
  # Bit-identical floats on XLA:CPU: every output pixel is the same arithmetic on the
  # same inputs whatever the window's shape or position.
  np.testing.assert_array_equal(tiled, whole)
  quantised = np.floor(np.clip(whole, 0, 255) + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(upscaler.upscale(lr, scale, tile_size=tile), quantised)


def test_a_halo_one_pixel_short_breaks_exactness(monkeypatch):
  # The exactness test above would catch a halo that is too small.
  upscaler = random_upscaler("edsr", 2, 2)
  lr = random_image(45, 37)
  whole = upscaler.upscale_float(lr, tile_size=0)
  radius = inference.receptive_field_radius
  monkeypatch.setattr(inference, "receptive_field_radius", lambda c, s: radius(c, s) - 1)
  assert not np.array_equal(upscaler.upscale_float(lr, tile_size=7), whole)


def test_tiles_share_one_compiled_program(monkeypatch):
  upscaler = random_upscaler("edsr", 2, 1)
  monkeypatch.setattr(inference, "AUTO_MAX_PIXELS", 2 * 20 * 20)
  assert len(upscaler.plan((61, 53), tile_size=8).calls) == 28  # 8 x 7 tiles, 2 per call
  before = upscaler._forward._cache_size()
  upscaler.upscale(random_image(61, 53), tile_size=8)
  assert upscaler._forward._cache_size() == before + 1
  upscaler.upscale(random_image(70, 44, seed=1), tile_size=8)  # same window shape
  assert upscaler._forward._cache_size() == before + 1


def test_automatic_tiling(monkeypatch):
  upscaler = random_upscaler("edsr", 3, 1)  # halo 6
  monkeypatch.setattr(inference, "AUTO_MAX_PIXELS", 30 * 30)
  small, large = random_image(30, 30), random_image(41, 33)
  assert upscaler.tile_size_for(small.shape, 3) == 0
  # The largest tile whose window (tile + 2 halos) fits the budget: 30 - 12.
  assert upscaler.tile_size_for(large.shape, 3) == 18
  plan = upscaler.plan(large.shape)
  assert plan.window[0] * plan.window[1] * plan.per_call <= 30 * 30
  # With 8 copies a window may be 10 wide, less than two halos: tiles of 12 instead.
  assert upscaler.tile_size_for(small.shape, 3, self_ensemble=True) == 12
  np.testing.assert_array_equal(upscaler.upscale(large), upscaler.upscale(large, tile_size=0))


# ------------------------------------------------------------------ self-ensemble


def _explicit_ensemble(upscaler, lr, scale):
  """The paper's x8 self-ensemble, one transform at a time, averaged in float32."""
  apply = jax.jit(upscaler.model.apply, static_argnums=2)
  total = None
  for hflip in (False, True):
    for vflip in (False, True):
      for transpose in (False, True):
        x = lr[:, ::-1] if hflip else lr
        x = x[::-1] if vflip else x
        x = x.transpose(1, 0, 2) if transpose else x
        y = apply({"params": upscaler.params}, jnp.asarray(x[None], jnp.float32), scale)
        y = np.asarray(y[0], np.float32)
        y = y.transpose(1, 0, 2) if transpose else y
        y = y[::-1] if vflip else y
        y = y[:, ::-1] if hflip else y
        total = y if total is None else total + y
  return total / 8


@pytest.mark.parametrize("scale,shape", [(2, (19, 26)), (4, (11, 23))])
def test_self_ensemble_matches_explicit_loop(scale, shape):
  upscaler = random_upscaler("mdsr", scale, 1, seed=3)
  lr = random_image(*shape, seed=scale)
  expected = _explicit_ensemble(upscaler, lr, scale)
  got = upscaler.upscale_float(lr, scale, self_ensemble=True, tile_size=0)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
  quantised = np.floor(np.clip(expected, 0, 255) + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(upscaler.upscale(lr, scale, self_ensemble=True), quantised)
  # Tiled self-ensemble is the same, and the ensemble is not the plain output.
  np.testing.assert_array_equal(
    upscaler.upscale(lr, scale, self_ensemble=True, tile_size=5), quantised
  )
  assert not np.array_equal(upscaler.upscale(lr, scale), quantised)


# ------------------------------------------------------------------ input checks


def test_refuses_float_and_non_rgb_input():
  upscaler = random_upscaler()
  rgb = random_image(10, 12)
  with pytest.raises(TypeError, match=r"uint8.*0\.\.1"):
    upscaler.upscale(rgb.astype(np.float32) / 255)
  with pytest.raises(ValueError, match="greyscale"):
    upscaler.upscale(rgb[..., 0])
  with pytest.raises(ValueError, match="RGBA"):
    upscaler.upscale(np.concatenate([rgb, rgb[..., :1]], axis=-1))
  with pytest.raises(ValueError, match="tile_size"):
    upscaler.upscale(rgb, tile_size=-1)


def test_scale_checks():
  edsr = random_upscaler("edsr", 3)
  assert edsr.upscale(random_image(6, 7)).shape == (18, 21, 3)
  with pytest.raises(ValueError, match="available: x3"):
    edsr.upscale(random_image(6, 7), scale=2)
  mdsr = random_upscaler("mdsr", 2)
  with pytest.raises(ValueError, match="x2, x3, x4"):
    mdsr.upscale(random_image(6, 7))
  with pytest.raises(ValueError, match="available: x2, x3, x4"):
    mdsr.upscale(random_image(6, 7), scale=8)
  assert mdsr.upscale(random_image(6, 7), scale=4).shape == (24, 28, 3)
