"""Exported models (SavedModel, TFLite, ONNX) compute what `Upscaler.upscale` computes, in
the runtimes people deploy with: TensorFlow, the LiteRT interpreter, onnxruntime and
OpenCV's dnn module, at an odd size, a batch of another size, and a size that `upscale`
tiles. Two models: the shipped `pretrained/edsr_291_x2` and official-layout PyTorch
weights (EDSR x3, the pixel shuffle by 3) imported by `import_torch`. The command-line
side (`export --format=...`, `upscale --runtime=onnxruntime`) runs as docs/deploy.md has
it in tests/test_readme.py::test_deploy_page (make test-slow); here by
test_cli_exports_onnx_and_upscale_runs_it.

Tolerance: every value within 1 grey level of ours (the runtimes sum the convolutions in
other orders, so a value within float rounding of a .5 boundary may round the other way);
the fraction of values that differ is printed and bounded.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from edsr_jax import checkpoint, deploy, inference

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_DIFFERING = 1e-3  # of all output values (measured: under 1e-4)


def _images(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)

  def photo(h, w):  # smooth content with texture, as a photo has, not pure noise
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 7.0)[..., None] * np.cos(y / 5.0)[..., None]
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)

  return {
    "odd 37x51": photo(37, 51)[None],
    "batch of 2 at 48x64": np.stack([photo(48, 64), photo(48, 64)]),
    # > inference.AUTO_MAX_PIXELS: `upscale` cuts it into tiles; the exports run it whole.
    "tiled 520x510": photo(520, 510)[None],
  }


def _runtimes(paths):
  """{runtime: uint8 NHWC batch -> uint8 NHWC batch}, each loading its artifact."""
  import cv2
  import onnxruntime
  import tensorflow as tf
  from ai_edge_litert.interpreter import Interpreter

  served = tf.saved_model.load(str(paths["savedmodel"])).signatures["serving_default"]
  session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
  net = cv2.dnn.readNetFromONNX(str(paths["onnx"]))

  def litert(x):
    interpreter = Interpreter(model_path=str(paths["tflite"]))
    runner = interpreter.get_signature_runner("serving_default")
    return runner(lr=x)["sr"]

  def opencv(x):
    net.setInput(x)
    return net.forward()

  return {
    "TensorFlow (SavedModel)": lambda x: served(lr=tf.constant(x))["sr"].numpy(),
    "LiteRT (.tflite)": litert,
    "onnxruntime (.onnx)": lambda x: session.run(["sr"], {"lr": x})[0],
    "OpenCV dnn (.onnx)": opencv,
  }


def _export_all(restored, folder: pathlib.Path) -> dict:
  paths = {
    "savedmodel": folder / "savedmodel",
    "tflite": folder / "model.tflite",
    "onnx": folder / "model.onnx",
  }
  for fmt, path in paths.items():
    deploy.export(restored, fmt, path)
  return paths


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
  restored = checkpoint.load_params(REPO / "pretrained" / "edsr_291_x2")
  return restored, _export_all(restored, tmp_path_factory.mktemp("shipped"))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """Official-layout EDSR x3 weights (PyTorch's module names, its pixel shuffle order),
  imported, then exported; with the PyTorch model itself."""
  torch = pytest.importorskip("torch")
  import torch_reference as ref

  from edsr_jax import import_torch

  folder = tmp_path_factory.mktemp("official")
  model = ref.randomize_(ref.EDSR(3, 2, 16), 7).eval()
  torch.save(model.state_dict(), folder / "edsr_x3.pt")
  import_torch.convert(folder / "edsr_x3.pt", folder / "run", res_scale=1.0)
  restored = checkpoint.load_params(folder / "run")
  return restored, _export_all(restored, folder), model


def _compare(name, got, want) -> float:
  assert got.shape == want.shape and got.dtype == np.uint8, (name, got.shape, got.dtype)
  diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
  assert diff.max() <= 1, f"{name}: values differ by up to {diff.max()} grey levels"
  return float((diff > 0).mean())


def _check_runtimes(restored, paths, sizes, capsys, title):
  ours = inference.load(restored.step_dir)
  scale = restored.config.model.scales[0]
  images = {k: v for k, v in _images(1).items() if k in sizes}
  wants = {k: np.stack([ours.upscale(image, scale) for image in v]) for k, v in images.items()}
  report = {}
  for runtime, run in _runtimes(paths).items():
    for size, batch in images.items():
      out = np.asarray(run(batch))
      report[f"{runtime}, {size}"] = _compare(f"{runtime}, {size}", out, wants[size])
  with capsys.disabled():
    print(f"\n{title}: fraction of output values 1 grey level from ours (none further)")
    for key, fraction in report.items():
      print(f"  {key}: {fraction:.2e}")
  assert max(report.values()) <= MAX_DIFFERING, report


SIZES = tuple(_images(0))


def test_every_runtime_reproduces_upscale_of_imported_weights(official, capsys):
  restored, paths, _ = official
  _check_runtimes(restored, paths, SIZES, capsys, "official-layout EDSR x3")


def test_every_runtime_reproduces_upscale_of_the_shipped_model(shipped, capsys):
  # The size `upscale` tiles is checked through onnxruntime below (and in all runtimes by
  # the slow test): a 520x510 image costs seconds per runtime with this network.
  _check_runtimes(*shipped, SIZES[:2], capsys, "pretrained/edsr_291_x2")


@pytest.mark.slow  # ~20 s: the shipped network on 520x510 in four runtimes
def test_every_runtime_reproduces_upscale_of_the_shipped_model_on_a_tiled_size(shipped, capsys):
  _check_runtimes(*shipped, SIZES[2:], capsys, "pretrained/edsr_291_x2, tiled size")


def test_imported_official_weights_compute_pytorchs_function(official):
  import torch

  _, paths, model = official
  session_out = deploy.load_onnx(paths["onnx"]).upscale(_images(2)["odd 37x51"][0])
  with torch.no_grad():
    x = torch.from_numpy(_images(2)["odd 37x51"].transpose(0, 3, 1, 2).astype(np.float32))
    want = model(x).numpy().transpose(0, 2, 3, 1)[0]
  want = np.floor(np.clip(want, 0, 255) + 0.5).astype(np.uint8)
  assert _compare("onnx vs PyTorch", session_out, want) <= MAX_DIFFERING


def test_onnx_upscaler_tiles_as_ours(shipped):
  """`deploy.load_onnx` cuts a large image into exactly our tiles and batches."""
  restored, paths = shipped
  ours = inference.load(restored.step_dir)
  theirs = deploy.load_onnx(paths["onnx"])
  image = _images(3)["tiled 520x510"][0]
  assert theirs.plan(image.shape) == ours.plan(image.shape)
  assert ours.plan(image.shape).num_tiles > 1
  _compare("tiled onnx", theirs.upscale(image), ours.upscale(image))


@pytest.mark.parametrize("fmt", deploy.FORMATS)
def test_each_artifact_carries_its_record(shipped, fmt):
  restored, paths = shipped
  info = deploy.read_record(paths[fmt])
  # Where the shipped weights were trained (its export.json), not the export's step 0.
  shipped_from = json.loads((REPO / "pretrained/edsr_291_x2/export.json").read_text())
  assert info["format"] == fmt and info["scale"] == 2 and info["ema"] is True
  assert info["step"] == shipped_from["step"] == 12000 and restored.step == 0
  assert info["source"] == shipped_from["source"]
  assert info["input"]["dtype"] == "uint8" and info["model"]["num_features"] == 32
  assert info["halo"] == inference.receptive_field_radius(restored.config.model, 2)


@pytest.mark.parametrize("fmt", deploy.FORMATS)
def test_a_failing_conversion_is_one_error_and_leaves_nothing(fmt, tmp_path):
  """Weights that do not fit the network (a layer missing) fail inside the converter's
  tracing: one UserError naming the output and the format, and nothing on disk."""
  import dataclasses

  from edsr_jax import errors

  restored = checkpoint.load_params(REPO / "pretrained" / "edsr_291_x2")
  params = dict(restored.params)
  del params["tail"]
  broken = dataclasses.replace(restored, params=params)
  output = tmp_path / f"model.{fmt}"
  with pytest.raises(errors.UserError, match=rf"model\.{fmt}: the {fmt} converter failed"):
    deploy.export(broken, fmt, output)
  assert list(tmp_path.iterdir()) == []


def test_cli_exports_onnx_and_upscale_runs_it(tmp_path):
  """`export --format=onnx` and `upscale --runtime=onnxruntime`, real subprocesses."""
  from PIL import Image

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "edsr_x2.onnx"
  done = subprocess.run(
    [sys.executable, "-m", "edsr_jax.export", "--checkpoint=pretrained/edsr_291_x2",
     "--format=onnx", f"--output={out}"],
    cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Traceback" not in done.stderr and str(out) in done.stdout
  assert json.loads(json.dumps(deploy.read_record(out)))["format"] == "onnx"
  image = _images(4)["odd 37x51"][0]
  Image.fromarray(image).save(tmp_path / "photo.png")
  upscaled = subprocess.run(
    [sys.executable, "-m", "edsr_jax.upscale", f"--checkpoint={out}", "--runtime=onnxruntime",
     f"--output_dir={tmp_path / 'sr'}", str(tmp_path / "photo.png")],
    cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert upscaled.returncode == 0, upscaled.stderr[-3000:]
  with Image.open(tmp_path / "sr" / "photo_x2_SR.png") as sr:
    got = np.asarray(sr)
  _compare(
    "upscale --runtime=onnxruntime",
    got,
    inference.load(REPO / "pretrained/edsr_291_x2").upscale(image),
  )


def test_overwrite_replaces_an_export_and_leaves_nothing_else(shipped, tmp_path):
  from edsr_jax import errors

  restored, _ = shipped
  target = tmp_path / "savedmodel"
  deploy.export(restored, "savedmodel", target)
  with pytest.raises(errors.UserError, match="exists; refusing to overwrite it"):
    deploy.export(restored, "savedmodel", target)
  (target / "mine.txt").write_text("from the first export\n")
  deploy.export(restored, "savedmodel", target, overwrite=True)
  assert not (target / "mine.txt").exists() and deploy.read_record(target)["format"] == "savedmodel"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["savedmodel"]
