"""Tests for the MATLAB-compatible bicubic resize."""

import math
import re

import numpy as np
import pytest
from PIL import Image

from edsr_jax.imresize import imresize, modcrop

SCALES = (2, 3, 4)


def _load(path) -> np.ndarray:
  with Image.open(path) as img:
    # Only RGB and greyscale occur in the benchmark sets; anything else (palette, alpha)
    # would need an explicit conversion decision, so fail loudly instead.
    assert img.mode in ("RGB", "L"), f"{path}: unexpected PNG mode {img.mode}"
    return np.asarray(img)


def _check_benchmark(shared_data, set_name, scale):
  hr_dir = shared_data / "benchmark" / set_name / "HR"
  lr_dir = shared_data / "benchmark" / set_name / "LR_bicubic" / f"X{scale}"
  hr_paths = sorted(hr_dir.glob("*.png"))
  assert hr_paths, f"no HR images in {hr_dir}"
  failures = []
  for hr_path in hr_paths:
    hr = _load(hr_path)
    lr = _load(lr_dir / f"{hr_path.stem}x{scale}.png")
    out = imresize(modcrop(hr, scale), 1 / scale)
    if out.shape != lr.shape:
      failures.append(f"{hr_path.stem}: shape {out.shape} != {lr.shape}")
    elif (n := int(np.count_nonzero(out != lr))) > 0:
      failures.append(f"{hr_path.stem}: {n} values differ")
  return len(hr_paths), failures


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("set_name", ["Set5", "Set14", "B100"])
def test_reproduces_benchmark_lr_exactly(shared_data, set_name, scale):
  # The LR files are MATLAB imresize(modcrop(HR, s), 1/s, 'bicubic') on uint8 (older
  # MATLAB: clamped borders, uint8 between passes); every value must match.
  count, failures = _check_benchmark(shared_data, set_name, scale)
  assert count == {"Set5": 5, "Set14": 14, "B100": 100}[set_name]
  assert not failures, failures


def test_benchmark_greyscale_image_stays_2d(shared_data):
  hr = _load(shared_data / "benchmark" / "Set14" / "HR" / "bridge.png")
  assert hr.ndim == 2
  assert imresize(hr, 0.5).shape == (256, 256)


# MATLAB R2017b outputs of imread -> im2double -> imresize(.., 'bicubic') -> imwrite
# (xinntao/matlab_functions_verification). Measured here: 0 differing values for all
# five; the bounds leave a little headroom for a rare tie flip.
@pytest.mark.parametrize(
  "name, scale",
  [("down_x2", 1 / 2), ("down_x3", 1 / 3), ("down_x4", 1 / 4), ("up_x2", 2), ("up_x3", 3)],
)
def test_matches_matlab_r2017b_baboon(shared_data, name, scale):
  ref_dir = shared_data / "reference" / "matlab_imresize"
  image = _load(ref_dir / "baboon.png")
  expected = _load(ref_dir / f"baboon_{name}_matlab.png").astype(np.int64)
  # Follow the reference script: resize doubles in [0, 1], then imwrite's conversion.
  out = imresize(image / 255.0, scale, padding="symmetric") * 255.0
  out = np.clip(np.sign(out) * np.floor(np.abs(out) + 0.5), 0, 255).astype(np.int64)
  assert out.shape == expected.shape
  diff = np.abs(out - expected)
  assert diff.max() <= 1
  assert diff.sum() <= 2


# ---------------------------------------------------------------------------------------
# Independent property checks.


@pytest.mark.parametrize("padding", ["replicate", "symmetric"])
@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
def test_constant_image_stays_constant(scale, padding):
  # Weights are normalised per output pixel, so a constant survives up to rounding.
  out = imresize(np.full((11, 13, 3), 77, np.uint8), scale, padding=padding)
  assert out.dtype == np.uint8
  assert np.all(out == 77)
  out = imresize(np.full((11, 13), 300.7, np.float64), scale, padding=padding)
  np.testing.assert_allclose(out, 300.7, rtol=0, atol=1e-12)


def test_float_keeps_dtype_and_is_not_clipped():
  step = np.zeros((8, 8), np.float32)
  step[:, 4:] = 1.0
  out = imresize(step, 2)
  assert out.dtype == np.float32
  # The cubic kernel has negative lobes, so a step rings past both of its levels.
  assert out.max() > 1.0
  assert out.min() < 0.0
  # Values far outside 0..255 pass through untouched (no uint8 saturation, no rounding).
  out = imresize(np.full((6, 6), -1000.25), 0.5)
  assert out.dtype == np.float64
  np.testing.assert_allclose(out, -1000.25, rtol=0, atol=1e-9)


def test_uint8_output_is_saturated():
  # The ringing of a 0/255 step would go past 0 and 255; uint8 output saturates instead
  # of wrapping around.
  step = np.zeros((8, 8), np.uint8)
  step[:, 4:] = 255
  out = imresize(step, 2)
  assert out.dtype == np.uint8
  assert out[:, :6].max() <= 10
  assert out[:, -6:].min() >= 245


@pytest.mark.parametrize(
  "scale, expected",
  [(0.5, (3, 4)), (1 / 3, (2, 3)), (0.25, (2, 2)), (2, (10, 14)), (1.5, (8, 11))],
)
def test_output_size_is_ceil(scale, expected):
  image = np.zeros((5, 7, 3), np.uint8)
  assert imresize(image, scale).shape == expected + (3,)
  assert imresize(image[..., 0], scale).shape == expected


def test_output_shape_is_honoured():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  assert imresize(image, output_shape=(4, 12)).shape == (4, 12, 3)
  assert imresize(image, output_shape=(1, 1)).shape == (1, 1, 3)
  # Same size: both scales are exactly 1, so every output pixel is its input pixel.
  np.testing.assert_array_equal(imresize(image, output_shape=(5, 7)), image)
  # Dimensions that halve exactly give scale 0.5 on both axes, as scale=0.5 does.
  even = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
  np.testing.assert_array_equal(imresize(even, output_shape=(4, 3)), imresize(even, 0.5))


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_channels_are_independent(dtype):
  rng = np.random.default_rng(2)
  image = (rng.random((9, 11, 3)) * 255).astype(dtype)
  colour = imresize(image, 0.6)
  for c in range(3):
    grey = imresize(image[..., c], 0.6)
    assert grey.ndim == 2
    np.testing.assert_array_equal(colour[..., c], grey)
    np.testing.assert_array_equal(imresize(image[..., c : c + 1], 0.6)[..., 0], grey)


@pytest.mark.parametrize("padding", ["replicate", "symmetric"])
@pytest.mark.parametrize("low, high, expected", [(126, 127, 127), (0, 1, 1), (8, 9, 9)])
def test_ties_round_half_away_from_zero(low, high, expected, padding):
  # At scale 1/2 the middle output of a 6-pixel row sits exactly between pixels 3 and 4.
  # Its antialiased cubic weights are 0.5 * k(d) for d = 0.5, 1.5, 2.5, 3.5 on each
  # side: 0.43359375, 0.11328125, -0.03515625, -0.01171875, all dyadic and summing to
  # exactly 0.5 per side. The 3 pixels on each side (and their border extensions) are
  # equal, so the output is exactly (low + high) / 2; round-half-to-even or truncation
  # would give `low`.
  row = np.array([low] * 3 + [high] * 3, np.uint8)
  image = np.tile(row, (6, 1))
  exact = imresize(image.astype(np.float64), 0.5, padding=padding)
  assert exact[1, 1] == (low + high) / 2
  out = imresize(image, 0.5, padding=padding)
  assert out.shape == (3, 3)
  assert np.all(out[:, 1] == expected)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint16, np.int32, np.int64, np.complex64])
def test_rejects_unsupported_dtype(dtype):
  with pytest.raises(TypeError, match=rf"uint8 or floating.*{np.dtype(dtype).name}"):
    imresize(np.zeros((4, 4), dtype), 0.5)


@pytest.mark.parametrize("scale", [0, -0.5, math.nan, math.inf])
def test_rejects_bad_scale(scale):
  with pytest.raises(ValueError, match=rf"scale.*{scale!r}"):
    imresize(np.zeros((4, 4), np.uint8), scale)


def test_rejects_bad_arguments():
  image = np.zeros((4, 4), np.uint8)
  with pytest.raises(TypeError, match="scale must be a real number"):
    imresize(image, "0.5")
  with pytest.raises(ValueError, match=r"output_shape.*\(0, 3\)"):
    imresize(image, output_shape=(0, 3))
  with pytest.raises(ValueError, match=r"output_shape.*\(3, -2\)"):
    imresize(image, output_shape=(3, -2))
  with pytest.raises(ValueError, match=r"output_shape.*\(3, 2, 1\)"):
    imresize(image, output_shape=(3, 2, 1))
  with pytest.raises(ValueError, match="exactly one of scale and output_shape"):
    imresize(image)
  with pytest.raises(ValueError, match="exactly one of scale and output_shape"):
    imresize(image, 0.5, output_shape=(2, 2))
  with pytest.raises(ValueError, match="padding.*'reflect'"):
    imresize(image, 0.5, padding="reflect")
  with pytest.raises(ValueError, match=r"HxW or HxWxC.*\(2, 2, 2, 2\)"):
    imresize(np.zeros((2, 2, 2, 2), np.uint8), 0.5)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0, 3), (4, 4, 0)])
def test_rejects_empty_image(shape):
  with pytest.raises(ValueError, match="empty image.*" + re.escape(repr(shape))):
    imresize(np.zeros(shape, np.uint8), 0.5)


def test_modcrop():
  image = np.arange(10 * 13 * 3).reshape(10, 13, 3)
  out = modcrop(image, 4)
  assert out.shape == (8, 12, 3)
  np.testing.assert_array_equal(out, image[:8, :12])
  np.testing.assert_array_equal(modcrop(image[..., 0], 5), image[:10, :10, 0])
  assert modcrop(image, 1).shape == image.shape
  with pytest.raises(ValueError, match="positive integer, got 0"):
    modcrop(image, 0)
  with pytest.raises(ValueError, match="positive integer, got 2.0"):
    modcrop(image, 2.0)
  with pytest.raises(ValueError, match="smaller than scale 11"):
    modcrop(image, 11)


# ---------------------------------------------------------------------------------------
# A slow, literal per-pixel transcription of MATLAB's algorithm to guard the vectorised
# code.


def _keys(t: float, a: float = -0.5) -> float:
  t = abs(t)
  if t <= 1:
    return (a + 2) * t**3 - (a + 3) * t**2 + 1
  if t < 2:
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
  return 0.0


def _source_pixel(j: int, n: int, padding: str) -> int:
  """1-based (possibly out-of-range) index -> 0-based pixel index."""
  if padding == "replicate":
    return min(max(j, 1), n) - 1
  m = (j - 1) % (2 * n)
  return m if m < n else 2 * n - 1 - m


def _slow_taps(in_len, out_len, scale, padding):
  taps_per_output = []
  for x in range(1, out_len + 1):
    u = x / scale + 0.5 * (1 - 1 / scale)
    width = 4 / scale if scale < 1 else 4
    left = math.floor(u - width / 2)
    taps = []
    for j in range(left, left + math.ceil(width) + 2):
      w = scale * _keys(scale * (u - j)) if scale < 1 else _keys(u - j)
      taps.append((_source_pixel(j, in_len, padding), w))
    total = sum(w for _, w in taps)
    taps_per_output.append([(src, w / total) for src, w in taps])
  return taps_per_output


def _matlab_uint8(v: float) -> float:
  r = math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)
  return float(min(max(r, 0), 255))


def _slow_imresize(image, out_shape, scales, padding, order):
  """Resizes an HxWxC image pixel by pixel; uint8 input rounds after each pass."""
  is_uint8 = image.dtype == np.uint8
  cur = image.astype(np.float64)
  for dim in order:
    taps = _slow_taps(cur.shape[dim], out_shape[dim], scales[dim], padding)
    new_shape = list(cur.shape)
    new_shape[dim] = out_shape[dim]
    nxt = np.zeros(new_shape)
    for i, j, c in np.ndindex(*new_shape):
      acc = 0.0
      for src, w in taps[i if dim == 0 else j]:
        acc += w * (cur[src, j, c] if dim == 0 else cur[i, src, c])
      nxt[i, j, c] = _matlab_uint8(acc) if is_uint8 else acc
    cur = nxt
  return cur


_SLOW_CASES = [
  (None, 0.5),
  (None, 1 / 3),
  (None, 2),
  (None, 0.75),
  ((4, 12), None),
  ((13, 5), None),
]


def _slow_order(scales):
  return (0, 1) if scales[0] <= scales[1] else (1, 0)


@pytest.mark.parametrize("padding", ["replicate", "symmetric"])
@pytest.mark.parametrize("out_shape, scale", _SLOW_CASES)
def test_matches_slow_reference_float(out_shape, scale, padding):
  image = np.random.default_rng(3).random((7, 9, 2))
  if out_shape is None:
    out = imresize(image, scale, padding=padding)
    out_shape = (math.ceil(7 * scale), math.ceil(9 * scale))
    scales = (scale, scale)
  else:
    out = imresize(image, output_shape=out_shape, padding=padding)
    scales = (out_shape[0] / 7, out_shape[1] / 9)
  expected = _slow_imresize(image, out_shape, scales, padding, _slow_order(scales))
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("padding", ["replicate", "symmetric"])
@pytest.mark.parametrize("out_shape", [(4, 12), (13, 5), (4, 5)])
def test_matches_slow_reference_uint8(out_shape, padding):
  # With rounding between passes the dimension order matters, so this also checks that
  # the smaller scale goes first.
  image = np.random.default_rng(4).integers(0, 256, (7, 9, 2), dtype=np.uint8)
  out = imresize(image, output_shape=out_shape, padding=padding)
  scales = (out_shape[0] / 7, out_shape[1] / 9)
  order = _slow_order(scales)
  expected = _slow_imresize(image, out_shape, scales, padding, order)
  np.testing.assert_array_equal(out, expected.astype(np.uint8))
  wrong_order = _slow_imresize(image, out_shape, scales, padding, order[::-1])
  assert np.any(wrong_order != expected), "test image cannot tell the pass order apart"
