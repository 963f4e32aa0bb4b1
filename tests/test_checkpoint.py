"""edsr_jax.checkpoint on real orbax checkpoints on disk: what load_params says it restored,
resume (same network only, the EMA kept with this run's decay), the paths a checkpoint can
be named by, unfinished saves, and transfer_params' errors."""

import jax
import numpy as np
import pytest

from edsr_jax import checkpoint, config_lib, errors, train


def _config(ema_decay=0.0, features=8):
  c = config_lib.base_config()
  c.data.source = "demo"
  c.model.num_blocks, c.model.num_features = 1, features
  c.ema_decay = ema_decay
  return c


def _state(config, seed=0):
  """A state whose EMA differs from its parameters (so that each read can be told apart)."""
  model, tx = train.make_model_and_optimizer(config)
  state = train.create_train_state(config, model, tx, train.make_mesh(), jax.random.key(seed))
  if state.has_ema:
    state = state.replace(ema_params=jax.tree.map(lambda p: p + 1.0, state.params))
  return state.replace(step=state.step + 7)


def _save(workdir, state, config):
  manager = checkpoint.make_manager(workdir)
  try:
    checkpoint.save(manager, int(state.step), state, config)
  finally:
    manager.close()


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_load_params_says_what_it_restored_by_every_name_of_the_checkpoint(tmp_path):
  config = _config(ema_decay=0.9)
  state = _state(config)
  _save(tmp_path, state, config)
  step_dir = tmp_path / "checkpoints" / "7"
  for path in (tmp_path, tmp_path / "checkpoints", step_dir, str(step_dir)):
    restored = checkpoint.load_params(path)
    assert (restored.step, restored.ema, restored.step_dir) == (7, True, step_dir)
    assert restored.config.ema_decay == 0.9
    _equal(restored.params, state.ema_params)
  plain = checkpoint.load_params(tmp_path, use_ema=False)
  assert not plain.ema
  _equal(plain.params, state.params)


def test_load_params_refuses_an_ema_that_is_not_there(tmp_path):
  config = _config(ema_decay=0.0)
  state = _state(config)
  _save(tmp_path, state, config)
  assert not checkpoint.load_params(tmp_path).ema
  with pytest.raises(errors.CheckpointError, match="no EMA of the parameters"):
    checkpoint.load_params(tmp_path, use_ema=True)


@pytest.mark.parametrize(
  "path, message",
  [
    ("nowhere", "no such file or directory"),
    ("afile", "not a directory"),
    ("empty", "neither a training workdir"),
  ],
)
def test_find_step_dir_names_the_path_it_could_not_use(tmp_path, path, message):
  (tmp_path / "afile").write_text("x")
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.CheckpointError, match=message) as e:
    checkpoint.find_step_dir(tmp_path / path)
  assert str(tmp_path / path) in str(e.value)


def test_resume_restores_the_state_and_keeps_the_ema_with_this_runs_decay(tmp_path):
  saved_config = _config(ema_decay=0.9)
  saved = _state(saved_config)
  _save(tmp_path, saved, saved_config)
  config = _config(ema_decay=0.5)
  manager = checkpoint.make_manager(tmp_path)
  try:
    resumed, from_checkpoint = checkpoint.resume(manager, _state(config, seed=1), config)
    assert from_checkpoint.ema_decay == 0.9  # the config saved with it, not this run's
  finally:
    manager.close()
  assert int(resumed.step) == 7 and resumed.has_ema and resumed.ema_decay == 0.5
  _equal(resumed.params, saved.params)
  _equal(resumed.ema_params, saved.ema_params)
  _equal(resumed.opt_state, saved.opt_state)


def test_resume_refuses_another_network_and_names_the_difference(tmp_path):
  config = _config()
  _save(tmp_path, _state(config), config)
  other = _config(features=16)
  manager = checkpoint.make_manager(tmp_path)
  try:
    with pytest.raises(errors.ConfigError, match="model.num_features: checkpoint 8, config 16"):
      checkpoint.resume(manager, _state(other), other)
  finally:
    manager.close()


def test_remove_unfinished_removes_only_cut_short_saves(tmp_path):
  config = _config()
  _save(tmp_path, _state(config), config)
  directory = checkpoint.checkpoint_dir(tmp_path)
  unfinished = directory / f"9{checkpoint.UNFINISHED}-1234"
  (unfinished / "state").mkdir(parents=True)
  checkpoint.remove_unfinished(directory)
  assert sorted(p.name for p in directory.iterdir()) == ["7"]


def test_transfer_params_names_what_does_not_fit():
  source = {
    "head": {"kernel": np.zeros((3, 3, 3, 8), np.float32)},
    "upsample": {"w": np.zeros(2, np.float32)},
  }
  target = {
    "head": {"kernel": np.ones((3, 3, 3, 16), np.float32)},
    "body": {"b": np.ones(4, np.float32)},
  }
  with pytest.raises(errors.ConfigError, match="is a different network") as e:
    checkpoint.transfer_params(source, target, "runs/x2")
  assert "missing ['body']['b']" in str(e.value)
  assert "['head']['kernel']: (3, 3, 3, 8) there, (3, 3, 3, 16) here" in str(e.value)
  same = {
    "head": {"kernel": np.full((3, 3, 3, 8), 2.0, np.float32)},
    "upsample": {"w": np.ones(2, np.float32)},
  }
  out = checkpoint.transfer_params(same, source, "runs/x2")
  np.testing.assert_array_equal(out["head"]["kernel"], same["head"]["kernel"])
  np.testing.assert_array_equal(out["upsample"]["w"], source["upsample"]["w"])  # not copied


def test_init_from_the_same_network_copies_every_parameter():
  """Fine-tuning shipped weights: config.init_from of a run of the same network and scale
  copies the upsampler too (the x2 -> x4 initialisation keeps its own, tests/test_mdsr.py)."""
  shipped = checkpoint.load_params("pretrained/edsr_291_x2")
  config = config_lib.load_config_file("configs/edsr_291.py", "x2")
  model, tx = train.make_model_and_optimizer(config)
  mesh = train.make_mesh()
  fresh = train.create_train_state(config, model, tx, mesh, jax.random.key(3))
  state = checkpoint.init_from(fresh, "pretrained/edsr_291_x2", tx, mesh, (2,))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), shipped.params)
  assert int(state.step) == 0


def test_out_of_memory_is_recognised_through_a_failed_save():
  """A train step's allocation failure can surface when the save reads its arrays: the
  save's CheckpointError (which quotes the text) still counts as out of memory, by its
  cause; the same text without a runtime error behind it does not."""
  try:
    jax.numpy.zeros((10**13,), jax.numpy.uint8).block_until_ready()  # 10 TB: refused
  except Exception as e:  # JaxRuntimeError: RESOURCE_EXHAUSTED
    runtime = e
  assert errors.out_of_memory(runtime)
  try:
    raise errors.CheckpointError(f"cannot save checkpoint 7 ({runtime})") from runtime
  except errors.CheckpointError as e:
    assert errors.out_of_memory(e)
  assert not errors.out_of_memory(errors.CheckpointError("RESOURCE_EXHAUSTED, said a user"))
