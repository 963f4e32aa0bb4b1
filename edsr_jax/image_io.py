"""Reading and writing images, with one stated rule for every image mode.

Training and inference work on 8-bit RGB. `read_rgb` converts:
- RGB: as is;  greyscale (L) and greyscale+alpha (LA): the grey value copied to R, G, B;
- palette (P) and CMYK: converted to RGB by Pillow;  RGBA: alpha dropped;
- 1-bit (1): black 0, white 255, copied to RGB;
- anything else (16-bit or 32-bit integer, float): refused, since rescaling to 8 bits
  would silently change the data.
Every failure is an `ImageError` that names the file.
"""

import os
import pathlib

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm")


class ImageError(ValueError):
  """An image file that cannot be used; the message names the file and the problem."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as a uint8 (H, W, 3) array by the module's stated rules."""
  path = pathlib.Path(path)
  try:
    with Image.open(path) as image:
      image.load()  # decode now: a truncated file fails here, not later
      mode = image.mode
      if mode in ("RGB", "RGBA", "P", "CMYK", "1"):
        return np.asarray(image.convert("RGB"))
      if mode in ("L", "LA"):
        return np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=-1)
  except FileNotFoundError:
    raise ImageError(f"{path}: no such file") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(f"{path}: not a readable image ({e})") from None
  raise ImageError(
    f"{path}: image mode {mode!r} is not supported; use 8-bit RGB, greyscale or palette "
    "images (16-bit and float images are refused rather than silently rescaled)"
  )


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) or (H, W) array; the format follows the file extension."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{path}: write_image takes uint8, got {image.dtype}")
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
  """The image files directly in `folder`, sorted by name; an error if there are none."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise ImageError(f"{folder}: not a folder")
  files = sorted(
    p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
  )
  if not files:
    raise ImageError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
  return files
