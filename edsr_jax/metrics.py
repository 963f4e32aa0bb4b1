"""PSNR and SSIM as published super-resolution tables compute them, and scoring a model.

`evaluate_pair` scores one SR image. `score` is the one loop that scores a model next to
bicubic upscaling on a set of images: training validation, the demo and the `evaluate`
tool call it with an `inference.Upscaler`, so large images are tiled (bounded memory)
exactly as in inference. `comparison_strip` draws the side-by-side picture. numpy, scipy
and Pillow only: scoring runs anywhere (no accelerator, no JAX).

Conventions, taken from the MATLAB scripts behind the EDSR/RCAN tables:

* Scores are defined on 8-bit images. Float SR output (0..255 scale) is quantised by
  `quantize`: clip to [0, 255], then round half up, `floor(x + 0.5)`. After clipping
  this is the same as MATLAB's `uint8()` (round half away from zero); numpy's
  `np.round` (half to even) is not.
* Y is MATLAB's `rgb2ycbcr` luma kept in floating point:
  `Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255` for R, G, B in 0..255. The
  reference script computes `rgb2ycbcr(im2double(img)) * 255`, i.e. Y is never rounded
  to an integer; rounding it moves Set5 PSNR by up to 0.24 dB.
* Greyscale images (HxW or HxWx1) are scored as the RGB image R = G = B = grey, which is
  what the official EDSR code does (it replicates them on loading) and what our data
  pipeline, `evaluate` and `upscale` feed the network. Their Y is therefore
  16 + 219/255 * grey, and a grey image scores exactly as its replicated RGB version,
  whichever of a pair is grey. (The MATLAB scripts behind some published tables take a
  grey image as its own Y instead; on Set14 `bridge` that moves bicubic x2 Y-PSNR by
  about 1.3 dB, so the Set14 mean by ~0.1 dB.)
* "benchmark" convention (Set5, Set14, B100, Urban100): PSNR and SSIM on Y, `scale`
  pixels removed from every side.
* "div2k" convention (DIV2K validation): PSNR on RGB (all three channels pooled into
  one MSE), `scale + 6` pixels removed from every side; SSIM on Y with that same border.
* SSIM is Wang et al.'s `ssim_index`: 11x11 Gaussian window (sigma 1.5), K = (0.01,
  0.03), L = 255, 'valid' filtering (MATLAB `filter2(w, x, 'valid')`), mean of the map.
* When HR is larger than SR (the usual modcrop case), HR is cropped from the top-left
  corner, which is what MATLAB's `modcrop` keeps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from edsr_jax import errors
from edsr_jax.image_io import SRImages
from edsr_jax.imresize import imresize

CONVENTIONS = ("benchmark", "div2k")
SCORE_KEYS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")

# MATLAB rgb2ycbcr luma row, for R, G, B on the 0..255 scale (result / 255 + 16).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)

_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_PEAK = 255.0


def _gaussian_1d(size: int = _SSIM_SIZE, sigma: float = _SSIM_SIGMA) -> np.ndarray:
  # fspecial('gaussian') is exp(-(x^2 + y^2) / (2 sigma^2)) normalised to sum 1, which
  # is exactly the outer product of this normalised 1-D kernel with itself.
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return g / g.sum()


_SSIM_WINDOW_1D = _gaussian_1d()


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3)):
    return image
  raise ValueError(f"{what}: expected an HxW, HxWx1 or HxWx3 image, got shape {image.shape}")


def _as_rgb(image: np.ndarray) -> np.ndarray:
  """Greyscale (HxW or HxWx1) as R = G = B; RGB unchanged."""
  if image.ndim == 2:
    image = image[..., None]
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def rgb_to_y(image: np.ndarray) -> np.ndarray:
  """Float64 HxW luma on the 0..255 scale (MATLAB `rgb2ycbcr`, not rounded).

  Args:
    image: HxWx3 RGB on the 0..255 scale (uint8 or float), or a greyscale HxW / HxWx1
      image, taken as R = G = B (see the module docstring).
  """
  image = _as_rgb(_check_image(image, "rgb_to_y"))
  return 16.0 + image.astype(np.float64) @ _Y_WEIGHTS / 255.0


def round_to_uint8(x):
  """Clips to [0, 255] and rounds half up, floor(x + 0.5): how SR output becomes 8-bit.

  The one rounding rule of the project, for numpy arrays and (traced) JAX arrays alike:
  inference applies it on the device. After clipping it equals MATLAB's `uint8()` (half
  away from zero); numpy's `np.round` (half to even) does not.
  """
  return ((x.clip(0.0, 255.0) + 0.5) // 1).astype(np.uint8)  # `// 1`: floor, numpy or JAX


def quantize(image: np.ndarray) -> np.ndarray:
  """Quantises an image to uint8 the way SR outputs are saved before scoring.

  uint8 input is returned as is. Float input must be on the 0..255 scale (not 0..1): it
  is clipped to [0, 255] and rounded half up (`round_to_uint8`). Other integer types are
  clipped. Raises ValueError on NaN or infinite values.
  """
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  if np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_:
    return np.clip(image, 0, 255).astype(np.uint8)
  if not np.issubdtype(image.dtype, np.floating):
    raise TypeError(f"quantize: unsupported dtype {image.dtype}")
  if not np.all(np.isfinite(image)):
    raise ValueError("quantize: image contains NaN or infinite values")
  return round_to_uint8(image.astype(np.float64))


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
  """Removes `border` pixels from each of the four sides (a view, not a copy)."""
  image = np.asarray(image)
  if border < 0:
    raise ValueError(f"border must be >= 0, got {border}")
  if border == 0:
    return image
  height, width = image.shape[:2]
  if 2 * border >= min(height, width):
    raise ValueError(f"border {border} leaves nothing of an image of shape {image.shape}")
  return image[border:-border, border:-border]


def crop_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Keeps the top-left `height` x `width` corner (MATLAB modcrop's choice of corner)."""
  image = np.asarray(image)
  if image.shape[0] < height or image.shape[1] < width:
    raise ValueError(f"cannot crop an image of shape {image.shape} to {height}x{width}")
  return image[:height, :width]


def crop_hr_to_lr(hr: np.ndarray, lr_shape: Sequence[int], *, scale: int) -> np.ndarray:
  """Crops HR top-left to (LR height * scale) x (LR width * scale), for training/eval."""
  return crop_to(hr, lr_shape[0] * scale, lr_shape[1] * scale)


def _pair(sr: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Checks a pair, quantises it and verifies the spatial sizes agree."""
  sr = quantize(_check_image(sr, "sr"))
  hr = quantize(_check_image(hr, "hr"))
  if sr.shape[:2] != hr.shape[:2]:
    raise ValueError(f"sr shape {sr.shape} and hr shape {hr.shape} differ")
  return _as_rgb(sr), _as_rgb(hr)


def _mse_to_psnr(mse: float) -> float:
  if mse == 0.0:
    return math.inf
  return float(10.0 * math.log10(_PEAK * _PEAK / mse))


def psnr(sr: np.ndarray, hr: np.ndarray, *, border: int, y_channel: bool = True) -> float:
  """Peak signal-to-noise ratio in dB (peak 255) after removing `border` pixels per side.

  Args:
    sr, hr: HxW, HxWx1 or HxWx3 images of the same height and width; uint8, or float on
      0..255 which is quantised with `quantize` first.
    border: pixels removed from every side before scoring.
    y_channel: score MATLAB's float Y; otherwise all channels pooled into one MSE.
      Greyscale images count as R = G = B (see the module docstring).

  Returns:
    The PSNR, or `math.inf` when the (cropped) images are identical.

  Raises:
    ValueError: naming both shapes when the heights/widths differ.
  """
  sr, hr = _pair(sr, hr)
  if y_channel:
    a, b = rgb_to_y(crop_border(sr, border)), rgb_to_y(crop_border(hr, border))
  else:
    a = crop_border(sr, border).astype(np.float64)
    b = crop_border(hr, border).astype(np.float64)
  return _mse_to_psnr(float(np.mean(np.square(a - b))))


def _valid_filter(stack: np.ndarray) -> np.ndarray:
  """Gaussian 'valid' correlation over the last two axes (MATLAB filter2 'valid')."""
  out = ndimage.correlate1d(stack, _SSIM_WINDOW_1D, axis=-2, mode="constant")
  out = ndimage.correlate1d(out, _SSIM_WINDOW_1D, axis=-1, mode="constant")
  # The kernel is centred, so dropping the half-width on each side leaves exactly the
  # positions where the whole window lies inside the image.
  half = _SSIM_SIZE // 2
  return out[..., half:-half, half:-half]


def _ssim_y(a: np.ndarray, b: np.ndarray) -> float:
  """Wang's ssim_index on two float64 HxW images on the 0..255 scale."""
  if min(a.shape) < _SSIM_SIZE:
    raise ValueError(f"SSIM needs at least {_SSIM_SIZE}x{_SSIM_SIZE} pixels, got {a.shape}")
  c1 = (_SSIM_K1 * _PEAK) ** 2
  c2 = (_SSIM_K2 * _PEAK) ** 2
  # One filtering pass over all five moment images.
  mu_a, mu_b, e_aa, e_bb, e_ab = _valid_filter(np.stack([a, b, a * a, b * b, a * b]))
  # Same algebra as ssim_index (E[x^2] - mu^2), so rounding matches the MATLAB code.
  mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
  var_a, var_b, cov = e_aa - mu_aa, e_bb - mu_bb, e_ab - mu_ab
  ssim_map = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
  return float(np.mean(ssim_map))


def ssim(sr: np.ndarray, hr: np.ndarray, *, border: int) -> float:
  """SSIM (Wang's ssim_index) on Y after removing `border`.

  Inputs as for `psnr`. Identical images give exactly 1.0.
  """
  sr, hr = _pair(sr, hr)
  return _ssim_y(rgb_to_y(crop_border(sr, border)), rgb_to_y(crop_border(hr, border)))


def evaluate_pair(
  sr: np.ndarray, hr: np.ndarray, *, scale: int, convention: str = "benchmark"
) -> dict[str, float]:
  """Scores one SR image against its HR image as published tables do.

  Args:
    sr: super-resolved image, uint8 or float on 0..255 (quantised with `quantize`).
    hr: ground truth, of `sr`'s size or larger by less than `scale` pixels in height
      and width (the model's output for an LR image of HR // scale pixels); then its
      top-left corner of `sr`'s size is used (modcrop).
    scale: the upscaling factor; sets the border.
    convention: "benchmark" (Y PSNR and SSIM, border `scale`) or "div2k" (RGB PSNR,
      border `scale + 6`; SSIM on Y with the same border).

  Returns:
    {"psnr": dB (inf for identical images), "ssim": float}.

  Raises:
    ValueError: a bad convention or scale; `errors.ImageError` (a ValueError) naming both
      sizes when `sr` is not the size of `hr` up to that crop.
  """
  if convention not in CONVENTIONS:
    raise ValueError(f"unknown convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")
  if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
    raise ValueError(f"scale must be a positive integer, got {scale!r}")
  sr = _check_image(sr, "sr")
  hr = _check_image(hr, "hr")
  if sr.shape[0] > hr.shape[0] or sr.shape[1] > hr.shape[1]:
    raise errors.ImageError(f"sr shape {sr.shape} is larger than hr shape {hr.shape}")
  (h, w), (hr_h, hr_w) = sr.shape[:2], hr.shape[:2]
  if hr_h - h >= scale or hr_w - w >= scale:
    expected = f"the HR size ({hr_w}x{hr_h})"
    if hr_w % scale or hr_h % scale:
      expected += f", or down to {hr_w - hr_w % scale}x{hr_h - hr_h % scale} (HR cropped to a "
      expected += "multiple of the scale)"
    raise errors.ImageError(
      f"SR size {w}x{h} does not match HR size {hr_w}x{hr_h} at x{scale}: expected {expected}"
    )
  hr = crop_to(hr, sr.shape[0], sr.shape[1])
  if convention == "benchmark":
    border = int(scale)
    return {"psnr": psnr(sr, hr, border=border), "ssim": ssim(sr, hr, border=border)}
  border = int(scale) + 6
  return {
    "psnr": psnr(sr, hr, border=border, y_channel=False),
    "ssim": ssim(sr, hr, border=border),
  }


# ---------------------------------------------------------------- a model on a set of images


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
  """The bicubic row of the tables: MATLAB-compatible bicubic, uint8 as MATLAB's imresize."""
  return imresize(lr, float(scale))


def border_for(scale: int, convention: str) -> int:
  """Pixels removed from each side before scoring (see `evaluate_pair`)."""
  return scale + 6 if convention == "div2k" else scale


def check_scorable(images: SRImages, scale: int, convention: str, what: str = "image") -> None:
  """Refuses images too small to score at `scale`: once cropped to a multiple of the
  scale and shaved of the border, SSIM's window must fit. Checked before work starts
  (training validates at its first eval step: too late to find out)."""
  need = _SSIM_SIZE + 2 * border_for(scale, convention)
  for i, name in enumerate(images.names):
    lr = images.lr[scale][i]
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    if min(h, w) < need:
      raise errors.ImageError(
        f"{what} {name}: {w}x{h} pixels at x{scale} (its LR is {lr.shape[1]}x{lr.shape[0]}) "
        f"is too small to score: SSIM's {_SSIM_SIZE}x{_SSIM_SIZE} window needs at least "
        f"{need}x{need} after removing the {border_for(scale, convention)}-pixel border "
        f"({convention} convention); remove it or use a larger image"
      )


def score(
  upscaler,
  images: SRImages,
  scale: int,
  convention: str = "benchmark",
  *,
  self_ensemble: bool = False,
  tile_size: int | None = None,
  each: Callable[..., None] | None = None,
) -> tuple[dict, list[dict]]:
  """Scores the model (`upscaler.upscale`) and bicubic on every image at `scale`.

  Returns (means, per_image): means has psnr, ssim, bicubic_psnr, bicubic_ssim; each row
  of per_image has those and the image's name. `each(row, lr, bicubic, sr, hr)` is
  called after each image (uint8 arrays), to report progress, save or draw it.
  """
  check_scorable(images, scale, convention)
  per_image = []
  for i, name in enumerate(images.names):
    lr, hr = images.pair(i, scale)
    sr = upscaler.upscale(lr, scale, self_ensemble=self_ensemble, tile_size=tile_size)
    bicubic = bicubic_upscale(lr, scale)
    model_scores = evaluate_pair(sr, hr, scale=scale, convention=convention)
    bicubic_scores = evaluate_pair(bicubic, hr, scale=scale, convention=convention)
    row = {"name": name, **model_scores, **{f"bicubic_{k}": v for k, v in bicubic_scores.items()}}
    per_image.append(row)
    if each is not None:
      each(row, lr, bicubic, sr, hr)
  means = {k: float(np.mean([row[k] for row in per_image])) for k in SCORE_KEYS}
  return means, per_image


def comparison_strip(
  lr, bicubic, sr, hr, scale: int, crop: int = 192, labels: bool = True
) -> np.ndarray:
  """[LR (nearest) | bicubic | model | ground truth] crops of the image centre, uint8."""
  h, w = hr.shape[:2]
  c = min(crop, h, w) // scale * scale
  y, x = (h - c) // 2 // scale * scale, (w - c) // 2 // scale * scale
  lr_crop = lr[y // scale : (y + c) // scale, x // scale : (x + c) // scale]
  panels = [np.repeat(np.repeat(lr_crop, scale, 0), scale, 1)]
  panels += [im[y : y + c, x : x + c] for im in (bicubic, sr, hr)]
  gap = np.full((c, 4, 3), 255, np.uint8)
  row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
  if not labels:
    return row
  header = Image.new("RGB", (row.shape[1], 14), "white")
  draw = ImageDraw.Draw(header)
  for k, text in enumerate(("LR", "bicubic", "model", "ground truth")):
    draw.text((k * (c + 4) + 2, 1), text, fill="black")
  return np.concatenate([np.asarray(header), row], axis=0)


def json_text(value) -> str:
  """`value` as JSON that any parser reads. JSON has no Infinity or NaN: a non-finite
  float (the PSNR of an SR image equal to its HR image is infinite) is written as the
  string "inf", "-inf" or "nan", which `float()` reads back."""

  def finite(v):
    if isinstance(v, float) and not math.isfinite(v):
      return str(v)
    if isinstance(v, dict):
      return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
      return [finite(x) for x in v]
    return v

  return json.dumps(finite(value), indent=2, allow_nan=False) + "\n"
