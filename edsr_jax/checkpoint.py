"""Checkpoints: every read and write of one (save, resume, parameters for inference, init_from).

Layout: `<workdir>/checkpoints/<step>/{state,config}`, written by orbax. The config travels
with every checkpoint so that a model can be rebuilt from the directory alone:
`load_params` does that for inference (parameters only, onto this process's first device,
whatever topology wrote them) and `init_from` for a run that starts from another run's
weights. Every failure to read or write one is a `CheckpointError` naming its path.
"""

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from edsr_jax import config_lib, errors, models

CHECKPOINT_SUBDIR = "checkpoints"


def absolute(path: str | os.PathLike) -> epath.Path:
  """A user's path as orbax needs it: `~` expanded, relative to the current directory
  made absolute; `scheme://` paths (gs://bucket/...) are kept as they are. An empty path
  is a CheckpointError."""
  path = os.fspath(path)
  if not path.strip():  # never the current directory by accident (an unset variable)
    raise errors.CheckpointError("an empty path: name a folder")
  if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(path)))


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  return absolute(workdir) / CHECKPOINT_SUBDIR


class _LoopIgnoringLateCallbacks(asyncio.SelectorEventLoop):
  """An event loop that drops thread-safe callbacks arriving after it is closed."""

  def call_soon_threadsafe(self, callback, *args, context=None):
    try:
      return super().call_soon_threadsafe(callback, *args, context=context)
    except RuntimeError:
      if self.is_closed():
        return None  # nothing waits for it any more
      raise


class _Policy(asyncio.DefaultEventLoopPolicy):
  def new_event_loop(self):
    return _LoopIgnoringLateCallbacks()


@contextlib.contextmanager
def _orbax_io():
  """Around every orbax read and write: when one of its TensorStore operations fails,
  orbax closes the event loop it ran them on while the others are still in flight; each
  of those then completes into the closed loop and TensorStore prints a
  `RuntimeError: Event loop is closed` traceback (during the run or at exit, after the
  error line). The loops orbax creates meanwhile ignore such late completions."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_Policy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


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
  if directory.exists() and not directory.is_dir():
    raise errors.CheckpointError(
      f"{directory} exists and is not a folder: it must hold this workdir's checkpoints"
    )
  remove_unfinished(directory)
  try:
    with _orbax_io():
      return ocp.CheckpointManager(directory, item_names=("state", "config"), options=options)
  except OSError as e:
    raise errors.CheckpointError(
      f"cannot create the checkpoint directory {directory}: {errors.one_line(e)}"
    ) from e


# What orbax names a step while writing it, renamed to `<step>` once complete.
UNFINISHED = ".orbax-checkpoint-tmp"


def remove_unfinished(directory: epath.Path) -> None:
  """Removes the `<step>.orbax-checkpoint-tmp*` folders of saves cut short (a second
  Ctrl-C, a kill, a full disk), which nothing can resume from.

  Done here, before the manager exists, rather than by orbax's own cleanup, which runs in
  a thread that nobody waits for (a run that stops early exits under it). Only process 0
  removes; the workdir lock ensures no other run is writing them. One that cannot be
  removed is left (orbax ignores it) with a warning.
  """
  if jax.process_index() != 0 or not directory.is_dir():
    return
  for path in directory.iterdir():
    if UNFINISHED in path.name:
      try:
        path.rmtree()
        logging.info("removed %s, a save that did not complete", path)
      except OSError as e:  # harmless: orbax never reads it
        logging.warning("cannot remove %s, a save that did not complete: %s", path, e)


def save(manager: ocp.CheckpointManager, step: int, state, config) -> None:
  """Writes checkpoint `step` of `state`, with `config` beside it, and waits for it.

  Raises CheckpointError naming the step's directory when the write fails; checkpoints
  already written are left as they are (orbax writes into a temporary directory and
  renames it only once complete).
  """
  try:
    with _orbax_io():
      manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave(json.loads(config.to_json())),
        ),
      )
      manager.wait_until_finished()
  except Exception as e:  # orbax, tensorstore and the file system raise many types
    reason = os_error(e)
    detail = errors.one_line(e, innermost=True)
    raise errors.CheckpointError(
      f"cannot save checkpoint {manager.directory / str(step)} "
      f"({f'{reason}: {detail}' if reason else detail}); the checkpoints already in "
      f"{manager.directory} are kept"
    ) from e


def restore_state(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the state at `step` (default: latest) onto the shardings of `abstract_state`."""
  step = manager.latest_step() if step is None else step
  with _orbax_io():
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
  return restored.state


def restore_config(manager: ocp.CheckpointManager, step: int | None = None):
  step = manager.latest_step() if step is None else step
  with _orbax_io():
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return config_lib.upgrade(ml_collections.ConfigDict(restored.config))


def check_same_model(saved_config, config, where: str) -> None:
  """Refuses to resume a checkpoint of a different network into this run."""
  saved = json.loads(json.dumps(saved_config.model.to_dict()))
  current = json.loads(json.dumps(config.model.to_dict()))
  keys = ("name", "num_blocks", "num_features", "res_scale", "scales")
  diff = [
    f"model.{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}"
    for k in keys
    if saved.get(k) != current.get(k)
  ]
  if diff:
    raise errors.ConfigError(
      f"{where} holds a checkpoint of a different network ({'; '.join(diff)}); "
      "use another workdir or the same model config"
    )


def resume(manager: ocp.CheckpointManager, state, config):
  """(`state` restored from the latest checkpoint, which must hold `config`'s network;
  the config saved with that checkpoint).

  A checkpoint that cannot be read is an error naming it; it is kept, so that it can be
  moved aside to resume from the one before. An EMA of the parameters is restored with
  the state; one that config.ema_decay switches on starts at the restored parameters,
  one it switches off is dropped.
  """
  latest = manager.directory / str(manager.latest_step())
  try:
    saved_config = restore_config(manager)
  except Exception as e:  # orbax / tensorstore errors: name the checkpoint, keep it
    raise _unreadable(latest, manager.directory, e) from e
  check_same_model(saved_config, config, str(manager.directory.parent))
  # The restore target has the checkpoint's structure: with an EMA if the run kept one.
  target = state.with_ema(config_lib.ema_decay(saved_config))
  try:
    restored = restore_state(manager, target)
  except Exception as e:
    raise _unreadable(latest, manager.directory, e) from e
  if restored.has_ema != state.has_ema:  # config.ema_decay switched on or off since then
    logging.warning(
      "config.ema_decay=%s: %s",
      config.ema_decay,
      "the EMA of the parameters in the checkpoint is dropped"
      if restored.has_ema
      else "the EMA of the parameters starts here, from the resumed parameters",
    )
    return restored.with_ema(config.ema_decay), saved_config
  if restored.has_ema:  # the same average, updated with this run's decay from now on
    restored = restored.replace(ema_decay=float(config.ema_decay))
  return restored, saved_config


def _unreadable(step_dir, directory, error) -> errors.CheckpointError:
  return errors.CheckpointError(
    f"{step_dir}: cannot resume from this checkpoint: {what_failed(error)}; it is kept: "
    f"move it out of {directory} to resume from the one before"
  )


# What the file system says, in the words of the OS (TensorStore wraps it in its own text).
_OS_ERRORS = tuple(
  os.strerror(code)
  for code in (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EIO,
  )
)


def os_error(error: BaseException) -> str | None:
  """The file system error behind `error` ('No space left on device', ...), if it is one."""
  chain, e = [], error
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in chain:
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
  text = " ".join(str(e) for e in chain)
  return next((message for message in _OS_ERRORS if message in text), None)


def what_failed(error: BaseException) -> str:
  """Why reading a checkpoint failed, from what the errors say (never guessed).

  A file system error (a missing file, a permission, I/O) is reported as such; anything
  else (unparsable metadata, short or garbled array data) means the files are corrupt.
  """
  text = errors.one_line(error, innermost=True)
  reason = os_error(error)
  if reason:
    return f"cannot read its files: {reason} ({text})"
  return f"its files are corrupt or incomplete ({text})"


# ------------------------------------------------------------------ a model from a checkpoint


def find_step_dir(path: str | os.PathLike) -> epath.Path:
  """The checkpoint step directory that `path` names (a workdir means its latest)."""
  path = absolute(path)
  if not path.exists():
    raise errors.CheckpointError(f"{path}: no such file or directory")
  # A path inside a step (`.../checkpoints/6/state`, a file in it): that step.
  for parent in path.parents:
    if parent.name.isdigit() and parent.parent.name == CHECKPOINT_SUBDIR:
      if (parent / "state").is_dir() or (parent / "config").is_dir():
        logging.info("%s is inside checkpoint %s: reading that checkpoint", path, parent)
        path = parent
      break
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
    with _orbax_io(), ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
      saved = checkpointer.restore(step_dir / "config", args=ocp.args.JsonRestore())
    return config_lib.upgrade(ml_collections.ConfigDict(saved))
  except Exception as e:  # orbax and json raise many types
    raise errors.CheckpointError(
      f"{step_dir}/config: cannot read the saved config: {what_failed(e)}"
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
    with _orbax_io(), ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(
          item={item: abstract}, restore_args={item: restore_args}, partial_restore=True
        ),
      )
  except Exception as e:  # orbax raises bare Exception for tensorstore failures
    raise errors.CheckpointError(
      f"{step_dir}/state: cannot restore the parameters: {what_failed(e)}"
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


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `load_params` restored, and from where."""

  config: ml_collections.ConfigDict  # the run's config, as saved with the checkpoint
  params: Any
  step_dir: epath.Path
  ema: bool  # `params` is the EMA of the trained parameters

  @property
  def step(self) -> int:
    return int(self.step_dir.name)


def load_params(path: str | os.PathLike, use_ema: bool | None = None) -> Restored:
  """The parameters of the checkpoint that `path` names, with its config.

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
  saved_ema = config_lib.has_ema(config)
  ema = saved_ema if use_ema is None else use_ema
  if ema and not saved_ema:
    raise errors.CheckpointError(
      f"{step_dir}: no EMA of the parameters in this checkpoint (trained with "
      "config.ema_decay=0); load its parameters instead"
    )
  logging.info("%s: restoring the %s", step_dir, "EMA of the parameters" if ema else "parameters")
  params = _restore_params(step_dir, model, scale, "ema_params" if ema else "params")
  return Restored(config, params, step_dir, ema)


def transfer_params(source, target, where: str, upsampler: bool = False):
  """`target` with every parameter but the upsamplers (all, with `upsampler`) copied
  from `source`.

  The paper initialises x3/x4 EDSR from the trained x2 network this way. A parameter
  that is missing from `source` or has another shape there is an error: the two networks
  differ in more than their upsampler.
  """
  flat_source = dict(jax.tree_util.tree_leaves_with_path(source))
  missing, mismatched = [], []

  def pick(path, value):
    name = jax.tree_util.keystr(path)
    if str(path[0].key).startswith("upsample") and not upsampler:
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


def init_from(state, path: str, tx, mesh, scales=None):
  """`state` with another run's parameters and fresh Adam state: all of them when that
  run's network serves the same `scales` (fine-tuning, e.g. from exported weights), all
  but the upsampler otherwise (the paper's x2 -> x3/x4 initialisation)."""
  restored = load_params(path)
  same = scales is not None and tuple(models.model_scales(restored.config.model)) == tuple(scales)
  params = transfer_params(
    jax.device_get(restored.params), jax.device_get(state.params), path, upsampler=same
  )
  logging.info(
    "initialised %s from %s (step %d)",
    "all parameters" if same else "all but the upsampler",
    path,
    restored.step,
  )
  params = jax.device_put(params, NamedSharding(mesh, P()))
  state = state.replace(params=params, opt_state=tx.init(params))
  return state.with_ema(state.ema_decay if state.has_ema else 0.0)  # an EMA starts at them too


EXPORT_RECORD = "export.json"  # written by `export` beside checkpoints/: where they came from


def export_record(step_dir: str | os.PathLike) -> dict | None:
  """The `export.json` of the workdir holding `step_dir`, or None (not an export, unreadable)."""
  try:
    record = json.loads((epath.Path(step_dir).parent.parent / EXPORT_RECORD).read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None
