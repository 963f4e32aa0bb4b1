"""Restoring a trained network from its checkpoint and upscaling whole images with it.

  from edsr_jax import inference
  upscaler = inference.load("runs/x2")       # a workdir (latest checkpoint) or a step dir
  sr = upscaler.upscale(lr_uint8)            # (h, w, 3) uint8 -> (h*s, w*s, 3) uint8

The network is rebuilt from the config saved with the checkpoint; only the parameters
are read (not the optimizer state), onto this process's first device, whatever devices
the checkpoint was written from.

Large images are cut into overlapping tiles that all share one shape, so they go through
one compiled program in batches. Each tile carries a halo of `receptive_field_radius`
LR pixels, the furthest any output pixel can see, so the centre kept from each tile is
the untiled network's output: tiles are cropped from the image (never padded inside it),
so the convolutions' zero padding only ever happens where the real image ends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from edsr_jax import checkpoint, image_io, metrics, models

# Auto tiling (tile_size=None) bounds the LR pixels (counting self-ensemble copies) that
# go through the network in one call, which bounds memory: images up to this size run
# whole; larger ones are cut into the largest tiles that, with their halos, fit (a
# window of 512x512 for one copy; larger tiles waste less on halos: on a 2-core CPU,
# EDSR baseline x4, tiles of 440 ran 1.3x faster than tiles of 256).
AUTO_MAX_PIXELS = 512 * 512

# ------------------------------------------------------------------ receptive field


def receptive_field_radius(model_config, scale: int) -> int:
  """How many LR pixels beyond a region its super-resolved output depends on.

  Walks the network backwards from the output. A k x k conv adds k // 2 pixels at the
  resolution it runs at. Going back through a pixel shuffle by r, a margin of m fine
  pixels around a region aligned to r needs ceil(m / r) coarse pixels. EDSR gives
  2 * num_blocks + 4 at every scale (head 1, blocks 2 each, body conv 1, first upsampler
  conv 1, and the tail plus x4's second upsampler conv, 1/s resp. 1/2 + 1/4 LR pixel,
  rounded up to 1); MDSR adds its two 5x5 pre-process blocks (8): 2 * num_blocks + 12.
  """
  margin = 1  # tail, 3x3 at HR resolution
  for r in reversed(models.UPSAMPLE_STAGES[scale]):
    margin = math.ceil(margin / r)  # back through this stage's pixel shuffle
    margin += 1  # this stage's 3x3 conv, at the coarser resolution
  margin += 1 + 2 * model_config.num_blocks  # body conv and the residual blocks
  if model_config.name == "mdsr":
    margin += 2 * (2 + 2)  # two residual blocks of two 5x5 convs
  return margin + 1  # head


# ------------------------------------------------------------------ tiling


def _axis_windows(length: int, tile: int, halo: int) -> tuple[int, list[tuple[int, int, int]]]:
  """Splits one axis: (window length, [(keep_start, keep_end, window_start), ...]).

  Kept ranges partition [0, length) into near-equal parts of at most `tile`; every
  window has the same length, lies inside the image and covers its kept range plus
  `halo` on each side, except where the image ends first.
  """
  if tile <= 0 or tile + 2 * halo >= length:
    return length, [(0, length, 0)]
  count = math.ceil(length / tile)
  step = math.ceil(length / count)
  window = min(step + 2 * halo, length)
  spans = []
  for start in range(0, length, step):
    end = min(start + step, length)
    spans.append((start, end, min(max(start - halo, 0), length - window)))
  return window, spans


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """How one image is cut: every window has shape `window`; `calls` group the tiles.

  A tile is ((y0, y1, window_y), (x0, x1, window_x)): LR rows y0:y1 and columns x0:x1
  are kept from the window whose top-left corner is (window_y, window_x).
  """

  scale: int
  self_ensemble: bool
  tile_size: int  # 0: untiled
  halo: int
  window: tuple[int, int]
  per_call: int
  calls: list

  @property
  def num_tiles(self) -> int:
    return sum(len(group) for group in self.calls)


# ------------------------------------------------------------------ self-ensemble


def _forward(params, lr, *, model, scale: int, self_ensemble: bool, quantize: bool):
  """uint8 (N, h, w, 3) -> (N, h*s, w*s, 3), uint8 or the network's float32."""
  x = lr.astype(jnp.float32)

  def apply(batch):
    return model.apply({"params": params}, batch, scale).astype(jnp.float32)

  if not self_ensemble:
    y = apply(x)
  else:
    # Two calls: the four flips keep (h, w), the four transposed ones are (w, h). Each
    # image of the batch goes through all of them in one pass.
    n = x.shape[0]
    outputs = []
    for codes in ((0, 1, 2, 3), (4, 5, 6, 7)):
      out = apply(jnp.concatenate([image_io.flip_transpose(x, c) for c in codes]))
      outputs += [
        image_io.undo_flip_transpose(out[k * n : (k + 1) * n], c) for k, c in enumerate(codes)
      ]
    y = outputs[0]
    for out in outputs[1:]:  # summed in transform order, in float32
      y = y + out
    y = y / image_io.NUM_TRANSFORMS
  return metrics.round_to_uint8(y) if quantize else y


# ------------------------------------------------------------------ the upscaler


def _check_image(image) -> np.ndarray:
  array = np.asarray(image)
  if array.dtype != np.uint8:
    hint = ""
    if np.issubdtype(array.dtype, np.floating):
      hint = (
        ": for a float image on 0..1 pass "
        "np.floor(np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), on 0..255 "
        "np.floor(np.clip(image, 0, 255) + 0.5).astype(np.uint8)"
      )
    raise TypeError(f"upscale takes a uint8 RGB image (0..255), got dtype {array.dtype}{hint}")
  if array.ndim != 3 or array.shape[-1] != 3:
    hint = ""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 4)):
      hint = (
        " (for greyscale repeat the channel 3 times, for RGBA drop alpha; "
        "edsr_jax.image_io.read_rgb does both)"
      )
    raise ValueError(f"upscale takes an (H, W, 3) RGB image, got shape {array.shape}{hint}")
  if min(array.shape[:2]) < 1:
    raise ValueError(f"upscale got an empty image of shape {array.shape}")
  return array


class Upscaler:
  """A restored network: `upscale(image)` runs it on whole images of any size."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    params,
    *,
    dtype=None,
    source: str | None = None,
    ema: bool = False,
  ):
    self.config = config
    self.params = params
    self.source = source
    self.ema = ema  # `params` is the EMA of the trained parameters (config.ema_decay)
    dtype = models.compute_dtype(config.model.dtype) if dtype is None else jnp.dtype(dtype)
    self.model = models.create_model(config.model, dtype)
    self.scales = models.model_scales(config.model)
    self._forward = jax.jit(
      functools.partial(_forward, model=self.model),
      static_argnames=("scale", "self_ensemble", "quantize"),
    )

  def __repr__(self):
    m = self.config.model
    return (
      f"Upscaler({m.name}, scales={self.scales}, blocks={m.num_blocks}, "
      f"features={m.num_features}, from={self.source!r}, params={'ema' if self.ema else 'raw'})"
    )

  def resolve_scale(self, scale: int | None) -> int:
    """`scale`, checked; None means the model's only scale (MDSR needs it stated)."""
    available = ", ".join(f"x{s}" for s in self.scales)
    if scale is None:
      if len(self.scales) == 1:
        return self.scales[0]
      raise ValueError(f"this {self.config.model.name} model serves {available}: pass scale=")
    if (
      isinstance(scale, bool)
      or not isinstance(scale, int | np.integer)
      or (int(scale) not in self.scales)
    ):
      raise ValueError(f"scale {scale!r} is not served by this model; available: {available}")
    return int(scale)

  def halo(self, scale: int) -> int:
    return receptive_field_radius(self.config.model, scale)

  def tile_size_for(
    self, shape, scale: int, self_ensemble: bool = False, tile_size: int | None = None
  ) -> int:
    """The tile side (LR pixels) that `upscale` uses; 0 means untiled."""
    if tile_size is not None:
      if (
        isinstance(tile_size, bool)
        or not isinstance(tile_size, int | np.integer)
        or (tile_size < 0)
      ):
        raise ValueError(
          f"tile_size must be None (automatic), 0 (untiled) or a positive "
          f"number of LR pixels, got {tile_size!r}"
        )
      return int(tile_size)
    copies = image_io.NUM_TRANSFORMS if self_ensemble else 1
    if shape[0] * shape[1] * copies <= AUTO_MAX_PIXELS:
      return 0
    halo = self.halo(scale)
    side = math.isqrt(AUTO_MAX_PIXELS // copies)
    # A wide halo (deep networks) would leave little of a window to keep: tiles are at
    # least two halos wide, even if a call then exceeds the pixel budget.
    return max(side - 2 * halo, 2 * halo)

  def upscale(
    self, image, scale: int | None = None, self_ensemble: bool = False, tile_size: int | None = None
  ) -> np.ndarray:
    """Super-resolves a uint8 (H, W, 3) RGB image to uint8 (H*s, W*s, 3).

    Args:
      image: uint8 RGB on 0..255 (float input is refused, not rescaled).
      scale: one of `self.scales`; None for a single-scale model.
      self_ensemble: average the outputs of the 8 flips/transposes of the input (the
        paper's "+" models), in float32, then quantise once.
      tile_size: LR pixels per tile side (at most; tiles are balanced). None picks
        automatically (see AUTO_MAX_PIXELS); 0 runs the whole image at once. Tiled
        output equals untiled output.
    """
    return self._run(image, scale, self_ensemble, tile_size, quantize=True)

  def upscale_float(
    self, image, scale: int | None = None, self_ensemble: bool = False, tile_size: int | None = None
  ) -> np.ndarray:
    """As `upscale`, but the network's float32 output (0..255, not clipped or rounded)."""
    return self._run(image, scale, self_ensemble, tile_size, quantize=False)

  def plan(
    self, shape, scale: int | None = None, self_ensemble: bool = False, tile_size: int | None = None
  ) -> TilePlan:
    """How `upscale` cuts an image of `shape` (H, W, ...) into tiles and calls."""
    scale = self.resolve_scale(scale)
    tile = self.tile_size_for(shape, scale, self_ensemble, tile_size)
    halo = self.halo(scale)
    win_h, rows = _axis_windows(shape[0], tile, halo)
    win_w, cols = _axis_windows(shape[1], tile, halo)
    tiles = [(r, c) for r in rows for c in cols]
    copies = image_io.NUM_TRANSFORMS if self_ensemble else 1
    per_call = min(max(1, AUTO_MAX_PIXELS // (win_h * win_w * copies)), len(tiles))
    calls = [tiles[i : i + per_call] for i in range(0, len(tiles), per_call)]
    return TilePlan(scale, bool(self_ensemble), tile, halo, (win_h, win_w), per_call, calls)

  def _run(self, image, scale, self_ensemble, tile_size, quantize):
    image = _check_image(image)
    plan = self.plan(image.shape, scale, self_ensemble, tile_size)
    s = plan.scale
    out = np.empty(
      (image.shape[0] * s, image.shape[1] * s, 3), np.uint8 if quantize else np.float32
    )
    for group in plan.calls:
      self._run_call(image, plan, group, out, quantize)
    return out

  def _run_call(self, image, plan: TilePlan, group, out, quantize=True):
    """Runs one call of `plan` (a list of tiles) and writes the tiles' centres to `out`."""
    (win_h, win_w), s = plan.window, plan.scale
    batch = np.stack([image[wy : wy + win_h, wx : wx + win_w] for (_, _, wy), (_, _, wx) in group])
    if len(group) < plan.per_call:  # keep one batch shape: one compiled program
      batch = np.concatenate([batch, np.repeat(batch[-1:], plan.per_call - len(group), 0)])
    result = np.asarray(
      self._forward(
        self.params, batch, scale=s, self_ensemble=plan.self_ensemble, quantize=quantize
      )
    )
    for k, ((y0, y1, wy), (x0, x1, wx)) in enumerate(group):
      out[y0 * s : y1 * s, x0 * s : x1 * s] = result[
        k, (y0 - wy) * s : (y1 - wy) * s, (x0 - wx) * s : (x1 - wx) * s
      ]


# ------------------------------------------------------------------ loading


def load(path: str | os.PathLike, dtype=None, use_ema: bool | None = None) -> Upscaler:
  """Restores the network of a checkpoint for inference (`checkpoint.load_params`).

  Args:
    path: a training workdir (its latest finished checkpoint is used), its
      `checkpoints/` folder, or one step directory `<workdir>/checkpoints/<step>`.
    dtype: compute dtype; default the one the model was trained with.
    use_ema: None: the EMA of the parameters if the run kept one (config.ema_decay > 0),
      else the parameters; False: the parameters themselves; True: the EMA, an error if
      there is none. `Upscaler.ema` and its repr say which it holds.

  Raises:
    CheckpointError: (a ValueError) naming the path: missing, no finished checkpoint,
      or unreadable / corrupt files.
  """
  restored = checkpoint.load_params(path, use_ema)
  return Upscaler(
    restored.config, restored.params, dtype=dtype, source=str(restored.step_dir), ema=restored.ema
  )
