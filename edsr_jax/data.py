"""Training and validation data: image sources, the patch sampler and prefetching.

A source yields `SRImages`: decoded HR images with their LR versions per scale, held in
memory (decoding PNGs every step would starve the accelerator). LR images come from the
source's LR files when it has them (DIV2K and benchmark layouts), else they are made
from the HR image with the MATLAB-compatible bicubic resize the paper used.

The sampler is deterministic: the batch of step `n` depends only on (seed, n) and the
data, never on what ran before, so a resumed run sees exactly the batches an
uninterrupted run would. It draws the whole global batch's plan and each process cuts
its own rows from it, so the batch is also the same whatever the number of processes.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import os
import pathlib
import queue
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import skimage.data
from absl import logging

from edsr_jax import errors, image_io, tfds_data
from edsr_jax.image_io import SRImages
from edsr_jax.imresize import imresize, modcrop


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
  """The paper's LR image: MATLAB imresize(modcrop(HR, s), 1/s, 'bicubic')."""
  return imresize(modcrop(hr, scale), 1 / scale)


def _map(fn, items):
  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
    return list(pool.map(fn, items))


def _with_bicubic_lr(names, hrs, scales) -> SRImages:
  lr = {s: _map(lambda hr, s=s: bicubic_lr(hr, s), hrs) for s in scales}
  return SRImages(list(names), list(hrs), lr)


# ---------------------------------------------------------------------------- demo set

# Real photos that scikit-image ships (no download); the greyscale ones become RGB.
DEMO_IMAGES = (
  "astronaut",
  "brick",
  "camera",
  "chelsea",
  "clock",
  "coffee",
  "coins",
  "grass",
  "gravel",
  "hubble_deep_field",
  "immunohistochemistry",
  "moon",
  "motorcycle_left",
  "motorcycle_right",
  "page",
  "retina",
  "rocket",
  "text",
)


def _skimage_image(name: str) -> np.ndarray:
  """A photo bundled with scikit-image, as RGB (greyscale photos copied to R, G, B)."""
  if name in ("motorcycle_left", "motorcycle_right"):
    left, right, _ = skimage.data.stereo_motorcycle()
    return left if name == "motorcycle_left" else right
  image = getattr(skimage.data, name, None) if name in DEMO_IMAGES else None
  if image is None:
    raise errors.ConfigError(
      f"demo image {name!r} is not one of the photos bundled with "
      f"scikit-image: allowed {DEMO_IMAGES}"
    )
  image = image()
  return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def load_demo(names: Sequence[str], scales: Sequence[int]) -> SRImages:
  """Photos bundled with scikit-image (no download), LR made by bicubic resize."""
  return _with_bicubic_lr(names, [_skimage_image(n) for n in names], scales)


# ---------------------------------------------------------------------------- folders


@dataclasses.dataclass
class FolderLayout:
  hr_dir: pathlib.Path
  lr_root: pathlib.Path | None  # holds X2/, X3/, ... with <name>x<s>.<ext> files

  def lr_file(self, hr_file: pathlib.Path, scale: int) -> pathlib.Path | None:
    if self.lr_root is None or not (self.lr_root / f"X{scale}").is_dir():
      return None
    return self.lr_root / f"X{scale}" / f"{hr_file.stem}x{scale}{hr_file.suffix}"


def resolve_layout(path: str | os.PathLike, split: str) -> FolderLayout:
  """Understands three layouts.

  - DIV2K as unpacked: `DIV2K_{train,valid}_HR/` and `DIV2K_{train,valid}_LR_bicubic/`;
    `split` ('train' or 'valid') picks which.
  - The benchmark layout: `<Set>/HR/` and `<Set>/LR_bicubic/`.
  - A plain folder of HR images (LR made by bicubic resize).
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise errors.ConfigError(f"data folder {str(path)!r} does not exist or is not a folder")
  if (path / f"DIV2K_{split}_HR").is_dir():
    return FolderLayout(path / f"DIV2K_{split}_HR", path / f"DIV2K_{split}_LR_bicubic")
  if (path / "HR").is_dir():
    return FolderLayout(path / "HR", path / "LR_bicubic")
  return FolderLayout(path, None)


def _read_pair(layout: FolderLayout, hr_file: pathlib.Path, scales):
  hr = image_io.read_rgb(hr_file)
  lrs = {}
  for s in scales:
    if min(hr.shape[:2]) < s:
      raise errors.ImageError(
        f"{hr_file}: {hr.shape[1]}x{hr.shape[0]} pixels is too small to train x{s} "
        f"(at least {s}x{s} pixels; remove it from the folder)"
      )
    lr_file = layout.lr_file(hr_file, s)
    if lr_file is None:
      lrs[s] = bicubic_lr(hr, s)
      continue
    if not lr_file.is_file():
      raise errors.ImageError(f"{lr_file}: missing LR image for {hr_file.name} at x{s}")
    lr = image_io.read_rgb(lr_file)
    want = (hr.shape[0] // s, hr.shape[1] // s)
    if lr.shape[:2] != want:
      raise errors.ImageError(
        f"{lr_file}: LR size {lr.shape[1]}x{lr.shape[0]} does not match its HR image "
        f"{hr_file.name} ({hr.shape[1]}x{hr.shape[0]}) at x{s}: expected "
        f"{want[1]}x{want[0]}"
      )
    lrs[s] = lr
  return hr, lrs


def _read_pair_cached(layout: FolderLayout, hr_file: pathlib.Path, scales, cache_dir):
  """_read_pair through a folder of decoded .npy files, returned memory-mapped.

  Memory-mapped arrays live in the OS page cache: a host holds only the pages patches
  are cut from, not the whole decoded set. Entries are keyed by the files' path, size
  and modification time, so an edited image is decoded again.
  """
  key_parts = [hr_file] + [layout.lr_file(hr_file, s) for s in scales]
  key = hashlib.sha1(
    repr(
      [
        (str(p), p.stat().st_size, p.stat().st_mtime_ns)
        for p in key_parts
        if p is not None and p.exists()
      ]
      + list(scales)
    ).encode()
  ).hexdigest()[:16]
  names = {
    "hr": f"{hr_file.stem}-{key}-hr.npy",
    **{s: f"{hr_file.stem}-{key}-x{s}.npy" for s in scales},
  }
  paths = {k: pathlib.Path(cache_dir) / v for k, v in names.items()}
  if all(p.exists() for p in paths.values()):
    try:
      load = functools.partial(np.load, mmap_mode="r")
      hr, lrs = load(paths["hr"]), {s: load(paths[s]) for s in scales}
      for s, lr in lrs.items():
        if hr.dtype != np.uint8 or hr.ndim != 3 or lr.shape != (*_lr_shape(hr, s), 3):
          raise ValueError(f"arrays of shapes {hr.shape} and {lr.shape} ({hr.dtype})")
      return hr, lrs
    except (OSError, ValueError, EOFError) as e:
      # Damaged (a disk error, an edit, a copy cut short): decode the image again.
      logging.warning(
        "config.data.cache_dir: %s is damaged (%s); decoding %s again",
        paths["hr"].parent,
        errors.one_line(e),
        hr_file,
      )
  hr, lrs = _read_pair(layout, hr_file, scales)
  for k, array in [("hr", hr), *lrs.items()]:
    tmp = paths[k].with_suffix(f".tmp{os.getpid()}.npy")
    try:
      np.save(tmp, array)
      tmp.replace(paths[k])  # atomic: a killed run never leaves a half-written entry
    except OSError as e:
      with contextlib.suppress(OSError):
        tmp.unlink()
      raise _cache_error(cache_dir, e) from None
  load = functools.partial(np.load, mmap_mode="r")
  return load(paths["hr"]), {s: load(paths[s]) for s in scales}


def _lr_shape(hr: np.ndarray, scale: int) -> tuple[int, int]:
  return hr.shape[0] // scale, hr.shape[1] // scale


def _cache_error(cache_dir, error: OSError) -> errors.ConfigError:
  reason = error.strerror or errors.one_line(error)
  if isinstance(error, FileExistsError | NotADirectoryError):
    reason = "it (or a folder above it) exists and is not a folder"
  return errors.ConfigError(
    f"config.data.cache_dir={str(cache_dir)!r}: cannot write the decoded-image cache there: "
    f"{reason} ({error.filename})"
  )


def load_folder(
  path: str | os.PathLike,
  scales: Sequence[int],
  split: str = "train",
  max_images: int | None = None,
  cache_dir: str = "",
) -> SRImages:
  """Images of a folder (see `resolve_layout`), decoded into memory or, with
  `cache_dir`, into .npy files there that are memory-mapped."""
  layout = resolve_layout(path, split)
  files = image_io.list_images(layout.hr_dir)[:max_images]
  if cache_dir:
    try:
      pathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise _cache_error(cache_dir, e) from None
    pairs = _map(lambda f: _read_pair_cached(layout, f, scales, cache_dir), files)
  else:
    pairs = _map(lambda f: _read_pair(layout, f, scales), files)
  return SRImages(
    [f.stem for f in files],
    [hr for hr, _ in pairs],
    {s: [lrs[s] for _, lrs in pairs] for s in scales},
  )


def load_folders(
  paths: Sequence[str | os.PathLike],
  scales: Sequence[int],
  split: str = "train",
  cache_dir: str = "",
) -> SRImages:
  """The images of several folders together (`config.data.train_dir=a,b`), in that order.

  Each folder may have any layout `resolve_layout` knows. A name found in more than one
  folder is prefixed with its folder's name (`T91/t1`; with the folder's full path if two
  folders share a name), so that names stay unique. One folder is `load_folder`'s.
  """
  if len(paths) == 1:
    return load_folder(paths[0], scales, split, cache_dir=cache_dir)
  absolute = [os.path.abspath(p) for p in paths]
  real = [os.path.realpath(p) for p in paths]
  for i, path in enumerate(real):
    if path in real[:i]:
      raise errors.ConfigError(
        f"config.data.train_dir names the folder {str(paths[i])!r} twice "
        f"(as {str(paths[real.index(path)])!r} before): give each folder once"
      )
  sets = [load_folder(p, scales, split, cache_dir=cache_dir) for p in paths]
  labels = [os.path.basename(p) for p in absolute]
  if len(set(labels)) < len(labels):
    labels = absolute
  folders_of: dict[str, int] = {}  # name -> how many of the folders have it
  for s in sets:
    for name in set(s.names):
      folders_of[name] = folders_of.get(name, 0) + 1
  return SRImages(
    [
      f"{label}/{name}" if folders_of[name] > 1 else name
      for label, s in zip(labels, sets, strict=True)
      for name in s.names
    ],
    [hr for s in sets for hr in s.hr],
    {scale: [lr for s in sets for lr in s.lr[scale]] for scale in scales},
  )


def load_train_images(config, scales) -> SRImages:
  if config.data.source == "demo":
    return load_demo(config.data.demo_train_images, scales)
  if config.data.source == "tfds":
    return tfds_data.load_for_config(config, scales, "train")
  folders = [part.strip() for part in config.data.train_dir.split(",")]  # several: a,b,c
  return load_folders(folders, scales, "train", cache_dir=config.data.cache_dir)


def load_val_images(config, scales) -> SRImages | None:
  n = config.data.max_val_images
  if config.data.source == "demo":
    return load_demo(config.data.demo_val_images[:n], scales)
  if config.data.source == "tfds":
    return tfds_data.load_for_config(config, scales, "valid")
  if not config.data.val_dir:
    return None
  return load_folder(config.data.val_dir, scales, "valid", max_images=n)


# ---------------------------------------------------------------------------- sampling


def scale_for_step(seed: int, step: int, scales: Sequence[int]) -> int:
  """The scale trained at `step` (MDSR draws one per step; EDSR has one)."""
  if len(scales) == 1:
    return scales[0]
  return scales[np.random.default_rng([seed, step, 1]).integers(len(scales))]


class PatchSampler:
  """Random aligned LR/HR patches; `batch(step, scale)` is a pure function of its inputs."""

  def __init__(
    self,
    images: SRImages,
    *,
    scales: Sequence[int],
    patch_size: int,
    global_batch: int,
    seed: int,
    augment: bool = True,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if global_batch % process_count:
      raise errors.ConfigError(
        f"config.batch_size={global_batch} does not divide over {process_count} processes"
      )
    if len(images) == 0:
      raise errors.ConfigError("the training set has no images")
    for s in scales:
      sizes = [lr.shape[:2] for lr in images.lr[s]]
      i = int(np.argmin([min(hw) for hw in sizes]))
      if min(sizes[i]) < patch_size:
        raise errors.ConfigError(
          f"config.patch_size={patch_size} is larger than the smallest training image "
          f"at x{s}: {images.names[i]} is {sizes[i][1]}x{sizes[i][0]} LR pixels; allowed "
          f"at most {min(sizes[i])}"
        )
    self.images = images
    self.patch_size = patch_size
    self.global_batch = global_batch
    self.seed = seed
    self.augment = augment
    self.local_batch = global_batch // process_count
    self.rows = range(process_index * self.local_batch, (process_index + 1) * self.local_batch)

  def batch(self, step: int, scale: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch of `step`: uint8 'lr' and 'hr' patches."""
    rng = np.random.default_rng([self.seed, step, 0])
    n = self.global_batch
    index = rng.integers(len(self.images), size=n)
    fy, fx = rng.random(n), rng.random(n)
    codes = rng.integers(8, size=n) if self.augment else np.zeros(n, np.int64)
    p = self.patch_size
    lrs, hrs = [], []
    for row in self.rows:
      i = index[row]
      lr, hr = self.images.lr[scale][i], self.images.hr[i]
      y = int(fy[row] * (lr.shape[0] - p + 1))
      x = int(fx[row] * (lr.shape[1] - p + 1))
      lrs.append(image_io.flip_transpose(lr[y : y + p, x : x + p], codes[row]))
      hrs.append(
        image_io.flip_transpose(
          hr[y * scale : (y + p) * scale, x * scale : (x + p) * scale], codes[row]
        )
      )
    return {"lr": np.stack(lrs), "hr": np.stack(hrs)}


def prefetch_batches(
  sampler: PatchSampler,
  steps: range,
  scales: Sequence[int],
  sharding: jax.sharding.Sharding,
  size: int = 2,
) -> Iterator[tuple[int, int, dict[str, jax.Array]]]:
  """Yields (step, scale, global device batch), prepared `size` steps ahead.

  A background thread builds host batches; the next device transfer is issued before
  the current batch is handed out, so the train step never waits on the host.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    # Gives up once the consumer has stopped, so the thread never blocks forever.
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for step in steps:
        scale = scale_for_step(sampler.seed, step, scales)
        if not put((step, scale, sampler.batch(step, scale))):
          return
    except BaseException as e:  # surfaced in the consumer
      put(e)
      return
    put(None)

  def to_device(item):
    step, scale, batch = item
    return (
      step,
      scale,
      {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()},
    )

  thread = threading.Thread(target=produce, daemon=True, name="prefetch")
  thread.start()
  try:
    pending = None
    while True:
      item = q.get()
      if isinstance(item, BaseException):
        raise item
      if item is None:
        break
      ready, pending = pending, to_device(item)
      if ready is not None:
        yield ready
    if pending is not None:
      yield pending
  finally:
    stop.set()
