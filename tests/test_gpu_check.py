"""benchmarks/gpu_check.sh: `--smoke` runs every section of the GPU check on the CPU, in a
real subprocess, with TensorFlow unimportable as on the GPU image; the pieces of
`--prepare` that can run offline (staging the data losslessly, reading wheels' requirements,
installing wheels without an index) are checked on their own."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
SMOKE_SECTIONS = (
  "data",
  "setup",
  "machine",
  "checks",
  "throughput_tiny",
  "inference_40x33x2",
  "train",
  "evaluate",
)
NUMBER = r"[0-9]+\.[0-9]+"


def _helpers():
  # Imported by name (not from a file spec): its process pool pickles its functions.
  if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
  return importlib.import_module("gpu_check_helpers")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  pytest.importorskip("torch")  # the benchmarks' PyTorch side
  out = tmp_path_factory.mktemp("gpu_check_out")
  env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
  result = subprocess.run(
    ["bash", str(SCRIPT), "--smoke"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=420,
  )
  log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
  return result, out, log


@pytest.mark.slow  # the smoke fixture: ~50 s of every section on the CPU
def test_smoke_passes_every_section(smoke):
  result, out, log = smoke
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:] + log[-4000:]
  for text in (result.stdout, result.stderr, log):
    assert "Traceback (most recent call last)" not in text, text[-4000:]
  # At most 8 files come back from a device call; these are what the script leaves.
  assert sorted(p.name for p in out.iterdir()) == [
    "gpu_check.log",
    "results.json",
    "summary.md",
    "train_events.tfevents",
  ]
  summary = (out / "summary.md").read_text()
  assert summary.strip().splitlines()[0] in result.stdout  # printed at the end too
  for name in SMOKE_SECTIONS:
    assert re.search(rf"^\| {name} \| PASS \| [0-9]+ \| [0-9]+ \|", summary, re.M), summary
    assert f"===== {name} =====" in log
  results = json.loads((out / "results.json").read_text())
  assert [s["section"] for s in results["sections"]] == list(SMOKE_SECTIONS)
  assert {s["status"] for s in results["sections"]} == {"PASS"}


@pytest.mark.slow  # the smoke fixture: ~50 s of every section on the CPU
def test_smoke_reports_each_section(smoke):
  _, out, log = smoke
  summary = (out / "summary.md").read_text()
  results = json.loads((out / "results.json").read_text())
  # machine: versions, and the JAX version next to the numbers
  jax_version = results["machine"]["jax"]
  assert f"JAX {jax_version}" in summary.splitlines()[2]
  # checks: both PASS lines
  assert re.search(r"^- determinism: PASS: two training runs in separate processes", summary, re.M)
  assert re.search(r"^- tiled == untiled, x2 .*float32 bitwise PASS .*uint8 PASS", summary, re.M)
  assert results["checks"]["determinism"] == results["checks"]["tiled"] == "PASS"
  # throughput: JAX and PyTorch on the same row
  row = rf"\| tiny \| 4 \| float32 \| {NUMBER} \| {NUMBER} \| {NUMBER} \|"
  assert re.search(row, summary), summary
  # inference: ours against forward_chop, ours exact against its own untiled output
  for method in ("ours, auto", "ours, untiled", "official forward_chop", "official, untiled"):
    assert f"| 40x33 x2 | {method} |" in summary, summary
  assert re.search(r"\| 40x33 x2 \| ours, auto \| 1 \| [^|]+\|[^|]+\|[^|]+\|[^|]+\| 0 \|", summary)
  # train: stopped by SIGTERM after a checkpoint, saved, exit 75 (the trainer's contract)
  train = results["train"]
  assert train["returncode"] == 75 and train["sigterm_reason"] == "checkpoint 10", train
  assert train["steps_reached"] >= 10 and train["events_files"] == 1, train
  assert re.search(r"^Steps reached: [0-9]+; trainer exit 75, stopped by SIGTERM", summary, re.M)
  # evaluate: bicubic, VDSR and this run for each set
  for name in ("Set5", "Set14", "B100"):
    scores = results["evaluate"][name]["x2"]
    assert 0 < scores["psnr"] < 100 and 0 < scores["bicubic_psnr"] < 100, scores
  header = "| method | Set5 x2 | Set14 x2 | B100 x2 |"
  assert header in summary
  assert "| VDSR (published, 291 images) | 37.53 / 0.9587 | 33.03 / 0.9124 | 31.90 / 0.8960 |" in (
    summary
  )
  cell = rf"{NUMBER} / {NUMBER}"
  assert re.search(
    rf"^\| Bicubic \(measured here\) \| {cell} \| {cell} \| {cell} \|$", summary, re.M
  )
  assert re.search(
    rf"^\| this run: EDSR 2x8, [0-9]+ steps.* \| {cell} \| {cell} \| {cell} \|$", summary, re.M
  )
  # the data section staged both kinds of LR folders
  assert "benchmark/Set5" in log and "left out: data.bicubic_lr reproduces" in log
  assert re.search(r"benchmark/B100 .* kept", log)


@pytest.mark.slow  # the smoke fixture: ~50 s of every section on the CPU
def test_smoke_ran_without_tensorflow(smoke, scalars):
  _, out, log = smoke
  results = json.loads((out / "results.json").read_text())
  assert results["machine"]["import tensorflow"].startswith("not importable")
  assert results["machine"]["import clu.metric_writers"].startswith("not importable")
  # The trainer noticed, said so, and wrote TensorBoard events with tensorboard's writer.
  warning = results["train"]["fallback_warning"]
  assert warning and "tensorflow" in warning, log[-3000:]
  assert warning in log
  losses = scalars(out / "train_events.tfevents", "train/loss")
  assert losses and all(np.isfinite(v) for v in losses.values())


def test_usage():
  result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
  assert result.returncode == 0 and "--prepare" in result.stdout and "--smoke" in result.stdout
  result = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
  assert result.returncode == 2 and "unknown argument: --bogus" in result.stderr


def test_staging_is_lossless_and_leaves_out_reproducible_lr(tmp_path):
  from edsr_jax import image_io

  helpers = _helpers()
  source, staged = tmp_path / "source", tmp_path / "staged"
  helpers.cmd_smoke_source(type("A", (), {"dir": str(source)}))
  helpers.cmd_stage_data(type("A", (), {"src": str(source), "dst": str(staged), "budget": None}))
  manifest = json.loads((staged / "STAGED.json").read_text())
  assert manifest["dropped"] == []
  for target, info in manifest["files"].items():
    src = pathlib.Path(info["source"])
    suffix = ".jpg" if src.suffix == ".jpg" else ".webp"
    assert target.endswith(suffix), target
    np.testing.assert_array_equal(image_io.read_rgb(staged / target), image_io.read_rgb(src))
  # Set5 / Set14 LR files are what data.bicubic_lr makes: left out (the loaders make
  # them); B100's were made otherwise: kept, with the HR files' extension.
  assert not (staged / "benchmark" / "Set5" / "LR_bicubic").exists()
  assert not (staged / "benchmark" / "Set14" / "LR_bicubic").exists()
  assert sorted(
    p.name for p in (staged / "benchmark" / "B100" / "LR_bicubic" / "X2").iterdir()
  ) == [
    "b100_0x2.webp",
    "b100_1x2.webp",
  ]
  # Over the budget: B100 is left out.
  helpers.cmd_stage_data(type("A", (), {"src": str(source), "dst": str(staged), "budget": 1}))
  assert json.loads((staged / "STAGED.json").read_text())["dropped"] == ["B100"]
  assert not (staged / "benchmark" / "B100").exists()


def test_real_benchmark_lr_files_are_reproduced_and_webp_is_lossless(shared_data, tmp_path):
  """What --prepare relies on, on the real files: our bicubic makes Set5's and Set14's x2
  LR files exactly; lossless WebP keeps a greyscale PNG and a T91 BMP pixel for pixel."""
  from edsr_jax import image_io

  helpers = _helpers()
  for name in ("Set5", "Set14"):
    for hr in sorted((shared_data / "benchmark" / name / "HR").glob("*.png")):
      lr = shared_data / "benchmark" / name / "LR_bicubic" / "X2" / f"{hr.stem}x2.png"
      assert helpers._lr_reproduced((str(hr), str(lr), 2)), hr
  bridge = shared_data / "benchmark" / "Set14" / "HR" / "bridge.png"
  t1 = shared_data / "train" / "T91" / "t1.bmp"
  for src in (bridge, t1):
    target = tmp_path / f"{src.stem}.webp"
    helpers._encode_webp((str(src), str(target)))
    np.testing.assert_array_equal(image_io.read_rgb(target), image_io.read_rgb(src))


def _fake_wheel(folder: pathlib.Path, requires: list[str]) -> pathlib.Path:
  wheel = folder / "fakepkg-1.0-py3-none-any.whl"
  meta = "Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n"
  meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("fakepkg/__init__.py", "VALUE = 42\n")
    z.writestr("fakepkg-1.0.dist-info/METADATA", meta)
    z.writestr(
      "fakepkg-1.0.dist-info/WHEEL",
      "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    )
    z.writestr("fakepkg-1.0.dist-info/RECORD", "")
  return wheel


def test_wheel_requirements_follow_the_gpu_image_markers(tmp_path):
  wheel = _fake_wheel(
    tmp_path,
    [
      "numpy>=1.2",
      'uvloop; platform_system != "Windows"',
      'nest_asyncio; platform_system == "Windows"',
      'pytest; extra == "testing"',
      'tomli; python_version < "3.11"',
    ],
  )
  assert _helpers().wheel_requirements(wheel) == ["numpy", "uvloop"]


@pytest.mark.parametrize("how", ["pip", "unpack"])
def test_install_puts_wheels_on_a_target_path(tmp_path, how):
  helpers = _helpers()
  wheel = _fake_wheel(tmp_path, [])
  site = tmp_path / "site"
  if how == "pip":
    assert helpers._install([wheel], site) == "pip install --target"
  else:
    site.mkdir()
    helpers._unzip_wheel(wheel, site)
  out = subprocess.run(
    [sys.executable, "-c", "import fakepkg; print(fakepkg.VALUE, fakepkg.__file__)"],
    env=dict(os.environ, PYTHONPATH=str(site)),
    capture_output=True,
    text=True,
  )
  assert out.stdout.split()[0] == "42" and out.stdout.split()[1].startswith(str(site)), out
