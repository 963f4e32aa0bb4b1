"""Every tool, run as a real process from another directory, takes paths relative to it.

Workdirs, `config.init_from`, data folders, `config.data.cache_dir`, `--checkpoint`, image
inputs, `--output_dir`, `--benchmark_dir`, `--save_images`, `--hr_dir` / `--sr_dir` and
`--output_json` are all given relative to the process's current directory. (Relative TFDS
directories: tests/test_tfds_data.py; `import_torch`: tests/test_import_torch.py.)
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import skimage.data

from edsr_jax import image_io

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
  "--config.model.num_blocks=1",
  "--config.model.num_features=8",
  "--config.patch_size=16",
  "--config.num_train_steps=2",
  "--config.checkpoint_every_steps=2",
  "--config.eval_every_steps=2",
]


def _run(cwd, tool, *args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", f"edsr_jax.{tool}", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, f"{tool}: {proc.stderr[-3000:]}"
  return proc


def test_tools_take_paths_relative_to_the_current_directory(tmp_path):
  photos = tmp_path / "photos"
  for name, image in (
    ("a", skimage.data.astronaut()[100:196, 150:250]),
    ("b", skimage.data.coffee()[100:196, 200:300]),
  ):
    image_io.write_image(photos / f"{name}.png", image)
  bench = tmp_path / "bench" / "Mini"
  image_io.write_image(bench / "c.png", skimage.data.chelsea()[40:136, 60:156])
  config = f"--config={ROOT / 'configs' / 'demo.py'}:runlocal"

  # Training on a folder, with a decoded-image cache; then a run initialised from it.
  _run(
    tmp_path,
    "main",
    config,
    "--workdir=runs/x",
    "--config.data.source=folder",
    "--config.data.train_dir=photos",
    "--config.data.val_dir=photos",
    "--config.data.cache_dir=cache",
    *TINY,
  )
  assert (tmp_path / "runs" / "x" / "checkpoints" / "2" / "state").is_dir()
  assert list((tmp_path / "cache").glob("*.npy"))
  proc = _run(tmp_path, "main", config, "--workdir=runs/y", "--config.init_from=runs/x", *TINY)
  # The same network: fine-tuning, every parameter copied (the upsampler too).
  assert "initialised all parameters from runs/x (step 2)" in proc.stderr
  assert (tmp_path / "runs" / "y" / "checkpoints" / "2" / "state").is_dir()

  _run(tmp_path, "upscale", "--checkpoint=runs/x", "--output_dir=out", "photos/a.png")
  assert image_io.read_rgb(tmp_path / "out" / "a_x2_SR.png").shape == (192, 200, 3)

  _run(
    tmp_path,
    "evaluate",
    "--checkpoint=runs/x/checkpoints/2",
    "--benchmark_dir=bench",
    "--datasets=Mini",
    "--output_json=scores/evaluate.json",
    "--save_images=sr",
  )
  evaluated = json.loads((tmp_path / "scores" / "evaluate.json").read_text())["Mini"]["x2"]

  _run(
    tmp_path,
    "score",
    "--hr_dir=bench/Mini",
    "--sr_dir=sr/Mini/x2",
    "--scale=2",
    "--output_json=scores/score.json",
  )
  scored = json.loads((tmp_path / "scores" / "score.json").read_text())
  np.testing.assert_allclose(scored["psnr"], evaluated["psnr"], rtol=0, atol=1e-9)


# An empty path (an unset shell variable: --workdir=$WORKDIR) is an error naming the flag,
# never the current directory.
EMPTY_PATH_CASES = [
  ("main", ["--config=configs/demo.py", "--workdir="], "--workdir"),
  ("demo", ["--workdir="], "--workdir"),
  ("upscale", ["--checkpoint=", "--output_dir=out", "photo.png"], "--checkpoint"),
  ("upscale", ["--checkpoint=pretrained/edsr_291_x2", "--output_dir=", "p.png"], "--output_dir"),
  ("evaluate", ["--checkpoint=pretrained/edsr_291_x2", "--benchmark_dir= "], "--benchmark_dir"),
  ("export", ["--checkpoint=pretrained/edsr_291_x2", "--output="], "--output"),
  ("import_torch", ["--input=", "--output=out"], "--input"),
  ("score", ["--hr_dir=hr", "--sr_dir=", "--scale=2"], "--sr_dir"),
]


def test_an_empty_path_is_an_error_naming_its_flag():
  procs = [
    (tool, flag, subprocess.Popen(
      [sys.executable, "-m", f"edsr_jax.{tool}", *args],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
    ))
    for tool, args, flag in EMPTY_PATH_CASES
  ]  # fmt: skip
  before = sorted(p.name for p in ROOT.iterdir())
  for tool, flag, proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, f"{tool}: {err[-2000:]}"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: flag {flag}=") and "empty" in last, f"{tool}: {last}"
    assert "Traceback" not in err
  assert sorted(p.name for p in ROOT.iterdir()) == before  # nothing written where it ran


def test_library_calls_refuse_an_empty_path_too():
  from edsr_jax import config_lib, errors, inference, train

  with pytest.raises(errors.CheckpointError, match="an empty path"):
    inference.load("")
  config = config_lib.load_config_file(ROOT / "configs" / "demo.py")
  with pytest.raises(errors.UserError, match="the workdir is empty"):
    train.train_and_evaluate(config, " ")


def test_a_tilde_in_a_path_flag_is_the_home_folder(tmp_path):
  """`--output_dir=~/sr`: no shell expands a `~` after `=`; the tools do."""
  image_io.write_image(tmp_path / "photo.png", skimage.data.astronaut()[::8, ::8])
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.upscale",
      f"--checkpoint={ROOT}/pretrained/edsr_291_x2",
      "--output_dir=~/sr",
      "photo.png",
    ],
    cwd=tmp_path,
    env=dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path / "home")),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "home" / "sr" / "photo_x2_SR.png").is_file()
  assert not (tmp_path / "~").exists()
