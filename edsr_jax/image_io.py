"""Images as files and arrays: one set of rules for reading them, and what tools share.

Images are read as a photo viewer shows them. `read_rgb` (training, `score`, `evaluate`)
and `read_picture` (`upscale`) follow the same rules:
- the EXIF orientation is applied: a portrait photo whose camera stored it sideways with
  an orientation tag (values 2-8) comes out upright;
- one image per file: an animated GIF, PNG (APNG) or WebP, or a multi-page TIFF is
  refused, naming its number of frames (a single-frame GIF is read; an MPO, a camera
  JPEG that carries a second picture, is its first);
- any size: Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) is lifted
  while our own reads run, and only then; a file too large for memory is an ImageError;
- 8-bit samples only: anything with more than 8 bits per sample (16-bit or 32-bit
  integer, float, and 16-bit RGB PNGs, which Pillow would narrow to 8 bits without a
  word) is refused, since rescaling to 8 bits would silently change the data;
- no colour management: pixel values are taken as stored (an ICC profile is not applied).
The network works on 8-bit RGB, which `read_rgb` returns:
- RGB: as is;  greyscale (L, LA) and 1-bit (1: black 0, white 255): grey copied to R, G, B;
- palette (P, PA), CMYK and RGBX: converted to RGB by Pillow;
- alpha (RGBA, LA, PA, or a palette, greyscale or RGB image with a transparent colour):
  dropped, not composited: training and scoring see the colours as stored.
`read_picture` returns that RGB array and what `upscale` carries to its output besides:
whether the file is greyscale (L, LA, 1), its alpha channel (None when there is none or
it is opaque everywhere), and its ICC profile where it fits the output (an RGB profile
for colour, a GRAY one for greyscale; otherwise, e.g. the CMYK profile of a CMYK photo
converted to RGB, a warning says it is not carried).
Every failure is an `ImageError` that names the file.

Which files are images, by name (`image_name_problem`; the same rule for a file named on
a command line and one found in a folder): the extensions in `IMAGE_EXTENSIONS` (each is
written and read back by the tests). Phone and camera formats Pillow does not read here
(HEIC/HEIF, DNG and other raw files) are a problem that says so, never silently skipped.
In a folder, hidden files (names starting with '.', e.g. the temporary files of
`write_image`) are skipped, as are files with other extensions.

Also here: the name of a super-resolved file (`SR_PATTERN`), `write_image` (atomic, by a
hidden temporary file; `remove_stale_temp_files` removes those a killed writer left), the
8 flips/transposes (training augmentation and the self-ensemble), and `SRImages`, a set of
decoded HR images with their LR versions.
"""

import contextlib
import dataclasses
import errno
import os
import pathlib
import re
import stat
import threading
import time

import numpy as np
from PIL import Image, ImageOps

from edsr_jax import errors, workdir_lock

# What the pinned Pillow reads (tests/test_image_io.py writes and reads each one).
IMAGE_EXTENSIONS = (
  ".png",
  ".bmp",
  ".jpg",
  ".jpeg",
  ".jfif",
  ".tif",
  ".tiff",
  ".webp",
  ".avif",
  ".ppm",
  ".pgm",
  ".pbm",
  ".pnm",
  ".gif",
  ".tga",
  ".jp2",
  ".j2k",
)
# Phone and camera formats that are not read here: a problem with a way out, not a skip.
_CONVERT = "convert it to JPEG or PNG"
_DEVELOP = "a camera raw file; develop it to TIFF, PNG or JPEG with a raw converter"
NOT_READ = {
  ".heic": f"HEIC is not read: {_CONVERT}",
  ".heif": f"HEIF is not read: {_CONVERT}",
  ".dng": f"DNG is not read ({_DEVELOP})",
  **{
    ext: f"{ext[1:].upper()} is not read ({_DEVELOP})"
    for ext in (".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")
  },
}
# The file naming of the EDSR authors' code for SR results: `upscale` and `evaluate`
# write it, `score` reads it by default.
SR_PATTERN = "{name}_x{scale}_SR.png"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_GREY_MODES = ("1", "L", "LA")  # grey copied to R, G, B
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK")  # converted by Pillow
_ALPHA_MODES = ("RGBA", "LA", "PA")
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


def image_name_problem(path: str | os.PathLike) -> str | None:
  """Why a file is not taken as an image by its name (None: its extension is read)."""
  path = pathlib.Path(path)
  ext = path.suffix.lower()
  if ext in IMAGE_EXTENSIONS:
    return None
  if ext in NOT_READ:
    return f"{path}: {NOT_READ[ext]}"
  return (
    f"{path}: not an image file name ({f'extension {ext}' if ext else 'no extension'}); "
    f"the extensions read are {', '.join(IMAGE_EXTENSIONS)}"
  )


def sr_name_regex() -> re.Pattern:
  """File names that SR_PATTERN gives, for any name and scale (`photo_x2_SR.png`)."""
  before, rest = SR_PATTERN.split("{name}")
  middle, after = rest.split("{scale}")
  return re.compile(f"{re.escape(before)}.+{re.escape(middle)}[0-9]+{re.escape(after)}")


# ------------------------------------------------------------------ reading

# Pillow refuses images over 2 * MAX_IMAGE_PIXELS (179 megapixels) as possible
# "decompression bombs" from untrusted sources. Our inputs are the user's own photos
# and data sets, of any size: the limit is lifted while one of our reads runs (counted,
# so that reads in several threads restore the value the first one found) and restored
# after, so that code that imports this module keeps Pillow's protection elsewhere.
_size_limit_lock = threading.Lock()
_size_limit_users = 0
_size_limit_saved: int | None = None


@contextlib.contextmanager
def _any_size():
  global _size_limit_users, _size_limit_saved
  with _size_limit_lock:
    if _size_limit_users == 0:
      _size_limit_saved = Image.MAX_IMAGE_PIXELS
      Image.MAX_IMAGE_PIXELS = None
    _size_limit_users += 1
  try:
    yield
  finally:
    with _size_limit_lock:
      _size_limit_users -= 1
      if _size_limit_users == 0:
        Image.MAX_IMAGE_PIXELS = _size_limit_saved


@dataclasses.dataclass
class Picture:
  """An image file as `upscale` reads it: the network's input and what it carries over.

  `rgb` is uint8 (H, W, 3), as `read_rgb` returns; `grey`: the file is greyscale (L, LA,
  1); `alpha`: uint8 (H, W), None when the file has none or it is 255 everywhere;
  `icc_profile`: the file's ICC profile where it fits the output (RGB or GRAY), else
  None; `warnings`: what could not be carried, one line each, naming the file.
  """

  rgb: np.ndarray
  grey: bool = False
  alpha: np.ndarray | None = None
  icc_profile: bytes | None = None
  warnings: list[str] = dataclasses.field(default_factory=list)

  @property
  def mode(self) -> str:
    """The Pillow mode of the output that keeps what the file had: L, LA, RGB or RGBA."""
    return ("L" if self.grey else "RGB") + ("A" if self.alpha is not None else "")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as a uint8 (H, W, 3) array by the module's stated rules."""
  return _read(path, extras=False).rgb


def read_picture(path: str | os.PathLike) -> Picture:
  """Reads an image file by the module's rules, with its greyscale, alpha and profile."""
  return _read(path, extras=True)


def _read(path: str | os.PathLike, extras: bool) -> Picture:
  path = pathlib.Path(path)
  size = None
  try:
    with _any_size(), open(path, "rb") as f:
      depth = png_bit_depth(f.read(25))
      f.seek(0)
      with Image.open(f) as image:
        mode, size = image.mode, image.size
        # Pillow opens a 16-bit RGB PNG (or TIFF) as mode RGB and narrows it to 8 bits
        # while decoding: the file's bit depth and the decoder's raw mode still tell.
        deep = (depth or 8) > 8 or any(";16" in str(tile.args) for tile in image.tile or [])
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and image.format != "MPO":
          if image.format == "TIFF":
            what = f"a multi-page TIFF with {frames} pages; extract the page you want"
          else:
            what = f"an animated image with {frames} frames; extract the frame you want"
          raise errors.ImageError(f"{path}: {what}")
        image.load()  # decode now: a truncated file fails here, not later
        if mode in _GREY_MODES + _COLOUR_MODES and not deep:
          _upright(image)
          return _convert(path, image, extras)
  except errors.ImageError:
    raise
  except FileNotFoundError:
    raise errors.ImageError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise errors.ImageError(f"{path}: a folder, not an image file") from None
  except Image.UnidentifiedImageError:
    raise errors.ImageError(
      f"{path}: not a readable image (its contents are in no image format Pillow reads)"
    ) from None
  except MemoryError:
    pixels = f"{size[0]}x{size[1]} pixels" if size else "its size"
    raise errors.ImageError(f"{path}: not enough memory to decode it ({pixels})") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise errors.ImageError(
      f"{path}: not a readable image (cannot read image data: {errors.one_line(e)})"
    ) from None
  if mode in _GREY_MODES + _COLOUR_MODES:
    raise errors.ImageError(
      f"{path}: a {depth or 16}-bit image (which Pillow would narrow to 8-bit {mode} without "
      f"a word) is not supported; {_REFUSED}"
    )
  raise errors.ImageError(f"{path}: image mode {mode!r} is not supported; {_REFUSED}")


def _upright(image: Image.Image) -> None:
  """Applies the EXIF orientation in place, as a photo viewer does; a viewer shows an
  image with unreadable EXIF data as stored, and so does this."""
  try:
    ImageOps.exif_transpose(image, in_place=True)
  except (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError):
    pass


def _convert(path: pathlib.Path, image: Image.Image, extras: bool) -> Picture:
  mode = image.mode
  grey = mode in _GREY_MODES
  if grey:
    rgb = np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=-1)
  else:
    rgb = np.asarray(image.convert("RGB"))
  if not extras:
    return Picture(rgb)
  alpha = None
  if mode in _ALPHA_MODES or "transparency" in image.info:
    alpha = np.asarray(image.convert("LA" if grey else "RGBA"))[..., -1]
    if alpha.min() == 255:
      alpha = None  # opaque everywhere: nothing to carry
  picture = Picture(rgb, grey, alpha)
  profile = image.info.get("icc_profile")
  if profile:
    # The colour space of an ICC profile: bytes 16-19 of its header.
    space = profile[16:20].decode("ascii", "replace").strip() if len(profile) >= 128 else ""
    if space == ("GRAY" if grey else "RGB"):
      picture.icc_profile = profile
    elif mode == "CMYK":
      picture.warnings.append(
        f"{path}: a CMYK image converted to RGB without colour management: its "
        f"{space or 'unreadable'} ICC profile is not carried to the output, whose colours "
        "may differ from the original's"
      )
    else:
      picture.warnings.append(
        f"{path}: its {space or 'unreadable'} ICC profile does not fit the "
        f"{'greyscale' if grey else 'RGB'} output and is not carried to it"
      )
  return picture


# ------------------------------------------------------------------ writing

# write_image's temporary file: `.<stem>.tmp<pid><suffix>`, beside the target.
_TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.tmp(?P<pid>[0-9]+)(?P<suffix>\.[^.]+)")


def temp_path(path: pathlib.Path) -> pathlib.Path:
  """Where `write_image` writes `path` before renaming it (a hidden file beside it)."""
  return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def write_image(
  path: str | os.PathLike, image: np.ndarray, icc_profile: bytes | None = None
) -> None:
  """Writes a uint8 (H, W) greyscale, (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4)
  RGBA array; the format follows the file extension; `icc_profile` is stored with it.

  Creates the folder if needed. OSError (a read-only or full disk) is left to the caller,
  which knows which flag the path came from; nothing half-written is left behind, also
  when SIGTERM (`errors.Terminated`) or Ctrl-C arrives while writing.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{path}: write_image takes uint8, got {image.dtype}")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Written beside it and renamed: a full disk or Ctrl-C never leaves a half-written file.
  tmp = temp_path(path)
  try:
    Image.fromarray(image).save(tmp, **({"icc_profile": icc_profile} if icc_profile else {}))
    tmp.replace(path)
  except BaseException:
    with contextlib.suppress(OSError):
      tmp.unlink()
    raise


def remove_stale_temp_files(
  folder: str | os.PathLike, min_age_s: float = 60.0
) -> list[pathlib.Path]:
  """Removes the temporary files of `write_image` that a killed writer left in `folder`
  (SIGKILL, a power cut): those whose process is not running here and that have not
  been written to for `min_age_s` seconds (a writer on another machine or container
  sharing the folder has a pid not seen here). Returns what it removed.
  """
  removed = []
  now = time.time()
  with contextlib.suppress(OSError):
    for p in pathlib.Path(folder).iterdir():
      match = _TEMP_NAME.fullmatch(p.name)
      if match is None or workdir_lock.pid_alive(int(match["pid"])):
        continue
      try:
        info = p.lstat()
        if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= min_age_s:
          p.unlink()
          removed.append(p)
      except OSError:
        continue
  return sorted(removed)


# ------------------------------------------------------------------ folders


def scan_images(folder: str | os.PathLike) -> tuple[list[pathlib.Path], list[str]]:
  """(the image files directly in `folder`, sorted by name; problems with entries that
  are named as images but cannot be read: broken symbolic links, link loops, and
  formats not read here such as HEIC).

  Hidden files (names starting with '.') and files of other extensions are skipped.
  Raises ImageError if `folder` is not a folder.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise errors.ImageError(f"{folder}: not a folder")
  files, problems = [], []
  for p in sorted(folder.iterdir()):
    if p.name.startswith("."):
      continue
    if p.suffix.lower() in NOT_READ:
      problems.append(image_name_problem(p))
      continue
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

  An error if there are none, or if an entry named as an image is a broken symbolic link,
  a link loop or in a format not read (HEIC, raw): the error names it, as it would
  otherwise be silently left out.
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
