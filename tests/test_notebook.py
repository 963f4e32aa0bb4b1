"""Executes notebooks/restore_and_upscale.ipynb end to end on a checkpoint trained here."""

import base64
import io
import pathlib
import re

import nbclient
import nbformat
import numpy as np
import skimage.data
from PIL import Image

from edsr_jax import config_lib, data, inference, metrics, train
from edsr_jax.imresize import modcrop

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "restore_and_upscale.ipynb"


def test_notebook_runs_and_reports_psnr(tmp_path, monkeypatch):
  config = config_lib.runlocal(config_lib.base_config())
  config.model.scales = (3,)
  config.model.num_blocks, config.model.num_features = 1, 8
  config.num_train_steps = config.checkpoint_every_steps = config.eval_every_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "run"))

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
  # The kernel inherits this environment; it runs in notebooks/ as Jupyter would, so the
  # notebook finds the package itself.
  monkeypatch.setenv("EDSR_CHECKPOINT", str(tmp_path / "run"))
  monkeypatch.delenv("PYTHONPATH", raising=False)
  client = nbclient.NotebookClient(
    notebook,
    timeout=300,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK.parent)}},
  )
  client.execute()

  text = "".join(
    out.get("text", "")
    for cell in notebook.cells
    if cell.cell_type == "code"
    for out in cell.outputs
    if out.output_type == "stream"
  )
  printed = {
    label: (float(p), float(s))
    for label, p, s in re.findall(r"(bicubic|model) PSNR ([\d.]+) dB  SSIM ([\d.]+)", text)
  }
  assert set(printed) == {"bicubic", "model"}, text
  assert str(tmp_path / "run" / "checkpoints" / "2") in text

  # The same numbers from the library, for the x3 model the notebook was pointed at.
  hr = modcrop(skimage.data.chelsea(), 3)
  lr = data.bicubic_lr(hr, 3)
  expected = {
    "bicubic": metrics.evaluate_pair(metrics.bicubic_upscale(lr, 3), hr, scale=3),
    "model": metrics.evaluate_pair(inference.load(tmp_path / "run").upscale(lr), hr, scale=3),
  }
  for label, scores in expected.items():
    np.testing.assert_allclose(printed[label], (scores["psnr"], scores["ssim"]), atol=0.006)

  pictures = [
    out["data"]["image/png"]
    for cell in notebook.cells
    if cell.cell_type == "code"
    for out in cell.outputs
    if out.output_type == "display_data" and "image/png" in out.get("data", {})
  ]
  assert len(pictures) == 1
  strip = Image.open(io.BytesIO(base64.b64decode(pictures[0])))
  crop = min(256, *hr.shape[:2]) // 3 * 3
  assert strip.size == (4 * crop + 3 * 4, crop + 14)  # four labelled panels
