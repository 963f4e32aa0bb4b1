"""edsr_jax.data: the folder sources (DIV2K and benchmark layouts, HR-only folders, image
modes, errors), and PatchSampler / prefetch_batches (determinism, LR/HR alignment,
augmentation, per-process rows, errors, resumption)."""

import pathlib
import shutil
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
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


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_shape"])
def test_a_damaged_cache_entry_is_decoded_again_with_a_warning(tmp_path, damage, caplog):
  hr_dir, cache = tmp_path / "hr", tmp_path / "cache"
  _save(hr_dir / "a.png", _rgb(60, 48))
  data.load_folder(hr_dir, [2], cache_dir=str(cache))
  (entry,) = cache.glob("*-x2.npy")
  if damage == "truncated":
    entry.write_bytes(entry.read_bytes()[:200])
  elif damage == "garbage":
    entry.write_bytes(b"not a numpy file at all")
  else:
    np.save(entry, np.zeros((5, 5, 3), np.uint8))
  with caplog.at_level("WARNING"):
    images = data.load_folder(hr_dir, [2], cache_dir=str(cache))
  assert "is damaged" in caplog.text and "a.png" in caplog.text
  np.testing.assert_array_equal(images.lr[2][0], data.bicubic_lr(_read(hr_dir / "a.png"), 2))
  caplog.clear()
  data.load_folder(hr_dir, [2], cache_dir=str(cache))  # repaired: no warning now
  assert "is damaged" not in caplog.text


SIZES = [(70, 90), (96, 64), (81, 77), (64, 100)]  # HR (h, w); some not multiples of s


def _images(scales, sizes=SIZES, seed=0) -> data.SRImages:
  """Random HR images and LR = HR[::s, ::s] (nearest subsample), LR (H // s, W // s)."""
  rng = np.random.default_rng(seed)
  hrs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
  lr = {
    s: [hr[: hr.shape[0] // s * s : s, : hr.shape[1] // s * s : s] for hr in hrs] for s in scales
  }
  return data.SRImages([f"im{i}" for i in range(len(hrs))], hrs, lr)


def _sampler(images, scales=(2,), patch=12, batch=16, seed=3, **kw) -> data.PatchSampler:
  return data.PatchSampler(
    images, scales=scales, patch_size=patch, global_batch=batch, seed=seed, **kw
  )


# The 8 symmetries of a square, written independently of data.augment's bit codes.
SYMMETRIES = [lambda x, k=k: np.rot90(x, k) for k in range(4)] + [
  lambda x, k=k: np.fliplr(np.rot90(x, k)) for k in range(4)
]


def _symmetry(plain: np.ndarray, augmented: np.ndarray) -> int:
  found = [
    k
    for k, op in enumerate(SYMMETRIES)
    if op(plain).shape == augmented.shape and np.array_equal(op(plain), augmented)
  ]
  assert len(found) == 1, "the augmented patch is not one flip/transpose of the plain one"
  return found[0]


def test_batch_is_a_pure_function_of_seed_and_step():
  images = _images((2,))
  a, b = _sampler(images), _sampler(images)
  a7, a3 = a.batch(7, 2), a.batch(3, 2)
  b3, b7 = b.batch(3, 2), b.batch(7, 2)  # other instance, other order
  for k in ("lr", "hr"):
    np.testing.assert_array_equal(a7[k], b7[k])
    np.testing.assert_array_equal(a3[k], b3[k])
  assert not np.array_equal(a3["lr"], a7["lr"])
  assert not np.array_equal(_sampler(images, seed=4).batch(3, 2)["lr"], a3["lr"])
  assert a3["lr"].shape == (16, 12, 12, 3) and a3["hr"].shape == (16, 24, 24, 3)
  assert a3["lr"].dtype == np.uint8 and a3["hr"].dtype == np.uint8


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_patches_are_aligned_and_augmented_by_flips_and_transposes(scale):
  images = _images((scale,))
  augmented = _sampler(images, scales=(scale,))
  plain = _sampler(images, scales=(scale,), augment=False)
  seen = set()
  for step in range(40):
    aug, ref = augmented.batch(step, scale), plain.batch(step, scale)
    for row in range(16):
      lr0, hr0 = ref["lr"][row], ref["hr"][row]
      np.testing.assert_array_equal(lr0, hr0[::scale, ::scale])  # aligned to the pixel
      k = _symmetry(lr0, aug["lr"][row])
      assert _symmetry(hr0, aug["hr"][row]) == k  # the same op on LR and HR
      seen.add(k)
  assert seen == set(range(8))


def test_every_position_including_the_edges_is_drawn():
  images = _images((2,), sizes=[(40, 44)])  # LR 20x22, patch 16: 5 x 7 positions
  sampler = _sampler(images, patch=16, augment=False)
  lr = images.lr[2][0]
  positions = set()
  for step in range(60):
    for patch in sampler.batch(step, 2)["lr"]:
      hits = [
        (y, x)
        for y in range(5)
        for x in range(7)
        if np.array_equal(lr[y : y + 16, x : x + 16], patch)
      ]
      assert len(hits) == 1
      positions.add(hits[0])
  assert positions == {(y, x) for y in range(5) for x in range(7)}


@pytest.mark.parametrize("count", [2, 4])
def test_processes_cut_disjoint_rows_of_the_same_global_batch(count):
  images = _images((2,))
  whole = _sampler(images)
  parts = [_sampler(images, process_index=i, process_count=count) for i in range(count)]
  for step in (0, 5, 11):
    full = whole.batch(step, 2)
    local = [p.batch(step, 2) for p in parts]
    for k in ("lr", "hr"):
      assert all(b[k].shape[0] == 16 // count for b in local)
      np.testing.assert_array_equal(np.concatenate([b[k] for b in local]), full[k])
    # A row repeated across processes only where the global batch repeats it.
    owner = np.repeat(np.arange(count), 16 // count)
    pairs = {
      (i, j)
      for i in range(16)
      for j in range(16)
      if owner[i] < owner[j] and np.array_equal(full["hr"][i], full["hr"][j])
    }
    across = set()
    for a in range(count):
      for b in range(a + 1, count):
        for i, x in enumerate(local[a]["hr"]):
          for j, y in enumerate(local[b]["hr"]):
            if np.array_equal(x, y):
              across.add((a * 16 // count + i, b * 16 // count + j))
    assert across == pairs


def test_batch_that_does_not_divide_over_processes_is_refused():
  with pytest.raises(ConfigError, match=r"config.batch_size=16 does not divide over 3"):
    _sampler(_images((2,)), process_count=3)


def test_patch_larger_than_the_smallest_image_is_refused():
  images = _images((2, 4), sizes=[(96, 96), (80, 60)])  # smallest x4 LR side: 15
  _sampler(images, scales=(2, 4), patch=15)
  with pytest.raises(
    ConfigError,
    match=r"config.patch_size=16 is larger than the smallest "
    r"training image at x4: im1 is 15x20 LR pixels; allowed at most 15",
  ):
    _sampler(images, scales=(2, 4), patch=16)


def _sharding():
  return NamedSharding(jax.make_mesh((1,), ("data",), devices=jax.devices()[:1]), P("data"))


def test_prefetch_yields_every_step_in_order_with_the_sampler_data():
  scales = (2, 3, 4)
  sampler = _sampler(_images(scales), scales=scales, patch=8, batch=4)
  got = list(data.prefetch_batches(sampler, range(0, 12), scales, _sharding(), size=2))
  assert [step for step, _, _ in got] == list(range(12))
  assert len({scale for _, scale, _ in got}) > 1  # MDSR: scales drawn per step
  for step, scale, batch in got:
    assert scale == data.scale_for_step(sampler.seed, step, scales)
    want = sampler.batch(step, scale)
    for k in ("lr", "hr"):
      assert isinstance(batch[k], jax.Array) and batch[k].sharding.is_equivalent_to(
        _sharding(), batch[k].ndim
      )
      np.testing.assert_array_equal(np.asarray(batch[k]), want[k])


def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one():
  scales = (2, 3)
  sampler = _sampler(_images(scales), scales=scales, patch=8, batch=4)
  full = {
    s: (c, b) for s, c, b in data.prefetch_batches(sampler, range(0, 10), scales, _sharding())
  }
  resumed = list(
    data.prefetch_batches(
      _sampler(_images(scales), scales=scales, patch=8, batch=4), range(6, 10), scales, _sharding()
    )
  )
  assert [s for s, _, _ in resumed] == [6, 7, 8, 9]
  for step, scale, batch in resumed:
    assert scale == full[step][0]
    for k in ("lr", "hr"):
      np.testing.assert_array_equal(np.asarray(batch[k]), np.asarray(full[step][1][k]))


def test_an_error_in_the_sampler_surfaces_in_the_consumer():
  sampler = _sampler(_images((2,)), patch=8, batch=4)
  real_batch = sampler.batch

  def failing_batch(step, scale):
    if step == 5:
      raise RuntimeError("decode failed at step 5")
    return real_batch(step, scale)

  sampler.batch = failing_batch
  steps = []
  with pytest.raises(RuntimeError, match="decode failed at step 5"):
    for step, _, _ in data.prefetch_batches(sampler, range(0, 10), (2,), _sharding()):
      steps.append(step)
  assert steps == list(range(len(steps))) and len(steps) <= 5


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name == "prefetch" and t.is_alive()]


def test_prefetch_thread_ends_when_the_consumer_stops_early():
  before = len(_prefetch_threads())
  sampler = _sampler(_images((2,)), patch=8, batch=4)
  batches = data.prefetch_batches(sampler, range(0, 4), (2,), _sharding(), size=2)
  next(batches)
  time.sleep(0.3)  # let the producer fill the queue and reach the end of `steps`
  batches.close()
  deadline = time.time() + 2
  while len(_prefetch_threads()) > before and time.time() < deadline:
    time.sleep(0.05)
  assert len(_prefetch_threads()) == before
