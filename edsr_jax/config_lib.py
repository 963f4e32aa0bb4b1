"""The full set of config keys, their defaults (the paper's recipe) and their validation.

Every file in `configs/` starts from `base_config()` and changes values only, so every
preset has the same keys and `--config.<key>=...` works the same everywhere. `validate`
runs before anything is compiled and names the key and the allowed values on failure.
"""

import difflib
import importlib.util
import math
import os
import re
import traceback
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from edsr_jax import errors, models, tfds_data

MODEL_NAMES = ("edsr", "mdsr")
DATA_SOURCES = ("demo", "folder", "tfds")
# "auto": bfloat16 on a CPU that computes it natively, else float32 (models.compute_dtype).
DTYPES = ("float32", "bfloat16", "float16", "auto")


def base_config() -> ml_collections.ConfigDict:
  """Defaults of the paper's training recipe (EDSR baseline x2 network)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 16  # global, over all devices and processes
  c.patch_size = 48  # LR patch side; HR patch is patch_size * scale
  c.augment = True  # random horizontal flip, vertical flip and transpose
  c.num_train_steps = 300_000
  c.learning_rate = 1e-4
  c.lr_decay_steps = 200_000  # the learning rate is halved every this many steps
  c.lr_decay_factor = 0.5
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  # An exponential moving average of the parameters (BasicSR's ema_decay, e.g. 0.999),
  # updated after every step and used by validation, `evaluate`, `upscale` and
  # `inference.load`; 0 = none (the state and checkpoints then hold no EMA).
  c.ema_decay = 0.0
  c.log_every_steps = 100
  c.eval_every_steps = 5_000
  c.checkpoint_every_steps = 5_000
  c.max_checkpoints_to_keep = 3
  c.num_image_summaries = 2  # validation crops written to TensorBoard
  c.prefetch_batches = 2  # batches prepared ahead of the train step
  # Steps with a non-finite loss are skipped; this many in a row stop the run.
  c.max_nonfinite_steps = 10
  # A training workdir or checkpoint to start from (e.g. x3/x4 EDSR from a trained x2):
  # every parameter but the upsampler is copied; used only when `workdir` has no checkpoint.
  c.init_from = ""

  c.model = ml_collections.ConfigDict()
  c.model.name = "edsr"
  c.model.num_blocks = 16
  c.model.num_features = 64
  c.model.res_scale = 1.0
  # The scales the network serves: one for EDSR, several for MDSR (its branches).
  c.model.scales = (2,)
  c.model.dtype = "float32"  # compute type; parameters stay float32

  c.data = ml_collections.ConfigDict()
  c.data.source = "folder"
  # HR image folder, or a root in the DIV2K / benchmark layout (`HR/` + `LR_bicubic/X<s>/`).
  # train_dir may name several, separated by commas (`T91,BSD200`): all their images train.
  c.data.train_dir = ""
  c.data.val_dir = ""
  # data.source='tfds': the div2k builder config; {scale} is each model scale (MDSR: x2-x4).
  c.data.tfds_name = "div2k/bicubic_x{scale}"
  c.data.tfds_data_dir = ""  # where the prepared dataset is; "" = TFDS's default
  c.data.tfds_manual_dir = ""  # folder with the official DIV2K zips, to prepare offline
  # Training images are decoded once and held in memory (DIV2K's 800: ~6.6 GB HR + 1.7 GB
  # x2 LR). On a small host, set a folder here instead: decoded images are written there
  # as .npy once and memory-mapped, so only the pages in use take memory (folder source).
  c.data.cache_dir = ""
  c.data.max_val_images = 10  # DIV2K 0801-0810 during training, as in the official code
  # Which evaluation convention validation uses: "benchmark" (Y channel, border = scale)
  # or "div2k" (RGB, border = scale + 6).
  c.data.val_convention = "benchmark"
  # data.source='demo' (runlocal smoke runs): a few bundled photos; configs/demo.py sets
  # the demo's own train / held-out split.
  c.data.demo_train_images = ("astronaut", "rocket", "motorcycle_left")
  c.data.demo_val_images = ("chelsea",)
  return c


def ema_decay(config) -> float:
  """The decay of the EMA of the parameters that a run with `config` keeps (0: none)."""
  return float(config.get("ema_decay", 0.0) or 0.0)


def has_ema(config) -> bool:
  """Whether a run with `config` keeps an EMA of the parameters (and saves it)."""
  return ema_decay(config) > 0


def upgrade(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A config saved by an earlier version, in today's keys: EDSR's `model.scale` became
  `model.scales` (one scale), as MDSR's."""
  model = config.get("model")
  if isinstance(model, ml_collections.ConfigDict) and "scale" in model:
    with model.unlocked():
      if model.get("name") == "edsr":
        model.scales = [model.scale]
      del model["scale"]
  return config


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """{'model.num_blocks': 16, ...}: every leaf under its dotted name."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ConfigError for an unknown key or a value outside what training accepts."""
  known = set(flatten(base_config()))
  unknown = sorted(set(flatten(config)) - known)
  if unknown == ["model.scale"]:  # the key EDSR configs had; a ConfigDict takes any new key
    raise errors.ConfigError(
      "config.model.scale is now config.model.scales, for EDSR (one scale) and MDSR alike: "
      f"set config.model.scales = ({config.model.scale},)"
    )
  if unknown:
    raise errors.ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")

  def need(ok: bool, key: str, allowed: str):
    if not ok:
      value = config
      for part in key.split("."):
        value = value[part]
      raise errors.ConfigError(f"config.{key}={value!r} is invalid: allowed {allowed}")

  def positive_int(key):
    value = config
    for part in key.split("."):
      value = value[part]
    need(
      isinstance(value, int) and not isinstance(value, bool) and value > 0,
      key,
      "a positive integer",
    )

  for key in (
    "batch_size",
    "patch_size",
    "num_train_steps",
    "lr_decay_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
    "prefetch_batches",
    "max_nonfinite_steps",
    "model.num_blocks",
    "model.num_features",
    "data.max_val_images",
  ):
    positive_int(key)
  need(
    isinstance(config.seed, int) and not isinstance(config.seed, bool) and 0 <= config.seed < 2**32,
    "seed",
    "an integer in [0, 2**32)",  # what NumPy's and JAX's generators take without wrapping
  )
  need(config.num_image_summaries >= 0, "num_image_summaries", "an integer >= 0")
  for key in ("learning_rate", "adam_eps"):
    v = config[key]
    need(isinstance(v, int | float) and math.isfinite(v) and v > 0, key, "a finite number > 0")
  need(0 < config.lr_decay_factor <= 1, "lr_decay_factor", "a number in (0, 1]")
  for key in ("adam_b1", "adam_b2", "ema_decay"):
    need(0 <= config[key] < 1, key, "a number in [0, 1)")

  m = config.model
  need(m.name in MODEL_NAMES, "model.name", f"one of {MODEL_NAMES}")
  need(
    isinstance(m.res_scale, int | float) and 0 < m.res_scale <= 1,
    "model.res_scale",
    "a number in (0, 1]",
  )
  need(m.dtype in DTYPES, "model.dtype", f"one of {DTYPES}")
  scales = tuple(m.scales) if isinstance(m.scales, list | tuple) else ()
  need(
    len(scales) > 0 and all(s in models.SCALES for s in scales) and len(set(scales)) == len(scales),
    "model.scales",
    f"a non-empty tuple of distinct values from {models.SCALES}",
  )
  if m.name == "edsr":
    need(len(scales) == 1, "model.scales", "one scale for EDSR (MDSR serves several)")

  d = config.data
  need(d.source in DATA_SOURCES, "data.source", f"one of {DATA_SOURCES}")
  if d.source == "folder":
    need(bool(d.train_dir), "data.train_dir", "a folder path (data.source='folder')")
    need(
      isinstance(d.train_dir, str) and all(part.strip() for part in d.train_dir.split(",")),
      "data.train_dir",
      "a folder, or several separated by commas with none of them empty",
    )
  if d.source == "tfds":
    tfds_data.tfds_names(d.tfds_name, tuple(m.scales))
  need(d.val_convention in ("benchmark", "div2k"), "data.val_convention", "'benchmark' or 'div2k'")

  if config.batch_size % num_devices:
    raise errors.ConfigError(
      f"config.batch_size={config.batch_size} does not divide over {num_devices} devices: "
      f"allowed a multiple of {num_devices}"
    )


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny run of the same network on the built-in demo photos: a smoke test in minutes."""
  c.data.source = "demo"
  c.data.max_val_images = 1
  c.data.val_convention = "benchmark"
  c.batch_size = 4
  c.patch_size = 24
  c.num_train_steps = 10
  c.log_every_steps = 2
  c.eval_every_steps = 10
  c.checkpoint_every_steps = 5
  return c


def variant(arg: str | None, words: tuple[str, ...] = (), scales=(2, 3, 4)) -> tuple[int, set]:
  """Parses a config file's argument: a comma list of at most one scale (`x2`, `x3`...;
  default the first of `scales`, None if there are none), `runlocal`, and any of `words`.
  Returns (scale, the words given); anything else is a ConfigError saying what is allowed."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  given = {p for p in parts if p in (*words, "runlocal")}
  scale_words = [p for p in parts if p in {f"x{s}" for s in scales}]
  unknown = [p for p in parts if p not in given and p not in scale_words]
  if unknown or len(scale_words) > 1 or len(parts) != len(set(parts)):
    allowed = [*([" | ".join(f"x{s}" for s in scales)] if scales else []), *words, "runlocal"]
    one_scale = f" (at most one scale; default x{scales[0]})" if scales else ""
    raise errors.ConfigError(
      f"unknown config argument {arg!r}: a comma list of {', '.join(allowed)}{one_scale}"
    )
  default = scales[0] if scales else None
  return (int(scale_words[0][1:]) if scale_words else default), given


# Preset files merged into variants of one file: their old names say where they went.
RENAMED_PRESETS = {
  **{f"edsr_x{s}.py": f"edsr.py:x{s}" for s in (2, 3, 4)},
  **{f"edsr_baseline_x{s}.py": f"edsr.py:x{s},baseline" for s in (2, 3, 4)},
  "mdsr_baseline.py": "mdsr.py:baseline",
}


def load_config_file(path: str | os.PathLike, arg: str | None = None):
  """`get_config(arg)` of a config file, as `--config=path[:arg]` would load it.

  Raises ConfigError naming the file for every way it can fail to give a config: missing,
  a folder, a syntax error or an exception while it runs (with its line), no
  `get_config`, or an argument `get_config` refuses.
  """
  path = os.fspath(path)
  if arg is None and ".py:" in path:  # `configs/edsr.py:x2,baseline`, as --config takes it
    path, arg = path.split(".py:", 1)
    path += ".py"
  where = path if arg is None else f"{path}:{arg}"
  if not os.path.exists(path):
    renamed = RENAMED_PRESETS.get(os.path.basename(path))
    if renamed and arg:
      renamed += ("," if ":" in renamed else ":") + arg
    now = f" (it is now configs/{renamed})" if renamed else ""
    raise errors.ConfigError(f"config file {path}: no such file{now}")
  if os.path.isdir(path):
    raise errors.ConfigError(f"config file {path}: a folder, not a Python file")
  spec = importlib.util.spec_from_file_location("edsr_jax_config", path)
  if spec is None or spec.loader is None:
    raise errors.ConfigError(f"config file {path}: not a Python config file (.py)")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise errors.ConfigError(
      f"config file {path}, line {e.lineno}: syntax error: {e.msg}"
    ) from None
  except OSError as e:
    raise errors.ConfigError(f"config file {path}: cannot read it: {errors.one_line(e)}") from None
  except Exception as e:  # the file's own code failed
    raise errors.ConfigError(
      f"config file {path}{_line_in(e, path)}: {type(e).__name__}: {errors.one_line(e)}"
    ) from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise errors.ConfigError(f"config file {path} defines no get_config() function")
  try:
    config = get_config() if arg is None else get_config(arg)
  except errors.UserError as e:
    raise errors.ConfigError(f"config file {where}: {errors.one_line(e)}") from None
  except Exception as e:  # the file's own code failed
    raise errors.ConfigError(
      f"config file {where}{_line_in(e, path)}: get_config() raised "
      f"{type(e).__name__}: {errors.one_line(e)}"
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(
      f"config file {where}: get_config() returned {type(config).__name__}, not a ConfigDict"
    )
  return config


def _line_in(error: BaseException, path: str) -> str:
  """', line N' of the innermost frame of `error` that ran in file `path` ('' if none)."""
  lines = [
    frame.lineno
    for frame in traceback.extract_tb(error.__traceback__)
    if os.path.abspath(frame.filename) == os.path.abspath(path)
  ]
  return f", line {lines[-1]}" if lines else ""


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The last value given to --name (`--name=v`, `-name=v` or `--name v`) in argv."""
  value = None
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg == "--":
      break
    m = re.fullmatch(rf"--?{re.escape(name)}(=(?P<value>.*))?", arg, re.DOTALL)
    if m:
      if m["value"] is not None:
        value = m["value"]
      elif i + 1 < len(argv):
        value = argv[i + 1]
        i += 1
    i += 1
  return value


def check_key(config: ml_collections.ConfigDict, key: str, name: str = "config") -> None:
  """Raises ConfigError if `key` ('model.num_blocks') is not a key of `config`, naming the
  closest existing key."""
  node, done = config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      raise errors.ConfigError(
        f"--{name}.{key}: {name}.{'.'.join(done)} is a value, not a group of keys"
      )
    if part not in node:
      group = ".".join([name, *done])
      if [*done, part] == ["model", "scale"]:  # the key EDSR configs had
        raise errors.ConfigError(
          f"--{name}.{key}: {name}.model.scale is now {name}.model.scales, for EDSR "
          f"(one scale) and MDSR alike: --{name}.model.scales=3"
        )
      known = sorted(node.keys())
      close = difflib.get_close_matches(part, known, n=1)
      hint = f"; did you mean {group}.{close[0]}?" if close else ""
      raise errors.ConfigError(
        f"--{name}.{key}: unknown config key {group}.{part}{hint} "
        f"(the keys of {group}: {', '.join(known)})"
      )
    node = node[part]
    done.append(part)


def load_config_flag(value: str) -> ml_collections.ConfigDict:
  """The config that `--config=path[:arg]` names (`get_config(arg)` of the file)."""
  path, colon, arg = value.partition(":")
  return load_config_file(path, arg if colon else None)


# What check_config_args loaded, taken by the flag's parser: each config file runs once.
_loaded: dict[str, ml_collections.ConfigDict] = {}


class _ConfigFileParser(flags.ArgumentParser):
  """The parser of ml_collections' config file flag, loading through `load_config_flag`."""

  def flag_type(self) -> str:
    return "config object"

  def parse(self, value):
    config = _loaded.pop(value, None)
    if config is None:
      config = load_config_flag(value)
    config.lock()
    return config


def define_config_flag(name: str = "config", help_string: str | None = None) -> None:
  """`--<name>=path[:arg]` with its `--<name>.<key>=value` overrides (ml_collections), the
  file loaded by `load_config_file`; pair it with `check_config_args` (cli.run)."""
  help_string = help_string or "Config file (configs/*.py), with its variant after a colon."
  config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
  flags.FLAGS[name].parser = _ConfigFileParser()


def check_config_args(
  argv: Sequence[str], name: str = "config", default: str | None = None
) -> list[str]:
  """Checks the config file flag `--<name>=path[:arg]` and its `--<name>.<key>=...`
  overrides in `argv` before absl parses them (ml_collections would end in a traceback).
  Returns the arguments to parse: with `--<name>=<default>` added when none was given.

  Raises ConfigError naming the file or the key: see `load_config_file`; an unknown key
  names the closest existing one. Values are checked by absl when it parses them.
  """
  argv = list(argv)
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
    return argv  # the usage needs no config
  value = _flag_value(argv, name)
  if value is None and default is not None:
    value = default
    argv.insert(1, f"--{name}={default}")
  if value is None:
    return argv  # absl reports the missing flag
  config = load_config_flag(value)
  for a in argv[1:]:
    if a == "--":
      break
    m = re.match(rf"--?(no)?{re.escape(name)}\.([^=]+)", a)
    if m:
      check_key(config, m[2], name)
  _loaded[value] = config
  return argv
