"""image_io: the one set of rules every image read follows (training, upscale, evaluate, score)."""

import os
import pathlib
import struct
import subprocess
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

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
  """IMAGE_EXTENSIONS is what the pinned Pillow reads: each is written and read back."""
  image = np.random.default_rng(4).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  lossy = (".jpg", ".jpeg", ".jfif", ".webp", ".avif")
  for ext in image_io.IMAGE_EXTENSIONS:
    Image.fromarray(image).save(tmp_path / f"im{ext}")
  (tmp_path / "notes.txt").write_text("not an image")
  _save(tmp_path / ".hidden.png", image)  # hidden: skipped
  files = image_io.list_images(tmp_path)
  assert [f.suffix for f in files] == sorted(image_io.IMAGE_EXTENSIONS, key=lambda e: f"im{e}")
  for f in files:
    if f.suffix in lossy:
      assert image_io.read_rgb(f).shape == image.shape
    else:
      np.testing.assert_array_equal(image_io.read_rgb(f), image, err_msg=f.name)
  assert set(image_io.IMAGE_EXTENSIONS) <= set(Image.registered_extensions())
  # Not read here (no plugin in the pinned Pillow): a problem, not a skip.
  assert not set(image_io.NOT_READ) & set(Image.registered_extensions())


def test_formats_not_read_and_other_names_are_problems(tmp_path):
  _save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
  (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
  (tmp_path / "raw.dng").write_bytes(b"II*\x00")
  files, problems = image_io.scan_images(tmp_path)
  assert [f.name for f in files] == ["a.png"]
  assert problems == [
    f"{tmp_path / 'IMG_0001.HEIC'}: HEIC is not read: convert it to JPEG or PNG",
    f"{tmp_path / 'raw.dng'}: DNG is not read (a camera raw file; develop it to TIFF, PNG "
    "or JPEG with a raw converter)",
  ]
  with pytest.raises(errors.ImageError, match=r"IMG_0001\.HEIC: HEIC is not read.*and 1 more"):
    image_io.list_images(tmp_path)  # training and score: an error, not a silent skip
  assert image_io.image_name_problem(tmp_path / "x.JPG") is None
  problem = image_io.image_name_problem(tmp_path / "photo.xyz")
  assert problem.startswith(f"{tmp_path / 'photo.xyz'}: not an image file name (extension .xyz)")
  assert ", ".join(image_io.IMAGE_EXTENSIONS) in problem


# The EXIF orientations, as the EXIF specification defines them: what a viewer shows
# for the stored pixels.
_SHOWN = {
  1: lambda a: a,
  2: lambda a: a[:, ::-1],  # mirrored left-right
  3: lambda a: a[::-1, ::-1],  # rotated 180
  4: lambda a: a[::-1],  # mirrored top-bottom
  5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
  6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise (a phone held upright)
  7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
  8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise
}


def _with_orientation(path, stored, orientation, **save):
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(stored).save(path, exif=exif.tobytes(), **save)
  return path


def test_exif_orientation_is_applied_for_all_8_values(tmp_path):
  stored = np.random.default_rng(5).integers(0, 256, (6, 10, 3), dtype=np.uint8)
  for orientation, shown in _SHOWN.items():
    path = _with_orientation(tmp_path / f"o{orientation}.png", stored, orientation)
    np.testing.assert_array_equal(
      image_io.read_rgb(path), shown(stored), err_msg=f"orientation {orientation}"
    )
  # A portrait phone JPEG (orientation 6 or 8): upright, compared with the same JPEG
  # without the tag (the same decoded pixels) turned by hand.
  for orientation in (6, 8):
    tagged = _with_orientation(tmp_path / f"phone{orientation}.jpg", stored, orientation)
    plain = _save(tmp_path / f"plain{orientation}.jpg", stored)
    upright = image_io.read_rgb(tagged)
    assert upright.shape == (10, 6, 3)
    np.testing.assert_array_equal(upright, _SHOWN[orientation](image_io.read_rgb(plain)))
  # Training reads it the same way (read_rgb is the one reader).
  folder = tmp_path / "train"
  folder.mkdir()
  _with_orientation(folder / "a.png", stored, 6)
  np.testing.assert_array_equal(data.load_folder(folder, (2,)).hr[0], _SHOWN[6](stored))


def test_read_picture_keeps_grey_alpha_and_profile(tmp_path):
  rng = np.random.default_rng(6)
  srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
  alpha = rng.integers(0, 256, (5, 6), dtype=np.uint8)

  Image.fromarray(rgb).save(tmp_path / "icc.png", icc_profile=srgb)
  picture = image_io.read_picture(tmp_path / "icc.png")
  assert (picture.mode, picture.icc_profile, picture.warnings) == ("RGB", srgb, [])
  np.testing.assert_array_equal(picture.rgb, rgb)

  picture = image_io.read_picture(_save(tmp_path / "la.png", np.stack([grey, alpha], -1)))
  assert picture.mode == "LA"
  np.testing.assert_array_equal(picture.rgb, np.repeat(grey[..., None], 3, -1))
  np.testing.assert_array_equal(picture.alpha, alpha)
  picture = image_io.read_picture(_save(tmp_path / "l.png", grey))
  assert picture.mode == "L" and picture.alpha is None
  picture = image_io.read_picture(_save(tmp_path / "one.png", grey > 127, mode=None))
  assert picture.mode == "L"
  np.testing.assert_array_equal(picture.rgb[..., 0], np.where(grey > 127, 255, 0))

  opaque = np.concatenate([rgb, np.full((5, 6, 1), 255, np.uint8)], -1)
  assert image_io.read_picture(_save(tmp_path / "opaque.png", opaque)).mode == "RGB"
  picture = image_io.read_picture(_save(tmp_path / "rgba.png", np.dstack([rgb, alpha])))
  assert picture.mode == "RGBA"
  np.testing.assert_array_equal(picture.alpha, alpha)
  np.testing.assert_array_equal(picture.rgb, rgb)  # read_rgb: alpha dropped, not composited

  palette = Image.fromarray(rgb).quantize(8)
  palette.save(tmp_path / "p.gif", transparency=int(np.asarray(palette)[0, 0]))
  picture = image_io.read_picture(tmp_path / "p.gif")
  assert picture.mode == "RGBA" and picture.alpha[0, 0] == 0 and picture.alpha.max() == 255

  # A CMYK JPEG whose profile (here only a header saying CMYK) cannot go with RGB output.
  cmyk_profile = srgb[:16] + b"CMYK" + srgb[20:]
  Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", icc_profile=cmyk_profile)
  picture = image_io.read_picture(tmp_path / "cmyk.jpg")
  assert picture.mode == "RGB" and picture.icc_profile is None
  assert len(picture.warnings) == 1
  assert picture.warnings[0].startswith(f"{tmp_path / 'cmyk.jpg'}: a CMYK image converted")
  assert "CMYK ICC profile is not carried" in picture.warnings[0]


@pytest.mark.parametrize("kind", ["gif", "apng", "webp", "tiff"])
def test_multi_frame_images_are_refused(tmp_path, kind):
  rng = np.random.default_rng(7)
  frames = [Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)) for _ in range(5)]
  path = tmp_path / f"anim.{'png' if kind == 'apng' else kind}"
  frames[0].save(path, save_all=True, append_images=frames[1:])
  what = "a multi-page TIFF with 5 pages" if kind == "tiff" else "an animated image with 5 frames"
  with pytest.raises(errors.ImageError) as info:
    image_io.read_rgb(path)
  assert str(info.value).startswith(f"{path}: {what}; extract the")
  frames[0].save(tmp_path / "single.gif")  # one frame: read
  assert image_io.read_rgb(tmp_path / "single.gif").shape == (6, 5, 3)


def test_any_size_is_read_and_pillow_limit_is_kept_for_others(tmp_path, monkeypatch):
  """Pillow refuses images over 2 * MAX_IMAGE_PIXELS; our reads lift it, only for them."""
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
  path = _save(tmp_path / "big.png", np.full((10, 12, 3), 7, np.uint8))  # 120 > 2 * 50
  with pytest.raises(Image.DecompressionBombError):
    Image.open(path)
  assert image_io.read_rgb(path).shape == (10, 12, 3)
  assert Image.MAX_IMAGE_PIXELS == 50


def test_write_image_modes_profile_and_interruption(tmp_path, monkeypatch):
  srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  rng = np.random.default_rng(8)
  for mode, shape in (("L", (4, 5)), ("LA", (4, 5, 2)), ("RGB", (4, 5, 3)), ("RGBA", (4, 5, 4))):
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    image_io.write_image(tmp_path / f"{mode}.png", array, icc_profile=srgb)
    with Image.open(tmp_path / f"{mode}.png") as image:
      assert image.mode == mode and image.info["icc_profile"] == srgb
      np.testing.assert_array_equal(np.asarray(image), array)

  def stopped_while_saving(image, fp, *args, **kwargs):
    pathlib.Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half")  # SIGTERM mid-write:
    raise errors.Terminated("SIGTERM")

  monkeypatch.setattr(Image.Image, "save", stopped_while_saving)
  with pytest.raises(errors.Terminated):
    image_io.write_image(tmp_path / "out" / "x.png", np.zeros((4, 4, 3), np.uint8))
  assert list((tmp_path / "out").iterdir()) == []  # no hidden truncated temporary file


def test_stale_temp_files_are_removed(tmp_path):
  dead = subprocess.Popen(["true"])
  dead.wait()
  hour_ago = time.time() - 3600
  names = {
    "stale": f".a_x2_SR.tmp{dead.pid}.png",  # its writer is gone and it is old: removed
    "live": f".b_x2_SR.tmp{os.getpid()}.png",  # a writer still running: kept
    "fresh": f".c_x2_SR.tmp{dead.pid}.png",  # just written (maybe on another machine)
    "other": ".notes.txt",
  }
  for key, name in names.items():
    (tmp_path / name).write_bytes(b"x")
    if key != "fresh":
      os.utime(tmp_path / name, (hour_ago, hour_ago))
  assert image_io.remove_stale_temp_files(tmp_path) == [tmp_path / names["stale"]]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    names[k] for k in ("live", "fresh", "other")
  )


def test_flip_transpose_is_undone_and_covers_the_square_symmetries():
  x = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)
  seen = set()
  for code in range(image_io.NUM_TRANSFORMS):
    y = image_io.flip_transpose(x, code)
    np.testing.assert_array_equal(image_io.undo_flip_transpose(y, code), x)
    np.testing.assert_array_equal(image_io.flip_transpose(x[0], code), y[0])  # one or a batch
    seen.add(y[0, ..., 0].tobytes() + bytes(y.shape[1:3]))
  assert len(seen) == 8
