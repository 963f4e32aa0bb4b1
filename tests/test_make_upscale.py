"""`make upscale` as a user types it, with real `make` subprocesses: IMAGES that hold a
path with spaces, relative paths (read from the repository root, where make runs) and
their errors, and SCALE given as x2.

make runs with `-o .venv/.project`: the venv this test runs in is taken as it is, never
rebuilt (its rule is `make venv`'s business, not this test's). One shipped-model upscale
of a tiny image, the rest stops before Python starts.
"""

import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]


def make(*args, cwd=REPO):
  if not (REPO / ".venv" / "bin" / "python").exists():
    pytest.skip("no .venv: run `make test`")
  env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "PYTHONPATH")}
  return subprocess.run(
    ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.project", "upscale", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """`my photos/a b.png` (10x8), and an output folder, in a folder of their own."""
  if shutil.which("make") is None:
    pytest.skip("no make")
  root = tmp_path_factory.mktemp("make upscale")
  (root / "my photos").mkdir()
  pixels = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(root / "my photos" / "a b.png")
  return root


def test_one_path_with_spaces_relative_to_the_repository_and_scale_x2(photos, tmp_path):
  image = photos / "my photos" / "a b.png"
  before = image.read_bytes()
  relative = os.path.relpath(image, REPO)  # as typed by someone in the repository root
  out = tmp_path / "out dir"
  result = make(f"IMAGES={relative}", "SCALE=x2", f"OUT={out}", cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Traceback" not in result.stderr
  with Image.open(out / "a b_x2_SR.png") as sr:
    assert sr.size == (20, 16)
  assert image.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out dir"]


@pytest.mark.parametrize(
  "images, message",
  [
    (  # one path, relative: said where it was looked for (the repository root)
      "nowhere/photo.png",
      f'error: IMAGES="nowhere/photo.png": no such file or folder: {REPO}/nowhere/photo.png '
      f"(relative paths are read from {REPO}, where make runs)",
    ),
    (  # not one path, nor several: both readings named
      "no such/photo.png",
      f'error: IMAGES="no such/photo.png": no such file or folder: {REPO}/no such/photo.png '
      f"as one path, nor {REPO}/no, {REPO}/such/photo.png as 2 paths",
    ),
  ],
)
def test_missing_images_name_the_absolute_path(images, message, tmp_path):
  result = make(f"IMAGES={images}", f"OUT={tmp_path / 'out'}", cwd=tmp_path)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and errors[0].startswith(message), result.stderr
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("scale", ["5", "x5", "2 3", "two"])
def test_scale_that_is_not_a_shipped_model_is_refused(scale, tmp_path):
  result = make("IMAGES=photo.png", f"SCALE={scale}", f"OUT={tmp_path / 'out'}")
  assert result.returncode != 0
  assert (
    f"SCALE={scale}: the shipped models are x2, x3 and x4: give the number, 2, 3 or 4"
    in result.stderr
  ), result.stderr
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("scale, model", [("X3", "edsr_291_x3"), ("4", "edsr_291_x4")])
def test_scale_with_an_x_picks_that_model(scale, model, photos):
  dry = make(f"IMAGES={photos / 'my photos'}", f"SCALE={scale}", "-n")
  assert dry.returncode == 0, dry.stderr
  assert f"--checkpoint=pretrained/{model} " in dry.stdout
