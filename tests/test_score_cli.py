"""Tests for `python -m edsr_jax.score`, run as a real subprocess."""

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edsr_jax import metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RCAN_CASES = [(method, scale) for method in ("RCAN", "RCANplus") for scale in (2, 3, 4)]


def parse_rcan_results(path):
  """{(method, scale): {"images": {name: (psnr, ssim)}, "mean": (psnr, ssim)}} from the txt."""
  table, method = {}, None
  for line in path.read_text().splitlines():
    if m := re.match(r"Method_\d+: (\w+);", line):
      method = m[1]
    elif m := re.match(r"x(\d+) \d+ (\w+?)_RCAN\w*\.png: PSNR= ([\d.]+) SSIM= ([\d.]+)", line):
      entry = table.setdefault((method, int(m[1])), {"images": {}})
      entry["images"][m[2]] = (float(m[3]), float(m[4]))
    elif m := re.match(r"x(\d+): PSNR= ([\d.]+) SSIM= ([\d.]+)", line):
      table[(method, int(m[1]))]["mean"] = (float(m[2]), float(m[3]))
  return table


def run_score(*args):
  return subprocess.run(
    [sys.executable, "-m", "edsr_jax.score", *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )


def assert_one_line_error(proc, *fragments):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  for fragment in fragments:
    assert str(fragment) in lines[0], (fragment, lines[0])


def _save(path, array, mode=None):
  Image.fromarray(array, mode=mode).save(path)
  return path


@pytest.fixture
def dirs(tmp_path):
  hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
  hr_dir.mkdir()
  sr_dir.mkdir()
  return hr_dir, sr_dir


# --- the RCAN reference, end to end ----------------------------------------------------


@pytest.mark.parametrize("method,scale", RCAN_CASES)
def test_cli_reproduces_rcan_matlab_scores(shared_data, tmp_path, method, scale):
  table = parse_rcan_results(shared_data / "reference/rcan_set5/PSNR_SSIM_Results_BI_model.txt")
  expected = table[(method, scale)]
  assert len(expected["images"]) == 5 and "mean" in expected
  out = tmp_path / "scores.json"
  proc = run_score(
    f"--hr_dir={shared_data / 'benchmark/Set5/HR'}",
    f"--sr_dir={shared_data / f'reference/rcan_set5/SR/BI/{method}/Set5/x{scale}'}",
    f"--scale={scale}",
    "--sr_pattern={name}_" + method + "_x{scale}.png",
    f"--output_json={out}",
  )
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(out.read_text())
  assert summary["scale"] == scale and summary["convention"] == "benchmark"
  assert [row["name"] for row in summary["per_image"]] == sorted(expected["images"])
  for row in summary["per_image"]:
    want_psnr, want_ssim = expected["images"][row["name"]]
    assert row["psnr"] == pytest.approx(want_psnr, abs=1e-3), row
    assert row["ssim"] == pytest.approx(want_ssim, abs=1e-4), row
    assert abs(row["psnr"] - want_psnr) < 2e-6 and abs(row["ssim"] - want_ssim) < 2e-6, row
  assert summary["psnr"] == pytest.approx(expected["mean"][0], abs=2e-6)
  assert summary["ssim"] == pytest.approx(expected["mean"][1], abs=2e-6)
  # The printed table names every image and the mean, to 4 decimals.
  for row in summary["per_image"]:
    assert re.search(rf"^{row['name']}\s+{row['psnr']:.4f}\s+{row['ssim']:.4f}$", proc.stdout, re.M)
  assert f"{summary['psnr']:.4f}" in proc.stdout and "mean" in proc.stdout


# --- synthetic folders -----------------------------------------------------------------


def test_cli_scores_synthetic_folder(dirs, tmp_path):
  hr_dir, sr_dir = dirs
  rng = np.random.default_rng(0)
  expected = {}
  # Mixed formats and modes: RGB png with a greyscale partner, grey bmp, RGBA SR.
  hr_a = rng.integers(0, 256, (33, 40, 3), dtype=np.uint8)
  sr_a = np.clip(hr_a[:32, :40] + rng.integers(-3, 4, (32, 40, 3)), 0, 255).astype(np.uint8)
  sr_a_rgba = np.concatenate([sr_a, np.full((32, 40, 1), 7, np.uint8)], axis=-1)
  _save(hr_dir / "a.png", hr_a)
  _save(sr_dir / "a_x4_SR.png", sr_a_rgba)
  expected["a"] = metrics.evaluate_pair(sr_a, hr_a, scale=4, convention="div2k")
  hr_b = rng.integers(0, 256, (36, 36), dtype=np.uint8)
  sr_b = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
  _save(hr_dir / "b.bmp", hr_b)
  _save(sr_dir / "b_x4_SR.png", sr_b)
  expected["b"] = metrics.evaluate_pair(sr_b, hr_b, scale=4, convention="div2k")
  (hr_dir / "notes.txt").write_text("not an image")

  out = tmp_path / "s.json"
  proc = run_score(
    f"--hr_dir={hr_dir}",
    f"--sr_dir={sr_dir}",
    "--scale=4",
    "--convention=div2k",
    f"--output_json={out}",
  )
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(out.read_text())
  assert summary["convention"] == "div2k" and summary["num_images"] == 2
  assert [r["name"] for r in summary["per_image"]] == ["a", "b"]
  for row in summary["per_image"]:
    assert row["psnr"] == pytest.approx(expected[row["name"]]["psnr"], abs=1e-12)
    assert row["ssim"] == pytest.approx(expected[row["name"]]["ssim"], abs=1e-12)
  assert summary["psnr"] == pytest.approx(np.mean([e["psnr"] for e in expected.values()]))


def test_cli_identical_images_give_infinity(dirs, tmp_path):
  hr_dir, sr_dir = dirs
  image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  _save(hr_dir / "x.png", image)
  _save(sr_dir / "x_x2_SR.png", image)
  out = tmp_path / "s.json"
  proc = run_score(f"--hr_dir={hr_dir}", f"--sr_dir={sr_dir}", "--scale=2", f"--output_json={out}")
  assert proc.returncode == 0, proc.stderr

  def no_infinity(name):
    raise AssertionError(f"{name} in {out}: not JSON")

  summary = json.loads(out.read_text(), parse_constant=no_infinity)  # as a strict parser
  assert summary["psnr"] == "inf" and float(summary["psnr"]) == math.inf
  assert summary["per_image"][0]["psnr"] == "inf" and summary["ssim"] == pytest.approx(1.0)


# --- errors: one line, the file named, non-zero exit -----------------------------------


def test_cli_missing_sr_file_is_named(dirs):
  hr_dir, sr_dir = dirs
  image = np.zeros((32, 32, 3), np.uint8)
  _save(hr_dir / "present.png", image)
  _save(sr_dir / "present_x2_SR.png", image)
  _save(hr_dir / "lost.png", image)
  proc = run_score(f"--hr_dir={hr_dir}", f"--sr_dir={sr_dir}", "--scale=2")
  assert_one_line_error(proc, sr_dir / "lost_x2_SR.png", "missing")
  assert "present" not in proc.stderr


def test_cli_corrupt_png_is_named(dirs):
  hr_dir, sr_dir = dirs
  image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  _save(hr_dir / "img.png", image)
  good = _save(sr_dir / "good.png", image).read_bytes()
  (sr_dir / "good.png").unlink()
  bad = sr_dir / "img_x2_SR.png"
  bad.write_bytes(good[: len(good) // 2])  # Truncated mid-IDAT.
  proc = run_score(f"--hr_dir={hr_dir}", f"--sr_dir={sr_dir}", "--scale=2")
  assert_one_line_error(proc, bad, "cannot read image")


def test_cli_folder_errors(dirs, tmp_path):
  hr_dir, sr_dir = dirs
  proc = run_score(f"--hr_dir={hr_dir}", f"--sr_dir={sr_dir}", "--scale=2")
  assert_one_line_error(proc, "no image files", hr_dir)
  missing = tmp_path / "nowhere"
  proc = run_score(f"--hr_dir={missing}", f"--sr_dir={sr_dir}", "--scale=2")
  assert_one_line_error(proc, missing, "not an existing directory")


def test_cli_size_mismatch_names_both_files(dirs):
  hr_dir, sr_dir = dirs
  _save(hr_dir / "img.png", np.zeros((30, 30, 3), np.uint8))
  _save(sr_dir / "img_x2_SR.png", np.zeros((32, 30, 3), np.uint8))
  proc = run_score(f"--hr_dir={hr_dir}", f"--sr_dir={sr_dir}", "--scale=2")
  assert_one_line_error(proc, sr_dir / "img_x2_SR.png", hr_dir / "img.png", "larger than")
