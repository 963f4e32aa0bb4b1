"""Shipping weights: `edsr_jax.export`, `--nouse_ema` on evaluate, and the crop picture
script, each run as a real subprocess on a real (tiny) trained checkpoint."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from edsr_jax import checkpoint, config_lib, image_io, inference, metrics, train

ROOT = pathlib.Path(__file__).parent.parent


def _cli(cwd, *args, module=None, script=None):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  command = [sys.executable, "-m", module] if module else [sys.executable, str(script)]
  result = subprocess.run(
    command + list(args), cwd=cwd, capture_output=True, text=True, timeout=300, env=env
  )
  assert "Traceback" not in result.stderr, result.stderr
  return result


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  """A tiny x2 run with an EMA of its parameters (decay 0.5, so it differs visibly)."""
  c = config_lib.load_config_file(ROOT / "configs" / "demo.py")
  c.model.num_blocks, c.model.num_features = 1, 8
  c.patch_size, c.batch_size = 12, 4
  c.ema_decay, c.num_train_steps = 0.5, 4
  c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 100, 4
  c.data.demo_train_images = ("astronaut", "rocket")
  c.data.demo_val_images = ("chelsea",)
  workdir = tmp_path_factory.mktemp("ema_run")
  train.train_and_evaluate(c, str(workdir))
  return workdir


def _params(path, use_ema=None):
  return jax.device_get(checkpoint.load_params(path, use_ema).params)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_export_writes_the_ema_as_a_small_fresh_workdir(ema_run, tmp_path, shared_data):
  out = _cli(tmp_path, f"--checkpoint={ema_run}", "--output=shipped/x2", module="edsr_jax.export")
  assert out.returncode == 0, out.stderr
  shipped = tmp_path / "shipped" / "x2"  # relative to where the command ran
  assert sorted(p.name for p in (shipped / "checkpoints").iterdir()) == ["0"]
  summary = json.loads((shipped / "export.json").read_text())
  assert (summary["step"], summary["ema"]) == (4, True)
  assert summary["source"] == str(ema_run / "checkpoints" / "4")
  assert "EMA of the parameters" in out.stdout and "step 4" in out.stdout
  # The hint fine-tunes in a new folder, from the export (never in it: a run there would
  # rotate its one checkpoint out); the config flags name the exported network.
  hint = out.stdout.strip().splitlines()[-1]
  assert hint.startswith("fine-tune from it in a new workdir, adding your data flags: "), hint
  assert hint.endswith(
    "edsr.py:x2,baseline --config.model.num_blocks=1 --config.model.num_features=8 "
    "--config.init_from=shipped/x2 --workdir=shipped/x2_finetuned"
  ), hint
  assert not (tmp_path / "shipped" / "x2_finetuned").exists()

  ema, raw = _params(ema_run, use_ema=True), _params(ema_run, use_ema=False)
  with pytest.raises(AssertionError):
    _assert_same(ema, raw)
  _assert_same(_params(shipped), ema)
  upscaler = inference.load(shipped)
  assert not upscaler.ema and upscaler.config.ema_decay == 0
  assert upscaler.config.model.to_dict() == checkpoint.load_params(ema_run).config.model.to_dict()
  size = sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file())
  assert size < 10 * 2**20
  scored = _cli(
    tmp_path, "--checkpoint=shipped/x2", f"--benchmark_dir={shared_data / 'benchmark'}",
    "--datasets=Set5", "--max_images=1", module="edsr_jax.evaluate",
  )  # fmt: skip
  assert "EDSR (exported step 4, EMA)" in scored.stdout, scored.stdout + scored.stderr

  # A second export to the same place is refused and leaves it as it was.
  again = _cli(
    tmp_path, f"--checkpoint={ema_run}", "--output=shipped/x2", "--nouse_ema",
    module="edsr_jax.export",
  )  # fmt: skip
  assert again.returncode == 1
  assert "already holds checkpoint(s) ['0']" in again.stderr.strip().splitlines()[-1]
  _assert_same(_params(shipped), ema)
  # --overwrite replaces them; --nouse_ema exports the parameters themselves.
  replaced = _cli(
    tmp_path, f"--checkpoint={ema_run}", "--output=shipped/x2", "--nouse_ema", "--overwrite",
    module="edsr_jax.export",
  )  # fmt: skip
  assert replaced.returncode == 0, replaced.stderr
  _assert_same(_params(shipped), raw)
  assert json.loads((shipped / "export.json").read_text())["ema"] is False
  assert not list(tmp_path.glob("shipped/.*write-tmp*"))


def test_export_refuses_what_it_cannot_read_or_write(ema_run, tmp_path):
  missing = _cli(tmp_path, "--checkpoint=no/such/run", "--output=out", module="edsr_jax.export")
  assert missing.returncode == 1
  assert "no/such/run" in missing.stderr.strip().splitlines()[-1]
  (tmp_path / "a_file").write_text("not a folder")
  onto_file = _cli(tmp_path, f"--checkpoint={ema_run}", "--output=a_file", module="edsr_jax.export")
  assert onto_file.returncode == 1
  assert "--output=a_file: exists and is not a folder" in onto_file.stderr
  assert not (tmp_path / "out").exists()


def test_export_never_writes_into_the_run_it_exports(ema_run, tmp_path):
  """An output that is the source run, inside it or around it is refused, --overwrite or
  not: the run's checkpoints stay byte for byte."""
  before = {p: p.read_bytes() for p in ema_run.rglob("*") if p.is_file()}
  for output in (ema_run, ema_run / "checkpoints", ema_run / "exported", ema_run.parent):
    for extra in ([], ["--overwrite"]):
      result = _cli(
        tmp_path, f"--checkpoint={ema_run}", f"--output={output}", *extra,
        module="edsr_jax.export",
      )  # fmt: skip
      assert result.returncode == 1, result.stderr
      last = result.stderr.strip().splitlines()[-1]
      assert last.startswith(f"error: --output={output}: the run being exported"), last
      assert "Traceback" not in result.stderr
  assert {p: p.read_bytes() for p in ema_run.rglob("*") if p.is_file()} == before
  assert not (ema_run / "exported").exists()


def test_evaluate_scores_the_ema_unless_told_not_to(ema_run, tmp_path, shared_data):
  scores = {}
  for flag in ("--use_ema", "--nouse_ema"):
    result = _cli(
      tmp_path,
      f"--checkpoint={ema_run}",
      f"--benchmark_dir={shared_data / 'benchmark'}",
      "--datasets=Set5",
      "--max_images=1",
      f"--output_json={flag}.json",
      flag,
      module="edsr_jax.evaluate",
    )
    assert result.returncode == 0, result.stderr
    scores[flag] = json.loads((tmp_path / f"{flag}.json").read_text())["Set5"]["x2"]["psnr"]
    assert ("EMA)" in result.stdout) == (flag == "--use_ema")
  baby = shared_data / "benchmark" / "Set5"
  hr = image_io.read_rgb(baby / "HR" / "baby.png")
  lr = image_io.read_rgb(baby / "LR_bicubic" / "X2" / "babyx2.png")
  for flag, use_ema in (("--use_ema", True), ("--nouse_ema", False)):
    sr = inference.load(ema_run, use_ema=use_ema).upscale(lr)
    expected = metrics.evaluate_pair(sr, hr, scale=2)["psnr"]
    assert scores[flag] == pytest.approx(expected, abs=1e-9)
  assert scores["--use_ema"] != scores["--nouse_ema"]


def test_crop_comparison_draws_bicubic_model_and_ground_truth(ema_run, tmp_path, shared_data):
  set5 = shared_data / "benchmark" / "Set5"
  hr_path, lr_path = set5 / "HR" / "butterfly.png", set5 / "LR_bicubic" / "X2" / "butterflyx2.png"
  script = ROOT / "scripts" / "crop_comparison.py"
  common = [f"--checkpoint={ema_run}", f"--hr={hr_path}", f"--lr={lr_path}", "--zoom=2"]
  result = _cli(tmp_path, *common, "--box=100,60,40", "--output=pics/b.png", script=script)
  assert result.returncode == 0, result.stderr
  with Image.open(tmp_path / "pics" / "b.png") as picture:
    canvas = np.asarray(picture.convert("RGB"))
  side = 40 * 2
  assert canvas.shape == (side + 18, 3 * side + 2 * 6, 3)
  hr = image_io.read_rgb(hr_path)
  lr = image_io.read_rgb(lr_path)
  truth = hr[60:100, 100:140].repeat(2, 0).repeat(2, 1)
  np.testing.assert_array_equal(canvas[18:, 2 * (side + 6) :], truth)
  bicubic = metrics.bicubic_upscale(lr, 2)
  np.testing.assert_array_equal(
    canvas[18:, :side], bicubic[60:100, 100:140].repeat(2, 0).repeat(2, 1)
  )
  sr = inference.load(ema_run).upscale(lr)
  np.testing.assert_array_equal(
    canvas[18:, side + 6 : 2 * side + 6], sr[60:100, 100:140].repeat(2, 0).repeat(2, 1)
  )
  db = metrics.evaluate_pair(bicubic, hr, scale=2)["psnr"]
  assert f"bicubic x2: {db:.2f} dB" in result.stdout

  outside = _cli(tmp_path, *common, "--box=200,200,100", "--output=pics/c.png", script=script)
  assert outside.returncode == 1
  assert "--box=200,200,100 is not inside the 256x256 HR image" in outside.stderr
  wrong_lr = _cli(
    tmp_path, *common[:2], f"--lr={hr_path}", "--box=0,0,8", "--output=pics/d.png", script=script
  )
  assert wrong_lr.returncode == 1 and "not its x2 LR image" in wrong_lr.stderr
  assert not (tmp_path / "pics" / "c.png").exists() and not (tmp_path / "pics" / "d.png").exists()
