r"""Imports official PyTorch EDSR / MDSR weights (`.pt` state_dicts) as a checkpoint here.

Usage:
  python -m edsr_jax.import_torch --input=edsr_baseline_x2-1bc95232.pt \
      --output=runs/edsr_baseline_x2_official [--model=edsr|mdsr] [--scale=N] \
      [--scales=2,3,4] [--num_blocks=N] [--num_features=N] [--res_scale=X] [--overwrite]

The file is read without PyTorch and without running code from it (see
`edsr_jax.torch_pickle`). The network (EDSR or MDSR, residual blocks, features, scale or
scales) is read from the tensor shapes; the optional flags state what you expect, and a
flag that contradicts the file stops the import with the tensor that disagrees. res_scale
is not stored in the weights: it defaults to the official value for the detected size
(0.1 for 256-feature EDSR, 1.0 for 64 features) and must be given for any other size.
The file's mean shift (sub_mean / add_mean) must be the standard DIV2K one, which our
models apply as a constant.

The output is a workdir: `<output>/checkpoints/0/{state,config}`, a full TrainState
(imported params, fresh Adam state, step 0) and a validated config with the detected
model (data.source='demo' as a placeholder), and `<output>/export.json`
(`checkpoint.EXPORT_RECORD`, as `export` writes) recording the import: {"source": the
.pt file (absolute path), "imported": true, "network": the network read, "res_scale",
"num_params"}. `inference.load`, `upscale`, `evaluate` read the output. To fine-tune,
train a new workdir that starts from it, as the last line printed says:

  python -m edsr_jax.main --config=configs/edsr.py:x2,baseline \
      --config.init_from=<output> --workdir=<output>_finetuned

(the config of the imported network; not `--workdir=<output>`: a run keeps only its
latest checkpoints, so training there would delete the imported ones). An output that
already holds checkpoints is refused unless --overwrite, which replaces
`<output>/checkpoints` and its export.json (and nothing else there).

Input problems (unreadable or unsafe file, wrong network, contradicting flag, existing
checkpoints) end the run with a one-line message and exit status 1. Half-precision files
(float16, bfloat16: a state_dict saved after `.half()`) are read and imported as
float32. Nothing is left half-written, also when the run is stopped (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from edsr_jax import checkpoint, cli, config_lib, errors, export, models, torch_weights, train

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module cannot collide with other
  # absl flags (the training script has its own --config.model.scales and so on).
  cli.DEFINE_path("input", None, "The PyTorch .pt state_dict to import.", required=True)
  cli.DEFINE_path("output", None, "Workdir to write the checkpoint into.", required=True)
  flags.DEFINE_enum("model", None, ["edsr", "mdsr"], "Expected network (default: detected).")
  flags.DEFINE_integer("scale", None, "Expected EDSR scale (default: detected).")
  flags.DEFINE_list(
    "scales",
    None,
    "Expected MDSR scales, in the file's branch order, e.g. 2,3,4 (default: detected).",
  )
  flags.DEFINE_integer(
    "num_blocks", None, "Expected residual blocks (default: detected).", lower_bound=1
  )
  flags.DEFINE_integer(
    "num_features", None, "Expected features (default: detected).", lower_bound=1
  )
  flags.DEFINE_float(
    "res_scale",
    None,
    "Residual scaling, which the weights do not store "
    "(default: the official value for the detected size).",
  )
  flags.DEFINE_bool("overwrite", False, "Replace <output>/checkpoints if it exists.")


def _check_scale_flag(name: str, value: int) -> None:
  if value not in models.SCALES:
    raise errors.UserError(f"--{name}={value} is invalid: allowed one of {models.SCALES}")


def make_config(arch: torch_weights.Architecture, res_scale: float):
  """base_config() with the imported network; validated."""
  config = config_lib.base_config()
  config.model.name = arch.model
  config.model.num_blocks = arch.num_blocks
  config.model.num_features = arch.num_features
  config.model.res_scale = float(res_scale)
  config.model.scales = tuple(arch.scales)
  config.data.source = "demo"  # a placeholder: fine-tuning sets its own data
  config.data.val_convention = "div2k"  # as the presets of the official networks
  config_lib.validate(config)
  return config


def _check_against_model(params, config) -> None:
  # The mapping is written against models.py's parameter names; compare with the real
  # module so that a renamed layer fails here instead of in someone's restore.
  model = models.create_model(config.model)
  scale = models.model_scales(config.model)[0]
  dummy = jnp.zeros((1, 8, 8, 3), jnp.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, scale)["params"], dummy)
  want = jax.tree.map(lambda x: tuple(x.shape), abstract)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  if want != got:
    raise RuntimeError(
      f"imported parameter tree does not match edsr_jax.models (expected {want}, got {got})"
    )


def convert(
  input_path: str | os.PathLike,
  output: str | os.PathLike,
  *,
  model: str | None = None,
  scale: int | None = None,
  scales: tuple[int, ...] | None = None,
  num_blocks: int | None = None,
  num_features: int | None = None,
  res_scale: float | None = None,
  overwrite: bool = False,
) -> dict:
  """Reads, checks and writes; returns {"arch", "res_scale", "res_scale_source",
  "num_params", "checkpoint_dir", "config"}. Nothing is written unless every check
  passes."""
  output = os.fspath(output)
  existing = export.check_fresh_output(output, overwrite)
  if scale is not None:
    _check_scale_flag("scale", scale)
  for s in scales or ():
    _check_scale_flag("scales", s)
  if res_scale is not None and not 0 < res_scale <= 1:
    raise errors.UserError(f"--res_scale={res_scale} is invalid: allowed a number in (0, 1]")

  state = torch_weights.read_state_dict(input_path)
  try:
    arch = torch_weights.detect_architecture(
      state,
      model=model,
      scale=scale,
      scales=scales,
      num_blocks=num_blocks,
      num_features=num_features,
    )
  except errors.WeightsError as e:
    raise _as_flag(e) from None
  try:
    torch_weights.check_state_dict(state, arch)
  except errors.WeightsError as e:
    raise errors.WeightsError(f"{input_path}: {e}") from None
  source = "--res_scale"
  if res_scale is None:
    res_scale = torch_weights.default_res_scale(arch)
    source = "official value for this size"
    if res_scale is None:
      raise errors.WeightsError(
        f"{input_path} holds {arch.describe()}, not an official size, so its res_scale "
        "(not stored in the weights) is unknown: pass --res_scale (official: 0.1 for "
        "256-feature EDSR, 1.0 for 64 features)"
      )
  config = make_config(arch, res_scale)
  params = torch_weights.to_flax_params(state, arch)
  _check_against_model(params, config)

  train_state = train.state_from_params(params, config)

  num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
  record = {
    "source": os.path.abspath(input_path),
    "imported": True,
    "network": arch.describe(),
    "res_scale": float(res_scale),
    "num_params": num_params,
  }
  export.write_workdir(output, train_state, config, replace=bool(existing), record=record)
  return {
    "arch": arch,
    "res_scale": float(res_scale),
    "res_scale_source": source,
    "num_params": num_params,
    "checkpoint_dir": str(checkpoint.checkpoint_dir(output) / "0"),
    "config": config,
  }


def _as_flag(error: errors.WeightsError) -> errors.WeightsError:
  """The mapping's `name=value` restated as this tool's `--name=value`."""
  if error.argument is None:
    return error
  value = error.value
  if isinstance(value, tuple):
    value = ",".join(map(str, value))
  flag = f"--{error.argument}" if value is None else f"--{error.argument}={value}"
  return errors.WeightsError(flag + error.detail)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    scales = None if FLAGS.scales is None else tuple(int(s) for s in FLAGS.scales)
  except ValueError:
    raise errors.UserError(f"--scales={','.join(FLAGS.scales)} is not a list of integers") from None
  try:
    summary = convert(
      FLAGS.input,
      FLAGS.output,
      model=FLAGS.model,
      scale=FLAGS.scale,
      scales=scales,
      num_blocks=FLAGS.num_blocks,
      num_features=FLAGS.num_features,
      res_scale=FLAGS.res_scale,
      overwrite=FLAGS.overwrite,
    )
  except export.OutputError as e:
    raise e.for_flag() from None
  arch = summary["arch"]
  print(f"read {FLAGS.input}: {arch.describe()}")
  print(
    f"model: {arch.model}; residual blocks: {arch.num_blocks}; features: "
    f"{arch.num_features}; scale{'s' if arch.model == 'mdsr' else ''}: "
    f"{','.join(str(s) for s in arch.scales)}"
  )
  print(f"res_scale: {summary['res_scale']:g} ({summary['res_scale_source']})")
  print(f"parameters: {summary['num_params']:,}")
  print(f"wrote {summary['checkpoint_dir']} (step 0, fresh Adam state)")
  hint = export.fine_tune_hint(FLAGS.output, export.config_flags(summary["config"]))
  print(f"fine-tune from it in a new workdir, adding your data flags: {hint}")


def run() -> None:
  """`edsr-import-torch` (a console script, pyproject.toml) = `python -m edsr_jax.import_torch`."""
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
