"""`python -m edsr_jax.demo`: trains, scores against bicubic, writes the picture and JSON."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edsr_jax import data, metrics

ROOT = pathlib.Path(__file__).parent.parent


def _demo(workdir, *overrides, timeout=900):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.demo",
      "--config=configs/demo.py",
      f"--workdir={workdir}",
      *overrides,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result, json.loads((workdir / "demo_results.json").read_text())


def test_demo_writes_scores_picture_and_logs(tmp_path):
  result, scores = _demo(
    tmp_path,
    "--config.model.num_blocks=1",
    "--config.model.num_features=8",
    "--config.num_train_steps=3",
    "--config.eval_every_steps=3",
    "--config.data.demo_val_images=('chelsea','coffee')",
  )
  assert [row["name"] for row in scores["per_image"]] == ["chelsea", "coffee"]
  # The bicubic column, recomputed here from the same held-out photos.
  images = data.load_demo(["chelsea", "coffee"], [2])
  for i, row in enumerate(scores["per_image"]):
    lr, hr = images.pair(i, 2)
    want = metrics.evaluate_pair(metrics.bicubic_upscale(lr, 2), hr, scale=2)
    assert row["bicubic_psnr"] == pytest.approx(want["psnr"], abs=1e-9)
  assert f"{scores['bicubic_psnr']:.2f}" in result.stdout and "gain over bicubic" in result.stdout
  picture = np.asarray(Image.open(tmp_path / "comparison.png"))
  assert picture.shape[0] > 2 * 192 and picture.shape[1] == 4 * 192 + 3 * 4  # 2 rows, 4 panels
  assert (tmp_path / "checkpoints" / "3").is_dir()
  assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_full_demo_beats_bicubic_by_1_5_db(tmp_path):
  """The README's promise: `make demo` beats bicubic by >= 1.5 dB on held-out photos."""
  _, scores = _demo(tmp_path, timeout=1500)
  assert scores["psnr"] - scores["bicubic_psnr"] >= 1.5, scores
