"""Tests for `python -m edsr_jax.upscale`, run as a real subprocess on a trained checkpoint."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from edsr_jax import config_lib, inference, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = config_lib.runlocal(config_lib.base_config())
  config.model.num_blocks, config.model.num_features = 1, 8
  config.num_train_steps = config.checkpoint_every_steps = config.eval_every_steps = 2
  train.train_and_evaluate(config, str(workdir))
  return workdir


def error_lines(proc):
  return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_files_folders_modes_and_bad_inputs(workdir, tmp_path, cli):
  rng = np.random.default_rng(0)
  folder = tmp_path / "in"
  folder.mkdir()
  rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (17, 12), dtype=np.uint8)
  rgba = rng.integers(0, 256, (14, 19, 4), dtype=np.uint8)
  Image.fromarray(rgb).save(folder / "photo.png")
  Image.fromarray(grey).save(folder / "grey.bmp")
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  (folder / "notes.txt").write_text("not an image, not listed")
  single = tmp_path / "alpha.png"
  Image.fromarray(rgba).save(single)
  missing = tmp_path / "nope.png"
  out = tmp_path / "out"

  proc = cli("upscale", "--checkpoint", workdir, folder, single, missing, f"--output_dir={out}")

  # The good images are written, the bad inputs are each reported, and the run fails.
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr
  assert sorted(p.name for p in out.iterdir()) == [
    "alpha_x2_SR.png",
    "grey_x2_SR.png",
    "photo_x2_SR.png",
  ]
  errors = error_lines(proc)
  assert len(errors) == 2, proc.stderr
  assert any(str(folder / "broken.png") in e for e in errors)
  assert any(str(missing) in e and "no such file" in e for e in errors)
  assert "[4/4]" in proc.stderr  # progress per image

  # Each output is the network on the input's RGB: grey copied to 3 channels, alpha dropped.
  upscaler = inference.load(workdir)
  for name, lr in (
    ("photo", rgb),
    ("grey", np.repeat(grey[..., None], 3, axis=-1)),
    ("alpha", rgba[..., :3]),
  ):
    with Image.open(out / f"{name}_x2_SR.png") as image:
      assert image.mode == "RGB"
      written = np.asarray(image)
    np.testing.assert_array_equal(written, upscaler.upscale(lr), err_msg=name)


def test_self_ensemble_and_tiles(workdir, tmp_path, cli):
  lr = np.random.default_rng(1).integers(0, 256, (37, 29, 3), dtype=np.uint8)
  Image.fromarray(lr).save(tmp_path / "x.png")
  proc = cli(
    "upscale",
    tmp_path / "x.png",
    "--checkpoint",
    workdir / "checkpoints" / "2",
    "--output_dir",
    tmp_path / "out",
    "--scale=2",
    "--self_ensemble",
    "--tile_size=8",
  )
  assert proc.returncode == 0, proc.stderr
  upscaler = inference.load(workdir)
  expected = upscaler.upscale(lr, self_ensemble=True, tile_size=0)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x_x2_SR.png")), expected)
  assert not np.array_equal(expected, upscaler.upscale(lr))


@pytest.mark.parametrize("case", ["missing_checkpoint", "scale", "same_name", "no_images"])
def test_usage_errors_stop_before_writing(workdir, tmp_path, case, cli):
  image = np.zeros((8, 8, 3), np.uint8)
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "empty").mkdir()
  Image.fromarray(image).save(tmp_path / "a" / "x.png")
  Image.fromarray(image).save(tmp_path / "b" / "x.png")
  out = tmp_path / "out"
  checkpoint = tmp_path / "no_such_run" if case == "missing_checkpoint" else workdir
  inputs = {"same_name": [tmp_path / "a", tmp_path / "b"], "no_images": [tmp_path / "empty"]}.get(
    case, [tmp_path / "a"]
  )
  scale = ["--scale=3"] if case == "scale" else []
  proc = cli("upscale", f"--checkpoint={checkpoint}", f"--output_dir={out}", *scale, *inputs)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  errors = error_lines(proc)
  assert len(errors) == 1, proc.stderr
  expected = {
    "missing_checkpoint": [str(checkpoint), "no such file"],
    "scale": ["scale 3", "available: x2"],
    "same_name": [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")],
    "no_images": [str(tmp_path / "empty"), "no image files"],
  }
  for fragment in expected[case]:
    assert fragment in errors[0]
  assert not out.exists() or not any(out.iterdir())
