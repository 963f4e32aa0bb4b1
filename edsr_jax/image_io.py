"""Images as files and arrays: one set of rules for reading them, and what tools share.

Training, inference and scoring work on 8-bit RGB. `read_rgb` converts:
- RGB: as is;  greyscale (L) and greyscale+alpha (LA): the grey value copied to R, G, B;
- palette (P), CMYK and RGBX: converted to RGB by Pillow;  RGBA: alpha dropped;
- 1-bit (1): black 0, white 255, copied to RGB;
- anything with more than 8 bits per sample (16-bit or 32-bit integer, float, and 16-bit
  RGB PNGs, which Pillow would narrow to 8 bits without a word): refused, since
  rescaling to 8 bits would silently change the data.
Every failure is an `ImageError` that names the file. Also here: the file extensions
read (`IMAGE_EXTENSIONS`), the name of a super-resolved file (`SR_PATTERN`), the 8
flips/transposes (training augmentation and the self-ensemble), and `SRImages`, a set
of decoded HR images with their LR versions.
"""

import contextlib
import dataclasses
import errno
import os
import pathlib
import stat

import numpy as np
from PIL import Image

from edsr_jax import errors

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm")
# The file naming of the EDSR authors' code for SR results: `upscale` and `evaluate`
# write it, `score` reads it by default.
SR_PATTERN = "{name}_x{scale}_SR.png"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_RGB_MODES = ("RGB", "RGBA", "RGBX", "P", "CMYK", "1")  # converted by Pillow
_GREY_MODES = ("L", "LA")  # grey copied to R, G, B
_REFUSED = (
  "use 8-bit RGB, greyscale or palette images (16-bit and float images are refused "
  "rather than silently rescaled)"
)


def png_bit_depth(header: bytes) -> int | None:
  """Bits per sample of a PNG from its first 25 bytes (the IHDR chunk); None if not a PNG."""
  if len(header) < 25 or not header.startswith(_PNG_SIGNATURE) or header[12:16] != b"IHDR":
    return None
  return header[24]


def check_8_bit_png(header: bytes, name: str) -> None:
  """Refuses PNG bytes with more than 8 bits per sample, whatever a decoder would do."""
  depth = png_bit_depth(header)
  if depth is not None and depth > 8:
    raise errors.ImageError(f"{name}: a {depth}-bit PNG is not supported; {_REFUSED}")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as a uint8 (H, W, 3) array by the module's stated rules."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      depth = png_bit_depth(f.read(25))
      f.seek(0)
      image = Image.open(f)
      mode = image.mode
      # Pillow opens a 16-bit RGB PNG (or TIFF) as mode RGB and narrows it to 8 bits
      # while decoding: the file's bit depth and the decoder's raw mode still tell.
      deep = (depth or 8) > 8 or any(";16" in str(tile.args) for tile in image.tile or [])
      image.load()  # decode now: a truncated file fails here, not later
      if mode in _RGB_MODES and not deep:
        return np.asarray(image.convert("RGB"))
      if mode in _GREY_MODES and not deep:
        return np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=-1)
  except FileNotFoundError:
    raise errors.ImageError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise errors.ImageError(f"{path}: a folder, not an image file") from None
  except Image.UnidentifiedImageError:
    raise errors.ImageError(
      f"{path}: not a readable image (its contents are in no image format Pillow reads)"
    ) from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise errors.ImageError(
      f"{path}: not a readable image (cannot read image data: {errors.one_line(e)})"
    ) from None
  if mode in _RGB_MODES + _GREY_MODES:
    raise errors.ImageError(
      f"{path}: a {depth or 16}-bit image (which Pillow would narrow to 8-bit {mode} without "
      f"a word) is not supported; {_REFUSED}"
    )
  raise errors.ImageError(f"{path}: image mode {mode!r} is not supported; {_REFUSED}")


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) or (H, W) array; the format follows the file extension.

  Creates the folder if needed. OSError (a read-only or full disk) is left to the caller,
  which knows which flag the path came from; nothing half-written is left behind.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{path}: write_image takes uint8, got {image.dtype}")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Written beside it and renamed: a full disk or Ctrl-C never leaves a half-written file.
  tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
  try:
    Image.fromarray(image).save(tmp)
    tmp.replace(path)
  except BaseException:
    with contextlib.suppress(OSError):
      tmp.unlink()
    raise


def scan_images(folder: str | os.PathLike) -> tuple[list[pathlib.Path], list[str]]:
  """(the image files directly in `folder`, sorted by name; problems with entries that
  are named as images but cannot be read: broken symbolic links, link loops).

  Raises ImageError if `folder` is not a folder.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise errors.ImageError(f"{folder}: not a folder")
  files, problems = [], []
  for p in sorted(folder.iterdir()):
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
      continue
    try:
      if stat.S_ISREG(p.stat().st_mode):  # follows symbolic links
        files.append(p)
    except FileNotFoundError:
      problems.append(f"{p}: a broken symbolic link (to {os.readlink(p)}, which does not exist)")
    except OSError as e:
      if e.errno == errno.ELOOP:
        problems.append(f"{p}: a symbolic link loop ({e.strerror})")
      else:
        problems.append(f"{p}: cannot be read: {e.strerror or errors.one_line(e)}")
  return files, problems


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
  """The image files directly in `folder`, sorted by name.

  An error if there are none, or if an entry named as an image is a broken symbolic link
  or a link loop (the error names it: it would otherwise be silently left out).
  """
  files, problems = scan_images(folder)
  if problems:
    raise errors.ImageError(
      problems[0] + (f" (and {len(problems) - 1} more)" if problems[1:] else "")
    )
  if not files:
    raise errors.ImageError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
  return files


# ------------------------------------------------------------------ flips and transposes

NUM_TRANSFORMS = 8


def flip_transpose(x, code: int):
  """Transform `code` (0-7) of images whose last three axes are (H, W, C).

  Bit 0 flips horizontally, bit 1 vertically, bit 2 transposes, applied in that order:
  the 8 symmetries of a square. numpy or JAX arrays, a single image or a batch.
  """
  if code & 1:
    x = x[..., ::-1, :]
  if code & 2:
    x = x[..., ::-1, :, :]
  if code & 4:
    x = x.swapaxes(-3, -2)
  return x


def undo_flip_transpose(x, code: int):
  """The inverse of `flip_transpose(x, code)`."""
  if code & 4:
    x = x.swapaxes(-3, -2)
  if code & 2:
    x = x[..., ::-1, :, :]
  if code & 1:
    x = x[..., ::-1, :]
  return x


# ------------------------------------------------------------------ decoded image sets


@dataclasses.dataclass
class SRImages:
  """Decoded images: `hr[i]` is uint8 (H, W, 3); `lr[s][i]` is (H // s, W // s, 3)."""

  names: list[str]
  hr: list[np.ndarray]
  lr: dict[int, list[np.ndarray]]

  def __len__(self):
    return len(self.names)

  def pair(self, i: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR cropped top-left to LR size x scale) of image i."""
    lr = self.lr[scale][i]
    return lr, self.hr[i][: lr.shape[0] * scale, : lr.shape[1] * scale]
