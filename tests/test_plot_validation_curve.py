"""scripts/plot_validation_curve.py: a PNG of the validation PSNR from a workdir's logs."""

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edsr_jax import config_lib, train

ROOT = pathlib.Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "plot_validation_curve.py"


def _plot(*args):
  return subprocess.run(
    [sys.executable, str(SCRIPT), *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )


def _module():
  spec = importlib.util.spec_from_file_location("plot_validation_curve", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _pixels_of(png, color) -> int:
  return int(np.all(np.asarray(Image.open(png).convert("RGB")) == color, axis=-1).sum())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny real training run validated at steps 2, 4 and 6."""
  path = tmp_path_factory.mktemp("run")
  c = config_lib.load_config_file(ROOT / "configs" / "demo.py")
  c.model.num_blocks, c.model.num_features = 1, 8
  c.patch_size, c.batch_size = 16, 4
  c.num_train_steps, c.log_every_steps, c.eval_every_steps = 6, 2, 2
  c.checkpoint_every_steps = 6
  c.data.demo_val_images = ("chelsea",)
  train.train_and_evaluate(c, str(path))
  return path


def test_plots_a_real_run(workdir, tmp_path):
  png = tmp_path / "out" / "curve.png"
  result = _plot(workdir, f"--output={png}", "--title=tiny run")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "model: " in result.stdout and "at step 6 (3 validations)" in result.stdout
  assert "bicubic: " in result.stdout
  assert f"wrote {png}" in result.stdout
  image = Image.open(png)
  assert image.format == "PNG" and image.size == (960, 600)
  assert 8_000 < png.stat().st_size < 500_000
  model_color = _module().COLORS[0]
  assert _pixels_of(png, model_color) > 300  # the curve, its dots, the dashed bicubic line
  # Default output: in the workdir.
  assert _plot(workdir, "--width=640", "--height=400").returncode == 0
  assert Image.open(workdir / "validation_psnr.png").size == (640, 400)


def test_reads_every_scale_and_the_latest_value_of_a_step(tmp_path):
  from clu import metric_writers

  first = metric_writers.create_default_writer(str(tmp_path))
  for step, base in ((100, 30.0), (200, 31.0)):
    scalars = {f"val/psnr_x{s}": base - s for s in (2, 3, 4)}
    scalars.update({f"val/bicubic_psnr_x{s}": base - s - 2 for s in (2, 3, 4)})
    first.write_scalars(step, scalars)
  first.close()
  again = metric_writers.create_default_writer(str(tmp_path))  # a resumed run: a new file
  again.write_scalars(200, {"val/psnr_x2": 35.5})
  again.write_scalars(300, {"val/psnr_x2": 36.0})
  again.close()
  curves = _module().read_curves(tmp_path)
  assert set(curves) == {(k, s) for k in ("model", "bicubic") for s in (2, 3, 4)}
  assert curves[("model", 2)] == {100: 28.0, 200: 35.5, 300: 36.0}
  assert curves[("bicubic", 4)] == {100: 24.0, 200: 25.0}
  png = tmp_path / "mdsr.png"
  result = _plot(tmp_path, f"--output={png}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "model x2: 36.000 dB at step 300 (3 validations)" in result.stdout
  for color in _module().COLORS[:3]:
    assert _pixels_of(png, color) > 100, color


def test_a_folder_without_validation_is_one_error_line(tmp_path):
  result = _plot(tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
    f"plot_validation_curve: error: {tmp_path}: no TensorBoard event files "
    "(events.out.tfevents.*) in it"
  ]
  from clu import metric_writers

  writer = metric_writers.create_default_writer(str(tmp_path))
  writer.write_scalars(1, {"train/loss": 3.0})
  writer.close()
  result = _plot(tmp_path)
  assert result.returncode == 1
  assert "no validation PSNR (val/psnr or val/psnr_x<s>)" in result.stderr
  assert not (tmp_path / "validation_psnr.png").exists()


def test_ymin_keeps_the_top_of_the_curve_readable():
  """With --ymin the axis starts there: the last two points, 0.2 dB apart, are far apart."""
  module = _module()
  curves = {("model", None): {1000: 21.5, 2000: 36.0, 3000: 36.2}}
  color = module.COLORS[0]

  def dot_row(image, column):  # centre of the curve's pixels around a column, above the legend
    mask = np.all(np.asarray(image)[:540, column - 1 : column + 2] == color, axis=-1)
    return float(np.nonzero(mask.any(axis=1))[0].mean())

  # Plot area: x from 80 (step 0) to 930 (step 3,000), bottom axis at y = 508.
  full, clipped = module.draw_plot(curves, "t"), module.draw_plot(curves, "t", y_min=35)
  assert abs(dot_row(full, 647) - dot_row(full, 929)) < 10
  assert abs(dot_row(clipped, 647) - dot_row(clipped, 929)) > 40
  assert abs(dot_row(clipped, 364) - 508) < 6  # step 1,000 (21.5 dB) sits on the axis


def test_a_ymin_above_every_value_is_ignored_with_a_warning(capsys):
  module = _module()
  curves = {("model", None): {1000: 21.5, 2000: 36.0, 3000: 36.2}}
  ignored = np.asarray(module.draw_plot(curves, "t", y_min=40))
  np.testing.assert_array_equal(ignored, np.asarray(module.draw_plot(curves, "t")))
  assert "--ymin=40 ignored: not below the highest value, 36.200 dB" in capsys.readouterr().err
