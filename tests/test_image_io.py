"""image_io: the one set of rules every image read follows (training, upscale, evaluate, score)."""

import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edsr_jax import data, errors, image_io, score


def _save(path, array, mode=None):
  Image.fromarray(array, mode=mode).save(path)
  return path


def _png_16_bit_rgb(path: pathlib.Path, h=6, w=5) -> pathlib.Path:
  """A 48-bit RGB PNG (16 bits per sample), written by hand: Pillow cannot write one."""
  rows = np.random.default_rng(0).integers(0, 65536, (h, w, 3), dtype=np.uint16)
  raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rows)

  def chunk(kind, payload):
    return (
      struct.pack(">I", len(payload))
      + kind
      + payload
      + struct.pack(">I", zlib.crc32(kind + payload))
    )

  ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type RGB
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", ihdr)
    + chunk(b"IDAT", zlib.compress(raw))
    + chunk(b"IEND", b"")
  )
  return path


def test_modes(tmp_path):
  rng = np.random.default_rng(3)
  rgba = rng.integers(0, 256, (9, 10, 4), dtype=np.uint8)
  loaded = image_io.read_rgb(_save(tmp_path / "rgba.png", rgba))
  np.testing.assert_array_equal(loaded, rgba[..., :3])  # Alpha dropped, not composited.
  grey = rng.integers(0, 256, (9, 10), dtype=np.uint8)
  loaded = image_io.read_rgb(_save(tmp_path / "grey.png", grey))
  assert loaded.shape == (9, 10, 3) and loaded.dtype == np.uint8
  np.testing.assert_array_equal(loaded, np.repeat(grey[..., None], 3, axis=-1))  # R = G = B
  palette = Image.fromarray(rng.integers(0, 256, (9, 10, 3), dtype=np.uint8)).quantize(16)
  palette.save(tmp_path / "p.png")
  np.testing.assert_array_equal(
    image_io.read_rgb(tmp_path / "p.png"), np.asarray(palette.convert("RGB"))
  )


def test_refuses_16_bit(tmp_path):
  path = tmp_path / "deep.png"
  Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(path)
  with pytest.raises(errors.ImageError, match="8-bit") as info:
    image_io.read_rgb(path)
  assert str(path) in str(info.value)


def test_refuses_a_16_bit_rgb_png_that_pillow_would_narrow(tmp_path):
  path = _png_16_bit_rgb(tmp_path / "deep_rgb.png")
  with Image.open(path) as image:
    assert image.mode == "RGB"  # what Pillow makes of it: 8 bits, without a word
  with pytest.raises(errors.ImageError, match=r"deep_rgb\.png: a 16-bit image .* not supported"):
    image_io.read_rgb(path)


def test_training_and_score_refuse_it_too(tmp_path):
  hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
  hr_dir.mkdir()
  sr_dir.mkdir()
  _save(hr_dir / "a.png", np.zeros((12, 10, 3), np.uint8))
  _png_16_bit_rgb(sr_dir / "a_x2_SR.png", 12, 10)
  with pytest.raises(errors.ImageError, match=r"a_x2_SR\.png: a 16-bit image"):
    score.score_dirs(
      hr_dir, sr_dir, scale=2, sr_pattern=image_io.SR_PATTERN, convention="benchmark"
    )
  _png_16_bit_rgb(hr_dir / "b.png", 12, 10)
  with pytest.raises(errors.ImageError, match=r"b\.png: a 16-bit image"):
    data.load_folder(hr_dir, (2,))


def test_every_extension_is_listed_and_read(tmp_path):
  image = np.random.default_rng(4).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  for ext in image_io.IMAGE_EXTENSIONS:
    Image.fromarray(image).save(
      tmp_path / f"im{ext}", **({"lossless": True} if ext == ".webp" else {})
    )
  (tmp_path / "notes.txt").write_text("not an image")
  files = image_io.list_images(tmp_path)
  assert [f.suffix for f in files] == sorted(image_io.IMAGE_EXTENSIONS, key=lambda e: f"im{e}")
  for f in files:
    if f.suffix in (".jpg", ".jpeg"):  # lossy
      assert image_io.read_rgb(f).shape == image.shape
    else:
      np.testing.assert_array_equal(image_io.read_rgb(f), image, err_msg=f.name)


def test_flip_transpose_is_undone_and_covers_the_square_symmetries():
  x = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)
  seen = set()
  for code in range(image_io.NUM_TRANSFORMS):
    y = image_io.flip_transpose(x, code)
    np.testing.assert_array_equal(image_io.undo_flip_transpose(y, code), x)
    np.testing.assert_array_equal(image_io.flip_transpose(x[0], code), y[0])  # one or a batch
    seen.add(y[0, ..., 0].tobytes() + bytes(y.shape[1:3]))
  assert len(seen) == 8
