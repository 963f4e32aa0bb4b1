r"""Writes the parameters of a trained run as a small new workdir: weights to ship or share.

Usage:
  python -m edsr_jax.export --checkpoint=runs/edsr_291_x2 --output=pretrained/edsr_291_x2 \
      [--nouse_ema] [--overwrite] [--format=checkpoint|savedmodel|tflite|onnx] [--scale=N]

`--checkpoint` is what `evaluate` takes: a workdir (its latest checkpoint) or one step
directory. The output has the layout `import_torch` writes,
`<output>/checkpoints/0/{state,config}`: the chosen parameters (the EMA of the
parameters when the run kept one, unless --nouse_ema) in a TrainState at step 0 with a
fresh Adam state, and the run's config with `ema_decay = 0` (the exported parameters are
the model). `inference.load`, `upscale --checkpoint` and `evaluate --checkpoint` read it. To
fine-tune from it, train in a new workdir starting from it:

  python -m edsr_jax.main --config=<a config of the same network> \
      --config.init_from=<output> --workdir=<output>_finetuned

as the last line printed says, with the config of the exported network (not with
`--workdir=<output>`: a run keeps only its latest checkpoints, so training there would
delete the exported one). `<output>/export.json` (`checkpoint.EXPORT_RECORD`)
records where the parameters came from. An output that already holds checkpoints is
refused unless --overwrite.

With --format=savedmodel, tflite or onnx (and --scale for MDSR), it writes the network
instead as a model for TensorFlow / TF Serving, LiteRT or ONNX Runtime / OpenCV (uint8
RGB in and out, any size; docs/deploy.md), with the same refusals.

Problems (no such checkpoint, unreadable files, an output that cannot be written) end
the run with a one-line message and exit status 1; nothing is left half-written, also
when the run is stopped (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import secrets
import shlex
import shutil
import signal
import threading

import jax
import numpy as np
from absl import app, flags

from edsr_jax import checkpoint, cli, config_lib, deploy, errors, train, workdir_lock

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
  flags.DEFINE_bool(
    "overwrite", False, "Replace the checkpoints (or the exported model) already in --output."
  )
  flags.DEFINE_enum(
    "format",
    "checkpoint",
    ["checkpoint", *deploy.FORMATS],
    "checkpoint: a small workdir (the default); savedmodel (a folder), tflite or onnx (a "
    "file): the network for other runtimes, uint8 RGB in and out, any size (docs/deploy.md).",
  )
  flags.DEFINE_integer(
    "scale", None, "With savedmodel/tflite/onnx: the scale to export (needed for MDSR)."
  )


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


_TMP_MARK = ".write-tmp-"
_REPLACED = "replaced-checkpoints"  # inside the temporary folder: the checkpoints swapped out


def _temporary_name(name: str) -> str:
  return f".{name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_temporaries(output: str) -> list[str]:
  """Removes the `.<name>.write-tmp-<pid>-*` folders beside `output` whose process is gone
  (a write stopped by SIGKILL or a power cut, which no cleanup clause outlives); returns
  their paths. Those of live processes (another write in progress) are kept. A stale
  folder that holds the checkpoints being swapped out, while `output` has none, gives
  them back instead of deleting them (killed between the two renames of a replace)."""
  target = os.path.abspath(output)
  parent, name = os.path.split(target)
  pattern = re.compile(re.escape(f".{name}{_TMP_MARK}") + r"(\d+)-[0-9a-f]+")
  try:
    entries = os.listdir(parent)
  except OSError:
    return []
  removed = []
  for entry in entries:
    m = pattern.fullmatch(entry)
    if not m or workdir_lock.pid_alive(int(m[1])):
      continue
    stale = os.path.join(parent, entry)
    replaced = os.path.join(stale, _REPLACED)
    with contextlib.suppress(OSError):
      if os.path.isdir(replaced) and not os.path.exists(checkpoint.checkpoint_dir(target)):
        os.rename(replaced, checkpoint.checkpoint_dir(target))
    shutil.rmtree(stale, ignore_errors=True)
    removed.append(stale)
  return removed


@contextlib.contextmanager
def _signals_held():
  """Holds SIGTERM and SIGINT (Ctrl-C) until the block is done, then acts on them as
  before; yields the list of the signals held so far, for the block to look at.

  A checkpoint write stopped half-way leaves orbax's threads writing into its folder
  after the cleanup clauses have removed it; held, it finishes (seconds) and is then
  removed whole, and that removal is not cut short either. A second signal of the same
  kind acts at once (the next write removes what that leaves, `remove_stale_temporaries`).
  Only the main thread can set handlers; elsewhere the block runs as it is.
  """
  held: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield held
    return
  # Not those ignored (a background job's SIGINT) or handled outside Python.
  kinds = [
    s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) not in (None, signal.SIG_IGN)
  ]
  previous = {}

  def act(signum) -> None:
    for kind in kinds:
      signal.signal(kind, previous[kind])
    if callable(previous[signum]):
      previous[signum](signum, None)
    else:  # SIG_DFL
      os.kill(os.getpid(), signum)

  def hold(signum, frame) -> None:
    del frame
    if signum in held:
      act(signum)
    held.append(signum)

  for kind in kinds:
    previous[kind] = signal.signal(kind, hold)
  try:
    yield held
  finally:
    if held:
      act(held[0])
    for kind in kinds:
      signal.signal(kind, previous[kind])


def write_workdir(
  output: str, train_state, config, *, replace: bool, record: dict | None = None
) -> None:
  """Writes `train_state` as `<output>/checkpoints/0`, and `record` (if given) as
  `<output>/export.json` (`checkpoint.EXPORT_RECORD`: where the parameters came from), for
  export and import_torch, through a temporary folder beside `output`.

  Everything is written into `.<name>.write-tmp-<pid>-*` in `output`'s parent and moved
  into place once complete. On every way out (an error such as a full or read-only disk,
  Ctrl-C, SIGTERM) the temporary folder is removed, so nothing is left that would block
  the same command once the problem is fixed; those of writes that were killed outright
  (SIGKILL) are removed by the next write beside them (`remove_stale_temporaries`).
  `replace`: swap out `<output>/checkpoints` (and its record), which stays as it was
  unless the new one is complete.
  """
  target = os.path.abspath(output)
  parent, name = os.path.split(target)
  tmp = os.path.join(parent, _temporary_name(name))
  try:
    with _signals_held() as held:
      try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(target)
        os.mkdir(tmp)
        if record is not None:
          with open(os.path.join(tmp, checkpoint.EXPORT_RECORD), "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        manager = checkpoint.make_manager(tmp)
        try:
          checkpoint.save(manager, 0, train_state, config)
        finally:
          manager.close()
        if held:  # stopped while writing: leave `output` as it was
          return
        if not os.path.exists(target):
          os.rename(tmp, target)
          return
        if replace:  # training resumes from the latest step, so swap them all out
          os.rename(checkpoint.checkpoint_dir(target), os.path.join(tmp, _REPLACED))
        try:
          os.rename(checkpoint.checkpoint_dir(tmp), checkpoint.checkpoint_dir(target))
        except OSError:
          if replace:  # put the old ones back
            os.rename(os.path.join(tmp, _REPLACED), checkpoint.checkpoint_dir(target))
          raise
        if record is not None:
          os.replace(
            os.path.join(tmp, checkpoint.EXPORT_RECORD),
            os.path.join(target, checkpoint.EXPORT_RECORD),
          )
        elif replace:  # it described the checkpoints replaced
          with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(target, checkpoint.EXPORT_RECORD))
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


# The preset config files (a source checkout), for the fine-tuning command printed.
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
_MODEL_KEYS = ("num_blocks", "num_features", "res_scale", "scales")


def _plain(value):
  return tuple(value) if isinstance(value, tuple | list) else value


def _flag_value(value) -> str:
  if isinstance(value, tuple | list):
    return f"({','.join(map(str, value))}{',' if len(value) == 1 else ''})"
  return repr(value)


def config_flags(config, configs_dir: pathlib.Path = CONFIGS) -> str:
  """The `--config=<preset> [--config.model.<key>=<value> ...]` flags (shell-quoted) that
  train the network of `config`: the preset of configs/edsr.py or configs/mdsr.py that
  needs the fewest overrides, plus those. Without the config files (an install without
  the source checkout), the first preset's name with every model key given."""
  model = config.model
  if model.name == "edsr":
    file, args = "edsr.py", [f"x{model.scales[0]}", f"x{model.scales[0]},baseline"]
  else:
    file, args = "mdsr.py", ["", "baseline"]
  path = configs_dir / file
  choices = []
  for arg in args:
    try:
      preset = config_lib.load_config_file(path, arg or None)
    except errors.ConfigError:
      continue
    keys = [k for k in _MODEL_KEYS if _plain(preset.model[k]) != _plain(model[k])]
    choices.append((len(keys), f"{path}:{arg}" if arg else str(path), keys))
  if choices:
    _, spec, keys = min(choices, key=lambda c: c[0])
    relative = os.path.relpath(spec)  # as typed from here, when below the current folder
    spec = spec if relative.startswith("..") else relative
  else:
    spec, keys = f"configs/{file}{':' + args[0] if args[0] else ''}", list(_MODEL_KEYS)
  overrides = [f"--config.model.{key}={_flag_value(model[key])}" for key in keys]
  return " ".join(shlex.quote(flag) for flag in [f"--config={spec}", *overrides])


def fine_tune_hint(output: str, config_args: str) -> str:
  """The command that fine-tunes from the workdir `output` that export / import_torch
  wrote, with `config_args` (`config_flags`): a new training run starting from its
  parameters (`--config.init_from`), in a folder of its own beside it (training in
  `output` would rotate its one checkpoint out). Shell-quoted, to be pasted as it is."""
  base = os.path.normpath(output)
  if os.path.basename(base) in ("", ".", ".."):
    base = os.path.abspath(output)
  return (
    f"python -m edsr_jax.main {config_args} --config.init_from={shlex.quote(output)} "
    f"--workdir={shlex.quote(base + '_finetuned')}"
  )


def _overlaps(a: str, b: str) -> bool:
  """Whether one of the folders `a`, `b` is the other or inside it."""
  a, b = os.path.realpath(a), os.path.realpath(b)
  return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def _refuse_overlap(output: str, source_run) -> None:
  if _overlaps(output, str(source_run)):
    raise OutputError(
      output,
      f"the run being exported ({source_run}) is this folder, inside it or around it; "
      "an export there could replace its checkpoints: write it to a folder of its own",
    )


def export_model(
  path: str,
  fmt: str,
  output: str,
  use_ema: bool | None = None,
  scale: int | None = None,
  overwrite: bool = False,
) -> dict:
  """Writes the network of checkpoint `path` as a SavedModel, TFLite or ONNX model
  (`edsr_jax.deploy`); returns the record the artifact carries. The same refusals as
  `export`: an `output` that overlaps the source run, or exists (without `overwrite`)."""
  output = os.fspath(output)
  _refuse_overlap(output, checkpoint.find_step_dir(path).parent.parent)
  if os.path.lexists(output) and not overwrite:
    raise OutputError(output, "exists; refusing to overwrite it", exists=True)
  restored = checkpoint.load_params(path, use_ema)
  return deploy.export(restored, fmt, output, scale=scale, overwrite=overwrite)


def export(path: str, output: str, use_ema: bool | None = None, overwrite: bool = False) -> dict:
  """Writes the parameters of checkpoint `path` as the workdir `output`; returns a summary.

  The summary, also written to `<output>/export.json`: {"source": the step directory
  read, "step": its training step, "ema": whether the EMA was exported, "num_params"};
  returned with "config", the config written.
  An `output` that is the source run, inside it or around it is refused: writing there
  could replace the run's own checkpoints.
  """
  output = os.fspath(output)
  _refuse_overlap(output, checkpoint.find_step_dir(path).parent.parent)
  existing = check_fresh_output(output, overwrite)
  restored = checkpoint.load_params(path, use_ema)
  config = restored.config.copy_and_resolve_references()
  config.ema_decay = 0.0
  config.init_from = ""

  state = train.state_from_params(restored.params, config)
  summary = {
    "source": str(restored.step_dir),
    "step": restored.step,
    "ema": restored.ema,
    "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(restored.params))),
  }
  write_workdir(output, state, config, replace=bool(existing), record=summary)
  return {**summary, "config": config}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.format != "checkpoint":
    try:
      info = export_model(
        FLAGS.checkpoint, FLAGS.format, FLAGS.output, FLAGS.use_ema, FLAGS.scale, FLAGS.overwrite
      )
    except OutputError as e:
      raise e.for_flag() from None
    except errors.UserError:
      raise
    except ValueError as e:  # Upscaler.resolve_scale: --scale against the model's scales
      raise errors.UserError(f"--scale: {e}") from None
    what = "EMA of the parameters" if info["ema"] else "parameters"
    print(
      f"exported the {what} of {info['source']} (step {info['step']}) as {FLAGS.format}, "
      f"x{info['scale']}, uint8 RGB (batch, height, width, 3) in, any size: {FLAGS.output}"
    )
    return
  if FLAGS.scale is not None:
    raise app.UsageError("--scale is for --format=savedmodel, tflite or onnx (one scale each)")
  try:
    summary = export(FLAGS.checkpoint, FLAGS.output, FLAGS.use_ema, FLAGS.overwrite)
  except OutputError as e:
    raise e.for_flag() from None
  what = "EMA of the parameters" if summary["ema"] else "parameters"
  print(
    f"exported the {what} of {summary['source']} (step {summary['step']}, "
    f"{summary['num_params']:,} parameters) to {checkpoint.checkpoint_dir(FLAGS.output)}/0"
  )
  hint = fine_tune_hint(FLAGS.output, config_flags(summary["config"]))
  print(f"fine-tune from it in a new workdir, adding your data flags: {hint}")


def run() -> None:
  """`edsr-export` (a console script, pyproject.toml) = `python -m edsr_jax.export`."""
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
