"""Scoring a model on whole images, next to bicubic upscaling, and side-by-side pictures."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from edsr_jax import metrics
from edsr_jax.data import SRImages
from edsr_jax.imresize import imresize


def quantize(x: jax.Array) -> jax.Array:
  """0..255 float -> uint8 by clip and round half up (done on device: 4x less to copy)."""
  return jnp.floor(jnp.clip(x, 0.0, 255.0) + 0.5).astype(jnp.uint8)


def make_predict_fn(model):
  """jit(params, lr uint8 (B, h, w, 3), scale) -> SR uint8; compiles once per shape and scale."""

  @functools.partial(jax.jit, static_argnames="scale")
  def predict(params, lr, scale):
    return quantize(model.apply({"params": params}, lr.astype(jnp.float32), scale))

  return predict


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
  return imresize(lr, float(scale))


def evaluate(predict, params, images: SRImages, scale: int, convention: str = "benchmark"):
  """Scores the model and bicubic on every image.

  Returns (means, per_image, outputs): means has psnr, ssim, bicubic_psnr, bicubic_ssim;
  outputs[i] = (lr, bicubic, sr, hr) uint8 arrays for pictures.
  """
  per_image, outputs = [], []
  for i, name in enumerate(images.names):
    lr, hr = images.pair(i, scale)
    sr = np.asarray(predict(params, lr[None], scale))[0]
    bicubic = bicubic_upscale(lr, scale)
    model_scores = metrics.evaluate_pair(sr, hr, scale=scale, convention=convention)
    bicubic_scores = metrics.evaluate_pair(bicubic, hr, scale=scale, convention=convention)
    per_image.append(
      {"name": name, **model_scores, **{f"bicubic_{k}": v for k, v in bicubic_scores.items()}}
    )
    outputs.append((lr, bicubic, sr, hr))
  keys = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
  means = {k: float(np.mean([row[k] for row in per_image])) for k in keys}
  return means, per_image, outputs


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
