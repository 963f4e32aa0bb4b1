"""Tests for `python -m edsr_jax.upscale`, run as a real subprocess on a trained checkpoint."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageCms

from edsr_jax import config_lib, image_io, inference, train
from edsr_jax.imresize import imresize

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = config_lib.runlocal(config_lib.base_config())
  config.model.num_blocks, config.model.num_features = 1, 8
  config.num_train_steps = config.checkpoint_every_steps = config.eval_every_steps = 2
  train.train_and_evaluate(config, str(workdir))
  return workdir


def error_lines(proc):
  return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_files_folders_modes_and_bad_inputs(workdir, tmp_path, cli):
  rng = np.random.default_rng(0)
  folder = tmp_path / "in"
  folder.mkdir()
  rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (17, 12), dtype=np.uint8)
  rgba = rng.integers(0, 256, (14, 19, 4), dtype=np.uint8)
  Image.fromarray(rgb).save(folder / "photo.png")
  Image.fromarray(grey).save(folder / "grey.bmp")
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  (folder / "notes.txt").write_text("not an image, not listed")
  single = tmp_path / "alpha.png"
  Image.fromarray(rgba).save(single)
  missing = tmp_path / "nope.png"
  out = tmp_path / "out"

  proc = cli("upscale", "--checkpoint", workdir, folder, single, missing, f"--output_dir={out}")

  # The good images are written, the bad inputs are each reported, and the run fails.
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr
  assert sorted(p.name for p in out.iterdir()) == [
    "alpha_x2_SR.png",
    "grey_x2_SR.png",
    "photo_x2_SR.png",
  ]
  errors = error_lines(proc)
  assert len(errors) == 2, proc.stderr
  assert any(str(folder / "broken.png") in e for e in errors)
  assert any(str(missing) in e and "no such file" in e for e in errors)
  assert "[4/4]" in proc.stderr  # progress per image

  # Each output is the network on the input's RGB (grey copied to 3 channels), written
  # as the input was: RGB, greyscale (the rounded mean of the channels), or with alpha.
  upscaler = inference.load(workdir)
  sr_grey = upscaler.upscale(np.repeat(grey[..., None], 3, axis=-1)).astype(int)
  for name, mode, expected in (
    ("photo", "RGB", upscaler.upscale(rgb)),
    ("grey", "L", (sr_grey.sum(-1) + 1) // 3),
    ("alpha", "RGBA", np.dstack([upscaler.upscale(rgba[..., :3]), imresize(rgba[..., 3], 2)])),
  ):
    with Image.open(out / f"{name}_x2_SR.png") as image:
      assert image.mode == mode
      written = np.asarray(image)
    np.testing.assert_array_equal(written, expected, err_msg=name)


def test_self_ensemble_and_tiles(workdir, tmp_path, cli):
  lr = np.random.default_rng(1).integers(0, 256, (37, 29, 3), dtype=np.uint8)
  Image.fromarray(lr).save(tmp_path / "x.png")
  proc = cli(
    "upscale",
    tmp_path / "x.png",
    "--checkpoint",
    workdir / "checkpoints" / "2",
    "--output_dir",
    tmp_path / "out",
    "--scale=2",
    "--self_ensemble",
    "--tile_size=8",
  )
  assert proc.returncode == 0, proc.stderr
  upscaler = inference.load(workdir)
  expected = upscaler.upscale(lr, self_ensemble=True, tile_size=0)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x_x2_SR.png")), expected)
  assert not np.array_equal(expected, upscaler.upscale(lr))


@pytest.mark.parametrize(
  "case", ["missing_checkpoint", "scale", "same_name", "no_images", "tiny_tile"]
)
def test_usage_errors_stop_before_writing(workdir, tmp_path, case, cli):
  image = np.zeros((8, 8, 3), np.uint8)
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "empty").mkdir()
  Image.fromarray(image).save(tmp_path / "a" / "x.png")
  Image.fromarray(image).save(tmp_path / "b" / "x.png")
  out = tmp_path / "out"
  checkpoint = tmp_path / "no_such_run" if case == "missing_checkpoint" else workdir
  inputs = {"same_name": [tmp_path / "a", tmp_path / "b"], "no_images": [tmp_path / "empty"]}.get(
    case, [tmp_path / "a"]
  )
  flags = {"scale": ["--scale=3"], "tiny_tile": ["--tile_size=1"]}.get(case, [])
  proc = cli("upscale", f"--checkpoint={checkpoint}", f"--output_dir={out}", *flags, *inputs)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  errors = error_lines(proc)
  assert len(errors) == 1, proc.stderr
  expected = {
    "missing_checkpoint": [str(checkpoint), "no such file"],
    "scale": ["scale 3", "available: x2"],
    "same_name": [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")],
    "no_images": [str(tmp_path / "empty"), "no image files"],
    # The tiny network's halo: 2 * 1 block + 4 = 6 pixels; (1 + 12)**2 = 169x the work.
    "tiny_tile": ["--tile_size=1 is too small", "halo of 6", "169x", "at least --tile_size=6"],
  }
  for fragment in expected[case]:
    assert fragment in errors[0]
  assert not out.exists() or not any(out.iterdir())


def _dead_pid() -> int:
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def test_images_as_a_viewer_shows_them(workdir, tmp_path, cli):
  """One run over a folder of odd images that is also --output_dir: orientation, ICC
  profiles, greyscale, alpha, animation, formats not read, hidden and temporary files,
  earlier outputs and a file named twice."""
  rng = np.random.default_rng(2)
  folder, ref = tmp_path / "photos", tmp_path / "ref"
  folder.mkdir()
  ref.mkdir()
  shape = (10, 12)  # every image upright is 10x12: one compiled program

  def image(*channels):
    return rng.integers(0, 256, (*shape, *channels), dtype=np.uint8)

  stored = np.ascontiguousarray(np.rot90(image(3), 1))  # as a phone held upright stores it
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 clockwise to show"
  Image.fromarray(stored).save(folder / "portrait.jpg", exif=exif.tobytes())
  Image.fromarray(stored).save(ref / "portrait.jpg")  # the same pixels, no tag
  srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  icc = image(3)
  Image.fromarray(icc).save(folder / "icc.png", icc_profile=srgb)
  cmyk = Image.fromarray(image(3)).convert("CMYK")
  cmyk.save(folder / "cmyk.jpg", icc_profile=srgb[:16] + b"CMYK" + srgb[20:])  # a CMYK header
  grey, grey_alpha, rgba = image(), image(2), image(4)
  Image.fromarray(grey).save(folder / "grey.png")
  Image.fromarray(grey_alpha).save(folder / "grey_alpha.png")
  Image.fromarray(rgba).save(folder / "rgba.png")
  opaque = np.dstack([image(3), np.full(shape, 255, np.uint8)])
  Image.fromarray(opaque).save(folder / "opaque.png")
  palette = Image.fromarray(image(3)).quantize(8)
  palette.save(folder / "palette.gif", transparency=int(np.asarray(palette)[0, 0]))
  frames = [Image.fromarray(image(3)) for _ in range(3)]
  frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
  tga = image(3)
  Image.fromarray(tga).save(folder / "targa.tga")  # read from a folder, as when named
  (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
  Image.fromarray(image(3)).save(folder / ".hidden.png")
  Image.fromarray(image(3)).save(folder / "earlier_x2_SR.png")  # a result of a run before
  stale = folder / f".gone_x2_SR.tmp{_dead_pid()}.png"  # left by a killed run
  stale.write_bytes(b"\x89PNG\r\n\x1a\n half")
  os.utime(stale, (time.time() - 3600, time.time() - 3600))
  misnamed = tmp_path / "notes.xyz"
  Image.fromarray(image(3)).save(misnamed, format="PNG")

  proc = cli(
    "upscale", f"--checkpoint={workdir}", f"--output_dir={folder}", folder, folder / "grey.png",
    misnamed,
  )  # fmt: skip

  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr
  errors = error_lines(proc)
  assert errors == [  # the problems found with the inputs, in order, then those in reading
    f"error: {folder / 'phone.heic'}: HEIC is not read: convert it to JPEG or PNG",
    f"error: {misnamed}: not an image file name (extension .xyz); the extensions read are "
    + ", ".join(image_io.IMAGE_EXTENSIONS),
    f"error: {folder / 'anim.gif'}: an animated image with 3 frames; extract the frame you want",
  ], proc.stderr
  warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and str(folder / "cmyk.jpg") in warnings[0], proc.stderr
  assert "CMYK ICC profile is not carried" in warnings[0]
  assert f"skipped 1 earlier output(s) (*_x<N>_SR.png) in {folder}" in proc.stderr
  assert "1 input(s) named more than once" in proc.stderr
  assert "removed 1 temporary file(s)" in proc.stderr and not stale.exists()
  outputs = ["cmyk", "grey", "grey_alpha", "icc", "opaque", "palette", "portrait", "rgba"]
  outputs += ["targa"]
  assert sorted(p.name for p in folder.glob("*_x2_SR.png")) == sorted(
    [f"{name}_x2_SR.png" for name in outputs] + ["earlier_x2_SR.png"]
  )
  assert f"[{len(outputs) + 1}/{len(outputs) + 1}]" in proc.stderr  # anim.gif counted too
  assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name != ".hidden.png"]

  upscaler = inference.load(workdir)

  def written(name):
    with Image.open(folder / f"{name}_x2_SR.png") as result:
      return result.mode, np.asarray(result), result.info.get("icc_profile")

  # Upright: the network on the un-tagged twin turned by hand, not on the stored pixels.
  mode, portrait, _ = written("portrait")
  upright = np.rot90(image_io.read_rgb(ref / "portrait.jpg"), -1)
  assert mode == "RGB" and portrait.shape == (20, 24, 3)
  np.testing.assert_array_equal(portrait, upscaler.upscale(upright))
  mode, pixels, profile = written("icc")
  assert (mode, profile) == ("RGB", srgb)
  np.testing.assert_array_equal(pixels, upscaler.upscale(icc))
  mode, _, profile = written("cmyk")
  assert (mode, profile) == ("RGB", None)
  mode, pixels, _ = written("grey")
  sr = upscaler.upscale(np.repeat(grey[..., None], 3, -1)).astype(int)
  assert mode == "L"
  np.testing.assert_array_equal(pixels, (sr.sum(-1) + 1) // 3)  # the rounded mean
  mode, pixels, _ = written("grey_alpha")
  assert mode == "LA"
  np.testing.assert_array_equal(pixels[..., 1], imresize(grey_alpha[..., 1], 2))
  mode, pixels, _ = written("rgba")
  assert mode == "RGBA"
  np.testing.assert_array_equal(pixels[..., :3], upscaler.upscale(rgba[..., :3]))
  np.testing.assert_array_equal(pixels[..., 3], imresize(rgba[..., 3], 2))
  assert written("opaque")[0] == "RGB"  # an alpha opaque everywhere is dropped
  mode, pixels, _ = written("palette")
  assert mode == "RGBA" and pixels[0, 0, 3] == 0 and pixels[..., 3].max() == 255
  np.testing.assert_array_equal(written("targa")[1], upscaler.upscale(tga))


def test_sigterm_leaves_whole_outputs_and_no_temporary_file(workdir, tmp_path):
  folder, out = tmp_path / "in", tmp_path / "out"
  folder.mkdir()
  rng = np.random.default_rng(3)
  count = 150
  for k in range(count):
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{k}.png")
  proc = subprocess.Popen(
    [sys.executable, "-m", "edsr_jax.upscale", f"--checkpoint={workdir}", f"--output_dir={out}"]
    + [str(folder)],
    cwd=REPO_ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  lines = []
  for line in proc.stderr:
    lines.append(line.rstrip("\n"))
    if line.startswith("[1/"):
      proc.send_signal(signal.SIGTERM)
      break
  lines += proc.stderr.read().splitlines()
  assert proc.wait(timeout=120) == 143, "\n".join(lines)
  stderr = "\n".join(lines)
  assert "Traceback" not in stderr
  assert lines[-1] == "stopped by SIGTERM; nothing half-written was left behind", stderr
  assert sum("SIGTERM" in line for line in lines) == 1
  results = sorted(out.iterdir())
  assert 1 <= len(results) < count, stderr
  assert all(p.name.endswith("_x2_SR.png") and not p.name.startswith(".") for p in results)
  for p in results:  # each whole
    assert image_io.read_rgb(p).shape == (20, 24, 3)


def test_out_of_memory_is_one_line_and_keeps_what_was_written(tmp_path):
  """A real out-of-memory: the child's address space is limited (ulimit -v), and the whole
  3000x3000 image (--tile_size=0) needs a 9 GB buffer in the shipped x2 network."""
  small, big, out = tmp_path / "a_small.png", tmp_path / "big.png", tmp_path / "out"
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(small)
  Image.fromarray(np.full((3000, 3000, 3), 90, np.uint8)).save(big)
  limit_kb = 6 * 1024 * 1024  # JAX starts in ~2.5 GB here; 6 GB leaves room for more cores
  proc = subprocess.run(
    ["bash", "-c", f'ulimit -v {limit_kb} && exec "$0" "$@"', sys.executable]
    + ["-m", "edsr_jax.upscale", "--checkpoint=pretrained/edsr_291_x2", f"--output_dir={out}"]
    + ["--tile_size=0", str(small), str(big)],
    cwd=REPO_ROOT,
    env=dict(os.environ, MALLOC_ARENA_MAX="2"),  # glibc reserves 64 MB per arena otherwise
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr
  errors = error_lines(proc)
  assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1], proc.stderr
  assert errors[0].startswith(f"error: {big} (3000x3000 pixels): out of memory upscaling it")
  assert "RESOURCE_EXHAUSTED" in errors[0]
  assert "leave --tile_size unset (automatic tiles)" in errors[0]
  assert "the 1 image(s) written before are kept" in errors[0]
  assert [p.name for p in out.iterdir()] == ["a_small_x2_SR.png"]
  assert image_io.read_rgb(out / "a_small_x2_SR.png").shape == (32, 32, 3)
