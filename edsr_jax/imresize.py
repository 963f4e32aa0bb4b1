"""MATLAB-compatible bicubic image resizing.

The EDSR paper's low-resolution inputs (DIV2K and the Set5/Set14/B100 benchmarks) were
made with MATLAB's `imresize(hr, 1/s, 'bicubic')`. Other bicubic resizers give other
pixels: OpenCV and TF1's `resize_bicubic` use a = -0.75 and no antialiasing, TF2's
`tf.image.resize` does not antialias by default, and PIL (same kernel, antialiased)
renormalises at the borders and skips MATLAB's rounding between passes (it differs from
the Set5 x2 LR files in ~18% of values). Training on differently degraded LR images
shifts PSNR. This module re-implements MATLAB's algorithm:

* cubic kernel with a = -0.5 and width 4; when downscaling (scale < 1) the kernel is
  stretched by 1/scale (antialiasing, MATLAB's default);
* MATLAB's sample positions and tap count, weights normalised per output pixel;
* one dimension at a time, smaller scale factor first (rows first on ties), the
  intermediate keeping the input's class as MATLAB's `imresizemex` does: uint8 input is
  rounded and saturated after each pass, float input stays float64.

MATLAB versions differ at the borders. Older releases clamp out-of-range indices
(edge replication); newer ones (R2017b checked) mirror them with the edge pixel repeated
(symmetric padding). The standard Set5/Set14/B100 LR files were made with the clamping
version, so `padding="replicate"` is the default: it reproduces every one of them
exactly. `padding="symmetric"` matches current MATLAB.

uint8 results are rounded like MATLAB's conversion to uint8: half away from zero, then
saturated to 0..255. Float input gives float output of the same dtype (computed in
float64), neither rounded nor clipped.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

_KERNEL_WIDTH = 4.0
_PADDINGS = ("replicate", "symmetric")


def _cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
  ax = np.abs(x)
  ax2 = ax * ax
  ax3 = ax2 * ax
  inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
  outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
  return inner + outer


def _contributions(
  in_len: int, out_len: int, scale: float, padding: str
) -> tuple[np.ndarray, np.ndarray]:
  """Source indices and weights, each (out_len, taps), for resizing one dimension."""
  width = _KERNEL_WIDTH
  if scale < 1.0:
    # Antialiasing: a low-pass kernel stretched to the output's sample spacing.
    width = width / scale

    def kernel(t):
      return scale * _cubic(scale * t)
  else:
    kernel = _cubic

  # MATLAB works with 1-based coordinates; keep its formulas exactly so that the
  # floating-point positions (and hence ties in rounding) come out the same.
  x = np.arange(1, out_len + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - width / 2.0)
  taps = int(math.ceil(width)) + 2
  indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
  weights = kernel(u[:, None] - indices)

  # Sum the taps left to right (as MATLAB does), not with numpy's pairwise sum, so the
  # normalisation rounds identically.
  total = np.zeros(out_len, dtype=np.float64)
  for p in range(taps):
    total += weights[:, p]
  weights = weights / total[:, None]

  indices = indices.astype(np.int64) - 1
  if padding == "replicate":
    indices = np.clip(indices, 0, in_len - 1)
  else:
    # Reflect about the borders with the edge pixel repeated (period 2 * in_len).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices, 2 * in_len)]

  keep = np.any(weights != 0.0, axis=0)
  return indices[:, keep], weights[:, keep]


def _resize_along(
  image: np.ndarray, axis: int, indices: np.ndarray, weights: np.ndarray
) -> np.ndarray:
  """Applies one dimension's weights: out[i] = sum_p weights[i, p] * image[indices[i, p]]."""
  shape = [1] * image.ndim
  shape[axis] = -1
  # A loop over the few taps (not over pixels) keeps memory at one output-sized array
  # and accumulates in tap order.
  out = np.take(image, indices[:, 0], axis=axis) * weights[:, 0].reshape(shape)
  for p in range(1, weights.shape[1]):
    out += np.take(image, indices[:, p], axis=axis) * weights[:, p].reshape(shape)
  return out


def _to_uint8_range(x: np.ndarray) -> np.ndarray:
  """MATLAB's double -> uint8 conversion (half away from zero, saturate), kept as float64."""
  return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0.0, 255.0)


def _check_scale(value) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"scale must be a real number, got {value!r}")
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"scale must be a positive finite number, got {value!r}")
  return float(value)


def imresize(
  image: np.ndarray,
  scale: float | None = None,
  *,
  output_shape: tuple[int, int] | None = None,
  padding: str = "replicate",
) -> np.ndarray:
  """Resizes an HxW or HxWxC image like MATLAB's `imresize(image, scale, 'bicubic')`.

  Args:
    image: uint8 or floating-point array, HxW or HxWxC.
    scale: resize factor for both height and width; the output is
      ceil(in_size * scale) per dimension.
    output_shape: (height, width) of the output instead of `scale`; the scale per
      dimension is then out / in.
    padding: "replicate" (older MATLAB; made the standard benchmark LR files) or
      "symmetric" (newer MATLAB, e.g. R2017b) handling of pixels beyond the border.

  Returns:
    The resized image, same dtype and number of dimensions as `image`.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
    raise TypeError(f"imresize accepts uint8 or floating-point images, got dtype {image.dtype}")
  if image.ndim not in (2, 3):
    raise ValueError(f"imresize expects an HxW or HxWxC image, got shape {image.shape}")
  if image.size == 0:
    raise ValueError(f"imresize got an empty image of shape {image.shape}")
  if padding not in _PADDINGS:
    raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
  if (scale is None) == (output_shape is None):
    raise ValueError("imresize needs exactly one of scale and output_shape")

  in_shape = image.shape[:2]
  if scale is not None:
    scale = _check_scale(scale)
    scales = (scale, scale)
    out_shape = tuple(int(math.ceil(n * scale)) for n in in_shape)
  else:
    out_shape = tuple(output_shape)
    if len(out_shape) != 2:
      raise ValueError(f"output_shape must be (height, width), got {output_shape!r}")
    for n in out_shape:
      if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"output_shape entries must be positive integers, got {output_shape!r}")
    out_shape = tuple(int(n) for n in out_shape)
    scales = tuple(o / i for o, i in zip(out_shape, in_shape, strict=True))

  is_uint8 = image.dtype == np.uint8
  result = image.astype(np.float64)
  # Python's sort is stable, like MATLAB's: the smaller scale goes first, rows on ties.
  for axis in sorted(range(2), key=lambda a: scales[a]):
    indices, weights = _contributions(in_shape[axis], out_shape[axis], scales[axis], padding)
    result = _resize_along(result, axis, indices, weights)
    if is_uint8:
      # MATLAB stores each pass in the input's class; without this the benchmark LR
      # files differ by 1 in ~15% of values.
      result = _to_uint8_range(result)

  if is_uint8:
    return result.astype(np.uint8)
  return result.astype(image.dtype)


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
  """Crops the bottom/right so that height and width are multiples of `scale`."""
  if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
    raise ValueError(f"modcrop scale must be a positive integer, got {scale!r}")
  image = np.asarray(image)
  if image.ndim < 2:
    raise ValueError(f"modcrop expects an HxW or HxWxC image, got shape {image.shape}")
  height = image.shape[0] - image.shape[0] % scale
  width = image.shape[1] - image.shape[1] % scale
  if height == 0 or width == 0:
    raise ValueError(f"image of shape {image.shape} is smaller than scale {scale}")
  return image[:height, :width]
