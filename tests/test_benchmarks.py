"""The benchmarks run (`--smoke`, as real subprocesses) and print complete tables.

Also checks the benchmark's reimplementation of the official `forward_chop` on a model
whose output pixel depends on its input pixel only: then chopping is exact, so every
quadrant (and every recursion level) must land where the untiled output has it.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:e[-+][0-9]+)?"


def _run(script: str, *args: str, timeout: int = 240) -> str:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / script), *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result.stdout


def _table(stdout: str, first_column: str) -> tuple[list[str], list[list[str]]]:
  """The header line and the row lines (up to the first empty line) of the table."""
  lines = stdout.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(first_column))
  assert set(lines[start + 1]) == {"-"}
  rows = []
  for line in lines[start + 2 :]:
    if not line.strip():
      break
    rows.append(line)
  return lines[start], rows


@pytest.mark.slow  # ~20 s of child processes: a developer tool's smoke, not the product's
def test_train_throughput_smoke():
  out = _run("train_throughput.py", "--smoke", "--peak_tflops=1")
  assert "host: " in out and "JAX backend cpu" in out
  _, rows = _table(out, "network")
  assert len(rows) == 2, out
  pattern = re.compile(
    rf"tiny +4 (float32|bfloat16) +(?P<jax>{NUMBER}) +(?P<torch>{NUMBER}) +"
    rf"(?P<ratio>{NUMBER})x +(?P<gflop>{NUMBER}) +(?P<jax_tf>{NUMBER}) +(?P<pt_tf>{NUMBER}) +"
    rf"(?P<jax_mfu>{NUMBER})% +(?P<pt_mfu>{NUMBER})% +(?P<jax_gb>{NUMBER}) rss +"
    rf"(?P<pt_gb>{NUMBER}) rss$"
  )
  dtypes = []
  for row in rows:
    match = pattern.fullmatch(row.strip())
    assert match, f"unexpected row {row!r} in\n{out}"
    values = {k: float(v) for k, v in match.groupdict().items()}
    assert all(v > 0 for v in values.values()), row
    # The tiny network at batch 4, patch 16: ~6.3k MACs per LR pixel, x3 for the step.
    assert 0.02 < values["gflop"] < 0.1, row
    assert values["ratio"] == pytest.approx(values["jax"] / values["torch"], rel=0.02)
    dtypes.append(match.group(1))
  assert dtypes == ["float32", "bfloat16"]


EXPORTED = [  # benchmarks/inference.py's rows of exported models (--smoke: first image only)
  "TensorFlow SavedModel",
  "LiteRT .tflite",
  "onnxruntime .onnx",
  "OpenCV dnn .onnx",
  "onnxruntime .onnx, our tiles",
]
RUNTIME_MODULES = ("tensorflow", "ai_edge_litert", "onnxruntime", "cv2", "jax2onnx")


@pytest.mark.parametrize(
  "exported",
  # The exported rows cost ~12 s (TensorFlow imported twice); tests/test_deploy.py checks
  # the same runtimes in `make test`.
  ["none", pytest.param("auto", marks=pytest.mark.slow)],
)
@pytest.mark.slow  # ~25 s of child processes: a developer tool's smoke, not the product's
def test_inference_smoke(exported):
  out = _run("inference.py", "--smoke", f"--exported={exported}")
  assert "host: " in out
  _, rows = _table(out, "image")
  methods = [
    "ours, auto",
    "ours, tile 8",
    "ours, untiled",
    "official forward_chop",
    "official, untiled",
  ]
  installed = all(importlib.util.find_spec(m) for m in RUNTIME_MODULES)
  if exported == "none":
    assert "Exported models" not in out, out
    installed = False
  exported = EXPORTED if installed else []
  assert len(rows) == 2 * len(methods) + len(exported), out
  parsed = {}
  for row in rows:
    image, rest = row[:15].strip(), row[15:]
    method, numbers = rest[:30].strip(), rest[30:].split()
    assert method in methods + exported, row
    tiles, calls, mpx, seconds, first, tflops, mfu, setup, _, peak, _, diff, differ = numbers
    assert int(tiles) >= 1 and int(calls) >= 1 and float(mpx) > 0, row
    # (A millisecond or less prints as 0.000: OpenCV runs the tiny network that fast.)
    assert float(seconds) >= 0 and float(first) >= 0 and float(tflops) > 0, row
    assert mfu == "-" and float(setup) > 0 and float(peak) >= float(setup), row
    parsed[image, method] = (int(tiles), int(diff), float(differ.rstrip("%")))
  for image in ("61x47 x2", "40x33 x4"):
    # Ours is exact, tiled or not; forward_chop's 10-pixel overlap is less than the
    # receptive field of 4 residual blocks (12 LR pixels), so its seams differ.
    for method in methods[:3] + methods[4:]:
      assert parsed[image, method][1:] == (0, 0.0), (image, method, out)
    assert parsed[image, "ours, tile 8"][0] > 1
    assert parsed[image, "official forward_chop"][0] == 4
    assert parsed[image, "official forward_chop"][1] > 0, out
  # The same weights in both frameworks: at most a rounding step apart.
  cross = re.findall(r"official untiled .*: max \|diff\| ([0-9]+)", out)
  assert len(cross) == 2 and all(int(c) <= 1 for c in cross), out
  if not exported:
    return
  # Our network exported and run by each runtime: within a rounding step of ours, untiled
  # (other summation orders), on at most 0.1% of the values; the whole image in one call,
  # except onnxruntime in our tiles, which plans exactly as "ours, auto" does.
  for method in EXPORTED:
    tiles, diff, differ = parsed["61x47 x2", method]
    assert diff <= 1 and differ <= 0.1, (method, out)
    assert tiles == (parsed["61x47 x2", "ours, auto"][0] if "tiles" in method else 1), out
  for runtime in ("TensorFlow", "LiteRT", "onnxruntime", "OpenCV"):
    assert re.search(rf"; {runtime} [0-9][^;]* on cpu", out), out
  header, artifacts = _table(out, "format")
  assert header.split() == ["format", "artifact", "size", "MB", "export", "s"], out
  sizes = {}
  for row in artifacts:
    fmt, name, size, seconds = row.split()
    sizes[fmt] = float(size)
    assert float(seconds) > 0, row
  # The tiny network's 8,035 float32 parameters are 32 kB; each artifact holds them once.
  assert sizes.keys() == {"savedmodel", "tflite", "onnx"} and all(
    0.03 <= v < 0.5 for v in sizes.values()
  ), out


def _load_inference_module():
  sys.path.insert(0, str(ROOT / "benchmarks"))  # as when run as a script: `import child`
  spec = importlib.util.spec_from_file_location(
    "bench_inference", ROOT / "benchmarks" / "inference.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "h, w, scale, min_size, calls",
  [
    (47, 61, 2, 160000, 4),  # one level: four quadrants
    (339, 510, 4, 20000, 16),  # two levels
    (33, 40, 3, 500, 64),  # odd sizes, x3, three levels
  ],
)
def test_forward_chop_places_every_quadrant(h, w, scale, min_size, calls):
  bench = _load_inference_module()
  seen = []

  def pointwise(x):  # each output pixel depends on one input pixel only
    seen.append(tuple(x.shape))
    return (x * 2 + 1).repeat_interleave(scale, 2).repeat_interleave(scale, 3)

  x = torch.from_numpy(np.random.default_rng(0).random((1, 3, h, w), np.float32))
  out = bench.forward_chop(pointwise, x, scale, shave=10, min_size=min_size)
  assert len(seen) == calls
  assert all(s[2] * s[3] < min_size for s in seen)
  torch.testing.assert_close(out, pointwise(x), rtol=0, atol=0)
  with pytest.raises(ValueError, match="never stop"):
    bench.forward_chop(pointwise, x, scale, shave=10, min_size=441)
