"""Checkpoints: every read and write of one (save, resume, parameters for inference, init_from).

Layout: `<workdir>/checkpoints/<step>/{state,config}`, written by orbax. The config travels
with every checkpoint so that a model can be rebuilt from the directory alone:
`load_params` does that for inference (parameters only, onto this process's first device,
whatever topology wrote them) and `init_from` for a run that starts from another run's
weights. Every failure to read or write one is a `CheckpointError` naming its path.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from edsr_jax import errors, models

CHECKPOINT_SUBDIR = "checkpoints"


def absolute(path: str | os.PathLike) -> epath.Path:
  """A user's path as orbax needs it: relative to the current directory made absolute.

  `scheme://` paths (gs://bucket/...) are kept as they are.
  """
  path = os.fspath(path)
  if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(path))


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  return absolute(workdir) / CHECKPOINT_SUBDIR


# ------------------------------------------------------------------ training: save, resume


def make_manager(workdir: str | os.PathLike, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """The checkpoints of `workdir`; creates `<workdir>/checkpoints` if needed.

  Saves are synchronous: `save` returns once the checkpoint is on disk, so that a failed
  save stops training at its step. (An asynchronous save only overlaps the write with
  the following steps, which must not run before the write is known to have worked;
  and a failed asynchronous save leaves orbax's threads waiting minutes for it.)
  """
  directory = checkpoint_dir(workdir)
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
  )
  try:
    return ocp.CheckpointManager(directory, item_names=("state", "config"), options=options)
  except OSError as e:
    raise errors.CheckpointError(
      f"cannot create the checkpoint directory {directory}: {errors.one_line(e)}"
    ) from e


def save(manager: ocp.CheckpointManager, step: int, state, config) -> None:
  """Writes checkpoint `step` of `state`, with `config` beside it, and waits for it.

  Raises CheckpointError naming the step's directory when the write fails; checkpoints
  already written are left as they are (orbax writes into a temporary directory and
  renames it only once complete).
  """
  try:
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config.to_json()))
      ),
    )
    manager.wait_until_finished()
  except Exception as e:  # orbax, tensorstore and the file system raise many types
    raise errors.CheckpointError(
      f"cannot save checkpoint {manager.directory / str(step)} "
      f"({errors.one_line(e, innermost=True)}); the checkpoints already in "
      f"{manager.directory} are kept"
    ) from e


def restore_state(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the state at `step` (default: latest) onto the shardings of `abstract_state`."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
  )
  return restored.state


def restore_config(manager: ocp.CheckpointManager, step: int | None = None):
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(restored.config)


def check_same_model(saved_config, config, where: str) -> None:
  """Refuses to resume a checkpoint of a different network into this run."""
  saved = json.loads(json.dumps(saved_config.model.to_dict()))
  current = json.loads(json.dumps(config.model.to_dict()))
  keys = ("name", "num_blocks", "num_features", "res_scale", "scale", "scales")
  diff = [
    f"model.{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}"
    for k in keys
    if saved.get(k) != current.get(k)
    and not (k == "scales" and current["name"] == "edsr")
    and not (k == "scale" and current["name"] == "mdsr")
  ]
  if diff:
    raise errors.ConfigError(
      f"{where} holds a checkpoint of a different network ({'; '.join(diff)}); "
      "use another --workdir or the same model config"
    )


def has_ema(config) -> bool:
  """Whether the checkpoints of a run with `config` hold `ema_params` (ema_decay > 0)."""
  return float(config.get("ema_decay", 0.0) or 0.0) > 0


def resume(manager: ocp.CheckpointManager, state, config):
  """`state` restored from the latest checkpoint, which must hold `config`'s network.

  A checkpoint that cannot be read is an error naming it; it is kept, so that it can be
  moved aside to resume from the one before. An EMA of the parameters (config.ema_decay)
  is restored with the state; one that config.ema_decay switches on starts at the
  restored parameters, one it switches off is dropped.
  """
  latest = manager.directory / str(manager.latest_step())
  try:
    saved_config = restore_config(manager)
  except Exception as e:  # orbax / tensorstore errors: name the checkpoint, keep it
    raise _unreadable(latest, manager.directory, e) from e
  check_same_model(saved_config, config, str(manager.directory.parent))
  ema, saved_ema = getattr(state, "ema_params", None) is not None, has_ema(saved_config)
  # Restored as the checkpoint holds it: with or without an EMA (train.EMATrainState).
  target = state if saved_ema == ema else state.with_ema(0.5 if saved_ema else 0.0)
  try:
    restored = restore_state(manager, target)
  except Exception as e:
    raise _unreadable(latest, manager.directory, e) from e
  if saved_ema != ema:  # config.ema_decay switched on or off since that checkpoint
    logging.warning(
      "config.ema_decay=%s: %s",
      config.ema_decay,
      "the EMA of the parameters in the checkpoint is dropped"
      if saved_ema
      else "the EMA of the parameters starts here, from the resumed parameters",
    )
    restored = restored.with_ema(config.ema_decay)
  return restored


def _unreadable(step_dir, directory, error) -> errors.CheckpointError:
  return errors.CheckpointError(
    f"{step_dir}: cannot resume from this checkpoint, it is corrupt or incomplete "
    f"({errors.one_line(error, innermost=True)}); move it out of {directory} to resume from "
    "the one before"
  )


# ------------------------------------------------------------------ a model from a checkpoint


def find_step_dir(path: str | os.PathLike) -> epath.Path:
  """The checkpoint step directory that `path` names (a workdir means its latest)."""
  path = absolute(path)
  if not path.exists():
    raise errors.CheckpointError(f"{path}: no such file or directory")
  if not path.is_dir():
    raise errors.CheckpointError(
      f"{path}: not a directory (expected a training workdir or a checkpoint step directory)"
    )
  if (path / "state").is_dir() or (path / "config").is_dir():
    if not ocp.utils.is_checkpoint_finalized(path):
      raise errors.CheckpointError(f"{path}: an unfinished checkpoint (the save did not complete)")
    return path
  checkpoints = path / CHECKPOINT_SUBDIR
  if not checkpoints.is_dir():
    if ocp.utils.checkpoint_steps(path):  # the checkpoints/ folder itself
      checkpoints = path
    else:
      raise errors.CheckpointError(
        f"{path}: neither a training workdir (no {CHECKPOINT_SUBDIR}/ in it) "
        "nor a checkpoint step directory (no state/ and config/ in it)"
      )
  steps = ocp.utils.checkpoint_steps(checkpoints)
  if not steps:
    raise errors.CheckpointError(f"{path}: no finished checkpoints in {checkpoints}")
  return checkpoints / str(max(steps))


def read_config(step_dir: epath.Path) -> ml_collections.ConfigDict:
  """The config saved with the checkpoint in `step_dir`."""
  if not (step_dir / "config").is_dir():
    raise errors.CheckpointError(
      f"{step_dir}: no config/ item; this checkpoint was not written by "
      "edsr_jax training (the config travels with each checkpoint)"
    )
  try:
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
      saved = checkpointer.restore(step_dir / "config", args=ocp.args.JsonRestore())
    return ml_collections.ConfigDict(saved)
  except Exception as e:  # orbax and json raise many types
    raise errors.CheckpointError(
      f"{step_dir}/config: unreadable or corrupt saved config "
      f"({errors.one_line(e, innermost=True)})"
    ) from None


def _restore_params(step_dir: epath.Path, model, scale: int, item: str = "params"):
  if not (step_dir / "state").is_dir():
    raise errors.CheckpointError(f"{step_dir}: no state/ item (no parameters saved)")
  # Shapes and dtypes from the model; placement on this process's first device, never
  # the saved sharding, so a checkpoint from any number of devices restores here.
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), scale)["params"]
  )
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restore_args = jax.tree.map(
    lambda x: ocp.ArrayRestoreArgs(sharding=device, global_shape=x.shape, dtype=x.dtype), abstract
  )
  try:
    # A partial PyTree restore reads `params` only: the optimizer state stays on disk.
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(
          item={item: abstract}, restore_args={item: restore_args}, partial_restore=True
        ),
      )
  except Exception as e:  # orbax raises bare Exception for tensorstore failures
    raise errors.CheckpointError(
      f"{step_dir}/state: cannot restore the parameters; the checkpoint "
      f"is corrupt or does not match its config ({errors.one_line(e, innermost=True)})"
    ) from None
  params = restored[item]
  bad = [
    jax.tree_util.keystr(k)
    for k, v in jax.tree_util.tree_leaves_with_path(params)
    if not bool(jnp.all(jnp.isfinite(v)))
  ]
  if bad:
    raise errors.CheckpointError(
      f"{step_dir}/state: non-finite parameters in {', '.join(bad[:3])}"
      f"{' ...' if len(bad) > 3 else ''} (training diverged?)"
    )
  return params


def params_item(config, use_ema: bool | None, step_dir) -> str:
  """Which parameters `load_params` reads: 'ema_params' or 'params'.

  use_ema None: the EMA if the checkpoint has one (trained with config.ema_decay > 0).
  """
  if use_ema is None:
    use_ema = has_ema(config)
  if use_ema and not has_ema(config):
    raise errors.CheckpointError(
      f"{step_dir}: no EMA of the parameters in this checkpoint (trained with "
      "config.ema_decay=0); load its parameters instead (use_ema=False or None)"
    )
  return "ema_params" if use_ema else "params"


def load_params(path: str | os.PathLike, use_ema: bool | None = None):
  """(config, params, step directory) of the checkpoint that `path` names.

  Args:
    path: a training workdir (its latest finished checkpoint is used), its
      `checkpoints/` folder, or one step directory `<workdir>/checkpoints/<step>`.
    use_ema: None: the EMA of the parameters if the run kept one (config.ema_decay > 0),
      else the parameters; True: the EMA (an error if there is none); False: the
      parameters themselves.

  Only the parameters are read (not the optimizer state), onto this process's first
  device. Raises CheckpointError naming the path: missing, no finished checkpoint, or
  unreadable / corrupt files.
  """
  step_dir = find_step_dir(path)
  config = read_config(step_dir)
  try:
    model = models.create_model(config.model)
    scale = models.model_scales(config.model)[0]
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    saved = json.dumps(config.to_dict().get("model"))
    raise errors.CheckpointError(
      f"{step_dir}/config: the saved model config is not usable "
      f"({errors.one_line(e, innermost=True)}): model = {saved}"
    ) from None
  item = params_item(config, use_ema, step_dir)
  ema = item == "ema_params"
  logging.info("%s: restoring the %s", step_dir, "EMA of the parameters" if ema else "parameters")
  return config, _restore_params(step_dir, model, scale, item), step_dir


def transfer_params(source, target, where: str):
  """`target` with every parameter but the upsamplers copied from `source`.

  The paper initialises x3/x4 EDSR from the trained x2 network this way. A parameter
  that is missing from `source` or has another shape there is an error: the two networks
  differ in more than their upsampler.
  """
  flat_source = dict(jax.tree_util.tree_leaves_with_path(source))
  missing, mismatched = [], []

  def pick(path, value):
    name = jax.tree_util.keystr(path)
    if str(path[0].key).startswith("upsample"):
      return value
    if path not in flat_source:
      missing.append(name)
      return value
    if flat_source[path].shape != value.shape:
      mismatched.append(f"{name}: {flat_source[path].shape} there, {value.shape} here")
      return value
    return jnp.asarray(flat_source[path], value.dtype)

  out = jax.tree_util.tree_map_with_path(pick, target)
  if missing or mismatched:
    raise errors.ConfigError(
      f"config.init_from={where!r} is a different network: "
      + "; ".join([f"missing {m}" for m in missing[:5]] + mismatched[:5])
    )
  return out


def init_from(state, path: str, tx, mesh):
  """`state` with another run's parameters (all but the upsampler) and fresh Adam state."""
  _, source, _ = load_params(path)
  params = transfer_params(jax.device_get(source), jax.device_get(state.params), path)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  state = state.replace(params=params, opt_state=tx.init(params))
  return state.with_ema(getattr(state, "ema_decay", 0.0))  # any EMA starts at them too
