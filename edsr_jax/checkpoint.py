"""Orbax checkpoints of the train state, with the run's config saved beside it as JSON.

Layout: `<workdir>/checkpoints/<step>/{state,config}`. The config travels with every
checkpoint so that a model can be rebuilt from the directory alone.
"""

import json
import os

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from edsr_jax.config_lib import ConfigError

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(workdir) / CHECKPOINT_SUBDIR


def make_manager(workdir: str | os.PathLike, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """An async manager: `save` returns once the arrays are copied off the device."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), item_names=("state", "config"), options=options
  )


def save(manager: ocp.CheckpointManager, step: int, state, config) -> None:
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config.to_json()))
    ),
  )


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
    raise ConfigError(
      f"{where} holds a checkpoint of a different network ({'; '.join(diff)}); "
      "use another --workdir or the same model config"
    )
