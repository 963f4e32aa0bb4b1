"""Every preset is valid, and bad values are refused before anything compiles."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from edsr_jax import config_lib, data, errors, inference, models

ROOT = pathlib.Path(__file__).parent.parent
# Every preset: config file and argument, as --config takes them.
PRESETS = [
  "demo.py",
  "edsr_291.py",
  *(f"edsr.py:x{s}{b}" for b in (",baseline", "") for s in (2, 3, 4)),
  "mdsr.py",
  "mdsr.py:baseline",
]


def test_every_config_file_is_a_preset():
  assert {p.name for p in (ROOT / "configs").glob("*.py")} == {p.split(":")[0] for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_follows_paper_recipe_and_documents_its_command(preset):
  file, _, arg = preset.partition(":")
  config = config_lib.load_config_file(ROOT / "configs" / preset)
  if config.data.source == "folder":  # presets point at the user's DIV2K copy
    config.data.train_dir = "/data/DIV2K"
  config_lib.validate(config)
  doc = (ROOT / "configs" / file).read_text().split('"""')[1]
  # The docstring has this variant's command, and its expected result (for the paper's
  # networks: on the line below the command).
  command = re.search(rf"--config=configs/{re.escape(preset)}(?=[\s:]).*\n(.*)", doc)
  assert command, f"no command for {preset} in its docstring"
  assert "expected" in doc.lower()
  if file not in ("demo.py", "edsr_291.py"):  # those two follow their own short recipes
    assert "expected" in command[1].lower() and "dB" in command[1], command[0]
    assert (config.patch_size, config.batch_size, config.learning_rate) == (48, 16, 1e-4)
    assert (config.lr_decay_steps, config.lr_decay_factor) == (200_000, 0.5)
    assert (config.adam_b1, config.adam_b2, config.adam_eps) == (0.9, 0.999, 1e-8)
    assert config.augment
    local = config_lib.load_config_file(
      ROOT / "configs" / file, ",".join(filter(None, [arg, "runlocal"]))
    )
    assert (local.model.name, local.data.source) == (config.model.name, "demo")
    assert local.model.num_features == config.model.num_features
    config_lib.validate(local)


@pytest.mark.parametrize(
  "arg, scale, blocks",
  [(None, 2, 32), ("x3", 3, 32), ("x4,baseline", 4, 16), ("baseline,x3", 3, 16)],
)
def test_edsr_variants(arg, scale, blocks):
  config = config_lib.load_config_file(ROOT / "configs" / "edsr.py", arg)
  assert (config.model.scales, config.model.num_blocks) == ((scale,), blocks)


@pytest.mark.parametrize("file", ["edsr.py", "mdsr.py", "edsr_291.py"])
@pytest.mark.parametrize("bad", ["x5", "x2,x3", "fast", "baseline,baseline"])
def test_unknown_variants_are_refused_with_what_is_allowed(file, bad):
  if file == "edsr_291.py" and bad.startswith("baseline"):
    bad = "baseline"  # edsr_291 has no baseline variant
  with pytest.raises(errors.ConfigError, match=f"unknown config argument '{bad}': a comma list of"):
    config_lib.load_config_file(ROOT / "configs" / file, bad)


def test_edsr_291_scale_argument_and_patches_that_fit_every_t91_image(shared_data):
  from PIL import Image

  path = ROOT / "configs" / "edsr_291.py"
  smallest = min(min(Image.open(f).size) for f in (shared_data / "train" / "T91").glob("*.bmp"))
  assert smallest == 78
  readme_params = {2: 343_939, 3: 390_179, 4: 380_931}  # README's table of presets
  for arg, scale in ((None, 2), ("x2", 2), ("x3", 3), ("x4", 4)):
    config = config_lib.load_config_file(path, arg)
    assert (config.model.scales, config.data.source) == ((scale,), "folder")
    model = models.create_model(config.model)
    shapes = jax.eval_shape(
      lambda m=model, s=scale: m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), s)
    )
    assert sum(x.size for x in jax.tree.leaves(shapes)) == readme_params[scale]
    assert config.patch_size <= smallest // scale
    assert (config.model.num_blocks, config.model.num_features, config.batch_size) == (16, 32, 16)
    config.data.train_dir = "../shared/data/train/T91,../shared/data/train/BSD200"
    config_lib.validate(config)
    local = config_lib.load_config_file(path, "runlocal" if arg is None else f"{arg},runlocal")
    assert (local.model.scales, local.data.source) == ((scale,), "demo")
    config_lib.validate(local)
  doc = path.read_text().split('"""')[1]
  for arg in ("x2", "x3", "x4"):
    assert f"--config=configs/edsr_291.py:{arg}" in doc
  assert doc.count("--config.init_from=runs/edsr_291_x2") == 2


def _demo():
  return config_lib.load_config_file(ROOT / "configs" / "demo.py")


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("model.scales", (5,), r"config.model.scales=\(5,\) is invalid: allowed a non-empty"),
    ("model.scales", (2, 3), r"config.model.scales=\(2, 3\) is invalid: allowed one scale for"),
    ("learning_rate", -1e-4, r"config.learning_rate=-0.0001 is invalid: allowed a finite"),
    ("seed", -1, r"config.seed=-1 is invalid: allowed an integer in \[0, 2\*\*32\)"),
    ("seed", 2**32, r"config.seed=4294967296 is invalid: allowed an integer in \[0, 2"),
    ("model.name", "srcnn", r"config.model.name='srcnn' is invalid: allowed one of"),
    ("data.source", "ftp", r"config.data.source='ftp' is invalid: allowed one of"),
    ("num_train_steps", 0, r"config.num_train_steps=0 is invalid: allowed a positive"),
    ("model.res_scale", 2.0, r"config.model.res_scale=2.0 is invalid"),
    ("model.dtype", "int8", r"config.model.dtype='int8' is invalid: allowed one of"),
  ],
)
def test_invalid_value_is_refused_naming_key(key, value, match):
  config = _demo()
  section, _, leaf = key.rpartition(".")
  (config[section] if section else config)[leaf] = value
  with pytest.raises(errors.ConfigError, match=match):
    config_lib.validate(config)


def test_mdsr_scales_checked():
  config = _demo()
  config.model.name = "mdsr"
  config.model.scales = (2, 5)
  with pytest.raises(errors.ConfigError, match="config.model.scales"):
    config_lib.validate(config)


def test_unknown_key_refused():
  config = _demo()
  config.model.unlock()
  config.model.num_resblocks = 3
  with pytest.raises(errors.ConfigError, match=r"unknown config key\(s\) \['model.num_resb"):
    config_lib.validate(config)


def test_batch_must_divide_over_devices():
  config = _demo()
  config.batch_size = 12
  config_lib.validate(config, num_devices=4)
  with pytest.raises(errors.ConfigError, match="batch_size=12 does not divide over 8"):
    config_lib.validate(config, num_devices=8)


def test_patch_larger_than_smallest_image_refused():
  images = data.load_demo(["chelsea", "astronaut"], [2])  # chelsea x2 is 225x150 LR
  with pytest.raises(
    errors.ConfigError,
    match=r"config.patch_size=200 is larger than the smallest training "
    r"image at x2: chelsea is 225x150 LR pixels; allowed at most 150",
  ):
    data.PatchSampler(images, scales=[2], patch_size=200, global_batch=4, seed=0)


def _run_main(tmp_path, *overrides):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.main",
      "--config=configs/demo.py",
      f"--workdir={tmp_path / 'run'}",
      *overrides,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_refuses_bad_value_before_compiling(tmp_path):
  result = _run_main(tmp_path, "--config.model.scales=5")
  assert result.returncode != 0
  assert "error: config.model.scales=(5,) is invalid: allowed a non-empty tuple" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_old_scale_key_names_the_new_one(tmp_path):
  result = _run_main(tmp_path, "--config.model.scale=3")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last == (
    "error: --config.model.scale: config.model.scale is now config.model.scales, for EDSR "
    "(one scale) and MDSR alike: --config.model.scales=3"
  )


def test_the_old_scale_key_set_in_code_is_refused():
  config = _demo()
  config.model.scale = 3  # a ConfigDict takes a new key silently: validation must not
  with pytest.raises(errors.ConfigError, match=r"set config.model.scales = \(3,\)"):
    config_lib.validate(config)


def test_configs_saved_with_the_old_scale_key_read_as_today():
  old_edsr = ml_collections.ConfigDict({"model": {"name": "edsr", "scale": 3, "scales": [2, 3, 4]}})
  assert config_lib.upgrade(old_edsr).model.to_dict() == {"name": "edsr", "scales": [3]}
  old_mdsr = ml_collections.ConfigDict({"model": {"name": "mdsr", "scale": 2, "scales": [2, 3, 4]}})
  assert config_lib.upgrade(old_mdsr).model.to_dict() == {"name": "mdsr", "scales": [2, 3, 4]}


def test_cli_refuses_unknown_key(tmp_path):
  result = _run_main(tmp_path, "--config.model.num_resblocks=3")
  assert result.returncode != 0
  assert "num_resblocks" in result.stderr
  assert not (tmp_path / "run").exists()


def test_cli_refuses_patch_larger_than_images(tmp_path):
  result = _run_main(tmp_path, "--config.patch_size=400")
  assert result.returncode != 0
  assert "config.patch_size=400 is larger than the smallest training image" in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
  "old, new",
  [
    ("edsr_x4.py", "configs/edsr.py:x4)"),
    ("edsr_baseline_x2.py:runlocal", "configs/edsr.py:x2,baseline,runlocal)"),
    ("mdsr_baseline.py", "configs/mdsr.py:baseline)"),
  ],
)
def test_old_preset_names_say_where_they_went(old, new):
  with pytest.raises(errors.ConfigError, match=re.escape(f"no such file (it is now {new}")):
    config_lib.load_config_file(f"configs/{old}")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_models_written_with_the_old_scale_key_still_load(scale):
  """pretrained/ was written when EDSR said `model.scale`; it loads with its one scale."""
  path = ROOT / "pretrained" / f"edsr_291_x{scale}"
  saved = json.loads((path / "checkpoints" / "0" / "config" / "metadata").read_text())
  assert saved["model"]["scale"] == scale and saved["model"]["scales"] == [2, 3, 4]
  upscaler = inference.load(path)
  assert upscaler.scales == (scale,) and upscaler.config.model.scales == [scale]
  lr = np.full((8, 8, 3), 128, np.uint8)
  assert upscaler.upscale(lr).shape == (8 * scale, 8 * scale, 3)


def test_the_config_file_runs_once_and_overrides_apply(tmp_path):
  """check_config_args loads the file for its checks; the flag takes that load."""
  runs = tmp_path / "runs.txt"
  config_file = tmp_path / "counting.py"
  config_file.write_text(
    "import pathlib\n"
    "from edsr_jax import config_lib\n"
    "def get_config(arg=None):\n"
    f"  with open({str(runs)!r}, 'a') as f:\n"
    "    f.write(f'{arg}\\n')\n"
    "  return config_lib.load_config_file('configs/demo.py')\n"
  )
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.main",
      f"--config={config_file}:v1",
      f"--workdir={tmp_path / 'run'}",
      "--config.num_train_steps=0",  # refused by validation, after the flags are parsed
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.num_train_steps=0")
  assert runs.read_text() == "v1\n"


@pytest.mark.parametrize(
  "extra, message",
  [
    ([], "--cluster_detection=slurm: SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, "),
    (["--coordinator_address=h:1", "--num_processes=2", "--process_id=0"], "drop --coord"),
  ],
)
def test_slurm_detection_outside_a_slurm_step_is_one_error_line(tmp_path, extra, message):
  """Started by hand instead of by srun: a clear refusal, not a wait for peers."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.main",
      "--config=configs/demo.py",
      f"--workdir={tmp_path / 'run'}",
      "--cluster_detection=slurm",
      *extra,
    ],
    cwd=ROOT,
    env=dict(env, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
