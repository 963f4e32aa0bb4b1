"""Folder sources: the DIV2K and benchmark layouts, HR-only folders, image modes, errors."""

import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from edsr_jax import config_lib, data, train
from edsr_jax.errors import ConfigError, ImageError
from edsr_jax.imresize import imresize, modcrop

RNG = np.random.default_rng(0)


def _rgb(h, w):
  return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: pathlib.Path, image: np.ndarray, mode: str | None = None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image, mode).save(path)


def _read(path) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def _write_layout(hr_dir: pathlib.Path, lr_root: pathlib.Path, sizes, scales):
  """HR images and random LR files (not a resize of the HR: proves the files are used)."""
  out = {}
  for k, (h, w) in enumerate(sizes):
    name = f"{k + 1:04d}"
    hr = _rgb(h, w)
    _save(hr_dir / f"{name}.png", hr)
    lrs = {s: _rgb(h // s, w // s) for s in scales}
    for s, lr in lrs.items():
      _save(lr_root / f"X{s}" / f"{name}x{s}.png", lr)
    out[name] = (hr, lrs)
  return out


def _check(images: data.SRImages, expected: dict, scales):
  assert images.names == sorted(expected)
  for k, name in enumerate(images.names):
    hr, lrs = expected[name]
    np.testing.assert_array_equal(images.hr[k], hr)
    for s in scales:
      np.testing.assert_array_equal(images.lr[s][k], lrs[s])


def test_div2k_unpacked_layout_pairs_lr_files_with_hr(tmp_path):
  sizes = [(60, 48), (49, 73), (66, 66)]
  train_set = _write_layout(
    tmp_path / "DIV2K_train_HR", tmp_path / "DIV2K_train_LR_bicubic", sizes, (2, 3)
  )
  valid_set = _write_layout(
    tmp_path / "DIV2K_valid_HR", tmp_path / "DIV2K_valid_LR_bicubic", sizes[:2], (2, 3)
  )
  _check(data.load_folder(tmp_path, (2, 3), "train"), train_set, (2, 3))
  _check(data.load_folder(tmp_path, (3,), "valid"), valid_set, (3,))
  assert len(data.load_folder(tmp_path, (2,), "valid", max_images=1)) == 1


def test_benchmark_layout_pairs_lr_files_with_hr(tmp_path):
  expected = _write_layout(tmp_path / "HR", tmp_path / "LR_bicubic", [(40, 52), (57, 31)], (2, 4))
  _check(data.load_folder(tmp_path, (2, 4)), expected, (2, 4))


def test_real_set5_lr_equals_the_files(shared_data):
  root = shared_data / "benchmark" / "Set5"
  images = data.load_folder(root, (2, 3, 4), "valid")
  assert images.names == ["baby", "bird", "butterfly", "head", "woman"]
  for k, name in enumerate(images.names):
    np.testing.assert_array_equal(images.hr[k], _read(root / "HR" / f"{name}.png"))
    for s in (2, 3, 4):
      lr = _read(root / "LR_bicubic" / f"X{s}" / f"{name}x{s}.png")
      np.testing.assert_array_equal(images.lr[s][k], lr)
      assert images.pair(k, s)[1].shape == (lr.shape[0] * s, lr.shape[1] * s, 3)


def test_hr_only_folder_gets_matlab_bicubic_lr(tmp_path):
  hr = _rgb(47, 38)  # not a multiple of 2 or 3: modcrop matters
  _save(tmp_path / "a.png", hr)
  images = data.load_folder(tmp_path, (2, 3))
  for s in (2, 3):
    np.testing.assert_array_equal(images.lr[s][0], imresize(modcrop(hr, s), 1 / s))
    assert images.lr[s][0].shape == (47 // s, 38 // s, 3)


def test_hr_only_set5_reproduces_the_official_lr_files(shared_data, tmp_path):
  root = shared_data / "benchmark" / "Set5"
  for f in (root / "HR").glob("*.png"):
    shutil.copy(f, tmp_path)
  images = data.load_folder(tmp_path, (2, 3, 4))
  assert len(images) == 5
  for k, name in enumerate(images.names):
    for s in (2, 3, 4):
      np.testing.assert_array_equal(
        images.lr[s][k], _read(root / "LR_bicubic" / f"X{s}" / f"{name}x{s}.png")
      )


def test_image_modes_follow_image_io_rules(tmp_path):
  rgb = _rgb(24, 20)
  grey = rgb[..., 0]
  _save(tmp_path / "grey.png", grey, "L")
  _save(tmp_path / "rgba.png", np.dstack([rgb, RNG.integers(0, 256, (24, 20), np.uint8)]))
  Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
  images = data.load_folder(tmp_path, (2,))
  got = dict(zip(images.names, images.hr, strict=True))
  np.testing.assert_array_equal(got["grey"], np.repeat(grey[..., None], 3, axis=-1))
  np.testing.assert_array_equal(got["rgba"], rgb)
  with Image.open(tmp_path / "palette.png") as im:
    assert im.mode == "P"
    palette_rgb = np.asarray(im.convert("RGB"))
  np.testing.assert_array_equal(got["palette"], palette_rgb)
  assert np.abs(palette_rgb.astype(int) - rgb).mean() < 40  # a real colour image
  for image in images.hr:
    assert image.dtype == np.uint8 and image.shape == (24, 20, 3)


def test_16_bit_image_is_refused_naming_the_file(tmp_path):
  _save(tmp_path / "a.png", _rgb(24, 20))
  Image.fromarray(RNG.integers(0, 65536, (24, 20), dtype=np.uint16)).save(tmp_path / "deep.png")
  with pytest.raises(ImageError, match=r"deep\.png: image mode 'I;16' is not supported"):
    data.load_folder(tmp_path, (2,))


def test_lr_hr_size_mismatch_is_refused_naming_the_file(tmp_path):
  _write_layout(tmp_path / "HR", tmp_path / "LR_bicubic", [(40, 52), (30, 30)], (2,))
  _save(tmp_path / "LR_bicubic" / "X2" / "0002x2.png", _rgb(15, 14))
  with pytest.raises(
    ImageError,
    match=r"X2/0002x2\.png: LR size 14x15 does not match its HR "
    r"image 0002\.png \(30x30\) at x2: expected 15x15",
  ):
    data.load_folder(tmp_path, (2,))


def test_missing_lr_file_is_refused_naming_it(tmp_path):
  _write_layout(
    tmp_path / "DIV2K_train_HR", tmp_path / "DIV2K_train_LR_bicubic", [(40, 52), (30, 30)], (2,)
  )
  (tmp_path / "DIV2K_train_LR_bicubic" / "X2" / "0001x2.png").unlink()
  with pytest.raises(ImageError, match=r"X2/0001x2\.png: missing LR image for 0001\.png at x2"):
    data.load_folder(tmp_path, (2,))


def _folder_config(train_dir):
  c = config_lib.base_config()
  c.data.train_dir = str(train_dir)
  return c


def test_empty_folder_is_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("no images here")
  with pytest.raises(ImageError, match=rf"{tmp_path}: no image files"):
    data.load_train_images(_folder_config(tmp_path), (2,))
  with pytest.raises(ConfigError, match="does not exist"):
    data.load_train_images(_folder_config(tmp_path / "nowhere"), (2,))


def test_non_image_with_image_extension_is_refused_naming_it(tmp_path):
  _save(tmp_path / "a.png", _rgb(24, 20))
  (tmp_path / "b.jpg").write_bytes(b"this is not a JPEG")
  with pytest.raises(ImageError, match=r"b\.jpg: not a readable image"):
    data.load_train_images(_folder_config(tmp_path), (2,))


def test_truncated_png_fails_before_training(tmp_path):
  _save(tmp_path / "a.png", _rgb(64, 64))
  whole = (tmp_path / "a.png").read_bytes()
  (tmp_path / "a.png").write_bytes(whole[: len(whole) // 2])
  config = _folder_config(tmp_path)
  config.model.num_blocks, config.model.num_features = 1, 8
  with pytest.raises(ImageError, match=r"a\.png: not a readable image"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_memory_mapped_cache_gives_the_same_images_and_batches(tmp_path):
  hr_dir, cache = tmp_path / "hr", tmp_path / "cache"
  for i, (h, w) in enumerate([(60, 48), (50, 70)]):
    _save(hr_dir / f"{i}.png", _rgb(h, w))
  in_memory = data.load_folder(hr_dir, [2, 3])
  first = data.load_folder(hr_dir, [2, 3], cache_dir=str(cache))  # decodes and writes
  again = data.load_folder(hr_dir, [2, 3], cache_dir=str(cache))  # reads the cache
  assert len(list(cache.glob("*.npy"))) == 2 * 3 and not list(cache.glob("*tmp*"))
  for images in (first, again):
    assert all(isinstance(x, np.memmap) for x in images.hr + images.lr[2] + images.lr[3])
    for a, b in zip(
      images.hr + images.lr[2] + images.lr[3],
      in_memory.hr + in_memory.lr[2] + in_memory.lr[3],
      strict=True,
    ):
      np.testing.assert_array_equal(a, b)
  batch = lambda images: data.PatchSampler(  # noqa: E731
    images, scales=[2], patch_size=16, global_batch=4, seed=3
  ).batch(5, 2)
  for key in ("lr", "hr"):
    np.testing.assert_array_equal(batch(again)[key], batch(in_memory)[key])
  # An edited image is decoded again, not served stale from the cache.
  _save(hr_dir / "0.png", _rgb(60, 48)[::-1].copy())
  edited = data.load_folder(hr_dir, [2], cache_dir=str(cache))
  np.testing.assert_array_equal(edited.hr[0], _read(hr_dir / "0.png"))
