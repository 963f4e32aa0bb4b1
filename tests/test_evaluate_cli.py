"""Tests for `python -m edsr_jax.evaluate` on the real benchmark data (EDSR_SHARED_DATA)."""

import json
import math
import pathlib
import re

import numpy as np
import pytest
import skimage.data

from edsr_jax import config_lib, data, image_io, score, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Bicubic upscaling on Set5, Y-PSNR with a border of `scale` (EDSR paper, Table 5).
PAPER_SET5_BICUBIC = {2: 33.66, 3: 30.39, 4: 28.42}
SCALES = (2, 3, 4)


@pytest.fixture(scope="module")
def mdsr_run(tmp_path_factory):
  """A tiny MDSR (x2, x3, x4) trained for two steps: enough to check plumbing, not quality."""
  workdir = tmp_path_factory.mktemp("mdsr")
  config = config_lib.runlocal(config_lib.base_config())
  config.model.name, config.model.scales = "mdsr", (2, 3, 4)
  config.model.num_blocks, config.model.num_features = 1, 8
  config.num_train_steps = config.checkpoint_every_steps = config.eval_every_steps = 2
  train.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope="module")
def benchmark_dir(shared_data, tmp_path_factory):
  """The real Set5 next to a small DIV2K-layout set (two photo crops, MATLAB-bicubic LR)."""
  root = tmp_path_factory.mktemp("benchmark")
  (root / "Set5").symlink_to(shared_data / "benchmark" / "Set5")
  div2k = root / "DIV2K"
  for name, image in (
    ("0801", skimage.data.chelsea()[40:160, 60:204]),
    ("0802", skimage.data.coffee()[100:196, 200:332]),
  ):
    image_io.write_image(div2k / "DIV2K_valid_HR" / f"{name}.png", image)
    for s in SCALES:
      image_io.write_image(
        div2k / "DIV2K_valid_LR_bicubic" / f"X{s}" / f"{name}x{s}.png", data.bicubic_lr(image, s)
      )
  return root


@pytest.fixture(scope="module")
def evaluated(mdsr_run, benchmark_dir, tmp_path_factory, cli):
  out = tmp_path_factory.mktemp("evaluate")
  proc = cli(
    "evaluate",
    f"--checkpoint={mdsr_run}",
    f"--benchmark_dir={benchmark_dir}",
    "--datasets=Set5,DIV2K",
    f"--output_json={out / 'scores.json'}",
    f"--save_images={out / 'images'}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, json.loads((out / "scores.json").read_text()), out / "images"


def test_json_shape_and_progress(evaluated):
  proc, results, _ = evaluated
  assert set(results) == {"Set5", "DIV2K"}
  for by_scale in results.values():
    assert set(by_scale) == {f"x{s}" for s in SCALES}
    for entry in by_scale.values():
      assert set(entry) == {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}
      assert all(math.isfinite(v) for v in entry.values())
  progress = re.findall(r"^(Set5|DIV2K) x(\d) \[(\d)/(\d)\]", proc.stderr, re.MULTILINE)
  assert len(progress) == 3 * 5 + 3 * 2


def test_set5_bicubic_matches_the_paper(evaluated):
  _, results, _ = evaluated
  for s, paper in PAPER_SET5_BICUBIC.items():
    assert abs(results["Set5"][f"x{s}"]["bicubic_psnr"] - paper) <= 0.02, (s, results)


def test_table_is_laid_out_like_the_paper(evaluated):
  proc, results, _ = evaluated
  lines = proc.stdout.strip().splitlines()
  header = lines[0].split("|")
  assert [h.strip() for h in header[1:]] == [
    f"{name} x{s}" for name in ("Set5", "DIV2K") for s in SCALES
  ]
  rows = {
    line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in lines[2:]
  }
  assert rows["Bicubic"][0] == "{bicubic_psnr:.2f}/{bicubic_ssim:.4f}".format(
    **results["Set5"]["x2"]
  )
  model_row = next(v for k, v in rows.items() if k.startswith("MDSR"))
  assert model_row[5] == "{psnr:.2f}/{ssim:.4f}".format(**results["DIV2K"]["x4"])


@pytest.mark.parametrize(
  "name,convention,hr_dir",
  [
    ("Set5", "benchmark", pathlib.Path("Set5/HR")),
    ("DIV2K", "div2k", pathlib.Path("DIV2K/DIV2K_valid_HR")),
  ],
)
def test_scores_agree_with_score_cli_on_saved_images(
  evaluated, benchmark_dir, name, convention, hr_dir
):
  _, results, images = evaluated
  for s in SCALES:
    summary = score.score_dirs(
      benchmark_dir / hr_dir,
      images / name / f"x{s}",
      scale=s,
      sr_pattern=image_io.SR_PATTERN,
      convention=convention,
    )
    assert summary["num_images"] == (5 if name == "Set5" else 2)
    np.testing.assert_allclose(
      [results[name][f"x{s}"]["psnr"], results[name][f"x{s}"]["ssim"]],
      [summary["psnr"], summary["ssim"]],
      rtol=0,
      atol=1e-9,
    )
  if name == "DIV2K":  # scored as DIV2K (RGB, border s + 6), not as a benchmark set
    other = score.score_dirs(
      benchmark_dir / hr_dir,
      images / name / "x2",
      scale=2,
      sr_pattern=image_io.SR_PATTERN,
      convention="benchmark",
    )
    assert abs(other["psnr"] - results[name]["x2"]["psnr"]) > 1e-3


def test_missing_dataset_is_named_with_those_present(benchmark_dir, tmp_path, cli):
  proc = cli(
    "evaluate",
    f"--checkpoint={tmp_path}",
    f"--benchmark_dir={benchmark_dir}",
    "--datasets=Set5,Urban100",
  )
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith("error: dataset Urban100")
  assert str(benchmark_dir / "Urban100") in message
  assert "DIV2K, Set5" in message
