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

import jax
import numpy as np
from absl import app, flags

from edsr_jax import checkpoint, cli, errors, train

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string(
    "checkpoint", None, "Training workdir or checkpoint step directory.", required=True
  )
  flags.DEFINE_string("output", None, "Folder to write (a new workdir).", required=True)
  flags.DEFINE_bool(
    "use_ema",
    None,
    "Export the EMA of the parameters (the default when the run kept one) or, with "
    "--nouse_ema, the parameters themselves.",
  )
  flags.DEFINE_bool("overwrite", False, "Replace the checkpoints already in --output.")


def export(path: str, output: str, use_ema: bool | None = None, overwrite: bool = False) -> dict:
  """Writes the parameters of checkpoint `path` as the workdir `output`; returns a summary.

  The summary (also written to `<output>/export.json`): {"source": the step directory
  read, "step": its training step, "ema": whether the EMA was exported, "num_params"}.
  """
  output = os.fspath(output)
  existing = checkpoint.check_fresh_output(output, overwrite)
  config, params, step_dir = checkpoint.load_params(path, use_ema)
  ema = checkpoint.params_item(config, use_ema, step_dir) == "ema_params"
  config = config.copy_and_resolve_references()
  config.ema_decay = 0.0
  config.init_from = ""

  state = train.state_from_params(params, config)
  checkpoint.write_fresh_workdir(output, state, config, replace=bool(existing))

  summary = {
    "source": str(step_dir),
    "step": int(step_dir.name),
    "ema": ema,
    "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
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
  summary = export(FLAGS.checkpoint, FLAGS.output, FLAGS.use_ema, FLAGS.overwrite)
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
