r"""Writes the parameters of a trained run as a small new workdir: weights to ship or share.

Usage:
  python -m edsr_jax.export --checkpoint=runs/edsr_291_x2 --output=pretrained/edsr_291_x2 \
      [--nouse_ema] [--overwrite]

`--checkpoint` is what `evaluate` takes: a workdir (its latest checkpoint) or one step
directory. The output has the layout `import_torch` writes,
`<output>/checkpoints/0/{state,config}`: the chosen parameters (the EMA of the
parameters when the run kept one, unless --nouse_ema) in a TrainState at step 0 with a
fresh Adam state, and the run's config with `ema_decay = 0` (the exported parameters are
the model). `inference.load`, `upscale --checkpoint`, `evaluate --checkpoint` and
`--config.init_from` read it; training with `--workdir=<output>` fine-tunes from it.
`<output>/export.json` records where the parameters came from. An output that already
holds checkpoints is refused unless --overwrite.

Problems (no such checkpoint, unreadable files, an output that cannot be written) end
the run with a one-line message and exit status 1; nothing is left half-written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil

import jax
import numpy as np
from absl import app, flags

from edsr_jax import checkpoint, cli, errors, train

FLAGS = flags.FLAGS


def _define_flags() -> None:
  cli.DEFINE_path(
    "checkpoint", None, "Training workdir or checkpoint step directory.", required=True
  )
  cli.DEFINE_path("output", None, "Folder to write (a new workdir).", required=True)
  flags.DEFINE_bool(
    "use_ema",
    None,
    "Export the EMA of the parameters (the default when the run kept one) or, with "
    "--nouse_ema, the parameters themselves.",
  )
  flags.DEFINE_bool("overwrite", False, "Replace the checkpoints already in --output.")


class OutputError(errors.CheckpointError):
  """A problem with the folder that `export` / `import_torch` write. The library names
  the folder; the CLIs restate it with their flag (`for_flag`)."""

  def __init__(self, output: str, problem: str, *, exists: bool = False):
    super().__init__(f"{output}: {problem}")
    self.output, self.problem, self.exists = output, problem, exists

  def for_flag(self) -> errors.CheckpointError:
    hint = "; use another --output, or --overwrite to replace them" if self.exists else ""
    return errors.CheckpointError(f"--output={self.output}: {self.problem}{hint}")


def existing_steps(output: str) -> list[str]:
  """Names in `<output>/checkpoints`, sorted (empty when there is no such folder)."""
  ckpt_dir = checkpoint.checkpoint_dir(output)
  return sorted(p.name for p in ckpt_dir.iterdir()) if ckpt_dir.is_dir() else []


def check_fresh_output(output: str, overwrite: bool) -> list[str]:
  """The checkpoints already in `output`, refused unless `overwrite`; an `output` that is
  a file is refused too."""
  if os.path.exists(output) and not os.path.isdir(output):
    raise OutputError(output, "exists and is not a folder")
  existing = existing_steps(output)
  if existing and not overwrite:
    raise OutputError(
      output,
      f"{checkpoint.checkpoint_dir(output)} already holds checkpoint(s) {existing}; "
      "refusing to overwrite them",
      exists=True,
    )
  return existing


def write_workdir(output: str, train_state, config, *, replace: bool) -> None:
  """Writes `train_state` as `<output>/checkpoints/0` (export, import_torch), through a
  temporary folder beside `output`.

  The checkpoint is saved into `.<name>.write-tmp-*` in `output`'s parent and renamed
  into place once complete; on any failure (a full or read-only disk, Ctrl-C) the
  temporary folder is removed, so nothing is left that would block the same command
  once the problem is fixed. `replace`: swap out `<output>/checkpoints`.
  """
  target = os.path.abspath(output)
  parent, name = os.path.split(target)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.write-tmp-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp)
  except OSError as e:
    raise OutputError(
      output, f"cannot write it: {e.strerror or errors.one_line(e)} ({e.filename})"
    ) from None
  try:
    manager = checkpoint.make_manager(tmp)
    try:
      checkpoint.save(manager, 0, train_state, config)
    finally:
      manager.close()
    if not os.path.exists(target):
      os.rename(tmp, target)
      return
    if replace:  # training resumes from the latest step, so clear them all
      shutil.rmtree(checkpoint.checkpoint_dir(target))
    os.rename(checkpoint.checkpoint_dir(tmp), checkpoint.checkpoint_dir(target))
  except errors.CheckpointError as e:
    cause = e.__cause__ or e
    reason = checkpoint.os_error(cause)
    detail = errors.one_line(cause, innermost=True)
    raise OutputError(
      output,
      f"cannot write it: {f'{reason} ({detail})' if reason else detail}; nothing was written there",
    ) from e
  except OSError as e:
    raise OutputError(
      output, f"cannot write it: {e.strerror or errors.one_line(e)} ({e.filename})"
    ) from e
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _overlaps(a: str, b: str) -> bool:
  """Whether one of the folders `a`, `b` is the other or inside it."""
  a, b = os.path.realpath(a), os.path.realpath(b)
  return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def export(path: str, output: str, use_ema: bool | None = None, overwrite: bool = False) -> dict:
  """Writes the parameters of checkpoint `path` as the workdir `output`; returns a summary.

  The summary (also written to `<output>/export.json`): {"source": the step directory
  read, "step": its training step, "ema": whether the EMA was exported, "num_params"}.
  An `output` that is the source run, inside it or around it is refused: writing there
  could replace the run's own checkpoints.
  """
  output = os.fspath(output)
  source_run = checkpoint.find_step_dir(path).parent.parent
  if _overlaps(output, str(source_run)):
    raise OutputError(
      output,
      f"the run being exported ({source_run}) is this folder, inside it or around it; "
      "an export there could replace its checkpoints: write it to a folder of its own",
    )
  existing = check_fresh_output(output, overwrite)
  restored = checkpoint.load_params(path, use_ema)
  config = restored.config.copy_and_resolve_references()
  config.ema_decay = 0.0
  config.init_from = ""

  state = train.state_from_params(restored.params, config)
  write_workdir(output, state, config, replace=bool(existing))

  summary = {
    "source": str(restored.step_dir),
    "step": restored.step,
    "ema": restored.ema,
    "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(restored.params))),
  }
  try:
    with open(os.path.join(output, checkpoint.EXPORT_RECORD), "w") as f:
      f.write(json.dumps(summary, indent=2) + "\n")
  except OSError as e:
    raise errors.UserError(
      f"wrote {checkpoint.checkpoint_dir(output)} but cannot write its export.json: {e}"
    ) from None
  return summary


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    summary = export(FLAGS.checkpoint, FLAGS.output, FLAGS.use_ema, FLAGS.overwrite)
  except OutputError as e:
    raise e.for_flag() from None
  what = "EMA of the parameters" if summary["ema"] else "parameters"
  print(
    f"exported the {what} of {summary['source']} (step {summary['step']}, "
    f"{summary['num_params']:,} parameters) to {checkpoint.checkpoint_dir(FLAGS.output)}/0"
  )


def run() -> None:
  """`edsr-export` (a console script, pyproject.toml) = `python -m edsr_jax.export`."""
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
