"""DIV2K through the real TFDS `div2k` builder, built offline from small fake archives.

The archives have the official names and layout (`DIV2K_train_HR.zip` holding
`DIV2K_train_HR/0001.png`, `DIV2K_train_LR_bicubic_X2.zip` holding
`DIV2K_train_LR_bicubic/X2/0001x2.png`, ...). TFDS checks the sha256 of archives found in
a manual dir, which fake ones fail (tested below), so the tests hand them to the builder
the other way TFDS accepts without network: as files already in its download cache,
`<data_dir>/downloads/<name TFDS derives from URL + registered checksum>` plus the
`.INFO` file TFDS writes after a download. The builder, its download manager, extraction
and TFRecord writing all run for real.
"""

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import skimage.data
from PIL import Image

from edsr_jax import config_lib, data, metrics, tfds_data
from edsr_jax.errors import ConfigError
from edsr_jax.imresize import imresize

REPO = pathlib.Path(__file__).resolve().parents[1]

# (id, height, width); uneven sizes so that LR sizes are floor(HR / s).
TRAIN = [(1, 48, 64), (2, 51, 62), (3, 45, 70)]
VALID = [(801, 48, 60), (802, 54, 54)]
GREY_ID = 2  # stored as a greyscale PNG: read as R = G = B, as image_io does


def _hr_images() -> dict[int, np.ndarray]:
  photos = [
    skimage.data.astronaut(),
    skimage.data.coffee(),
    skimage.data.chelsea(),
    skimage.data.rocket(),
    skimage.data.astronaut()[::-1],
  ]
  out = {}
  for k, (i, h, w) in enumerate(TRAIN + VALID):
    y, x = 40 + 17 * k, 60 + 23 * k
    out[i] = np.ascontiguousarray(photos[k][y : y + h, x : x + w])
  out[GREY_ID] = np.repeat(out[GREY_ID][..., 1:2], 3, axis=-1)
  return out


def _png(image: np.ndarray, grey: bool = False) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if grey else image).save(buf, format="PNG")
  return buf.getvalue()


def _write_archives(
  folder: pathlib.Path, hrs: dict[int, np.ndarray], kind: str, scales, lr_fn=data.bicubic_lr
) -> dict:
  """Official-layout zips of `hrs`; returns {scale: {id: LR written}}."""
  folder.mkdir(parents=True, exist_ok=True)
  lrs = {s: {i: lr_fn(hr, s) for i, hr in hrs.items()} for s in scales}
  for split, ids in (("train", [i for i, _, _ in TRAIN]), ("valid", [i for i, _, _ in VALID])):
    with zipfile.ZipFile(folder / f"DIV2K_{split}_HR.zip", "w") as z:
      for i in ids:
        z.writestr(f"DIV2K_{split}_HR/{i:04d}.png", _png(hrs[i], grey=i == GREY_ID))
    for s in scales:
      with zipfile.ZipFile(folder / f"DIV2K_{split}_LR_{kind}_X{s}.zip", "w") as z:
        for i in ids:
          z.writestr(f"DIV2K_{split}_LR_{kind}/X{s}/{i:04d}x{s}.png", _png(lrs[s][i]))
  return lrs


def _seed_download_cache(data_dir: pathlib.Path, archives: pathlib.Path, name: str):
  """Puts `name`'s archives where TFDS keeps its downloads, as if it had fetched them."""
  from tensorflow_datasets.core.download import resource

  builder = tfds_data._builder(name, str(data_dir))
  downloads = data_dir / "downloads"
  downloads.mkdir(parents=True, exist_ok=True)
  for url in builder.builder_config.download_urls.values():
    info = builder.url_infos[url]
    dst = downloads / resource.get_dl_fname(url, info.checksum)
    shutil.copy(archives / info.filename, dst)
    resource.write_info_file(url, dst, builder.name, info.filename, info)


def _prepare(data_dir, archives, name):
  _seed_download_cache(data_dir, archives, name)
  tfds_data.prepare(name, str(data_dir))


@pytest.fixture(scope="module")
def div2k(tmp_path_factory):
  """A data dir with div2k/bicubic_x2, bicubic_x3 and unknown_x2 prepared by TFDS."""
  root = tmp_path_factory.mktemp("div2k")
  hrs = _hr_images()
  lrs = _write_archives(root / "zips", hrs, "bicubic", (2, 3))

  # unknown_x2, with one LR image a pixel short: must be refused when loaded.
  def bad_lr(hr, s):
    lr = data.bicubic_lr(hr, s)
    return lr[:-1] if hr is hrs[3] else lr

  _write_archives(root / "zips_unknown", hrs, "unknown", (2,), bad_lr)
  data_dir = root / "tfds"
  for name in ("div2k/bicubic_x2", "div2k/bicubic_x3"):
    _prepare(data_dir, root / "zips", name)
  _prepare(data_dir, root / "zips_unknown", "div2k/unknown_x2")
  return {"root": root, "data_dir": data_dir, "hr": hrs, "lr": lrs}


def _source_id(hrs, hr):
  matches = [i for i, h in hrs.items() if h.shape == hr.shape and np.array_equal(h, hr)]
  assert len(matches) == 1
  return matches[0]


def test_train_split_pairs_each_lr_with_its_hr(div2k):
  images = tfds_data.load("div2k/bicubic_x2", [2], "train", data_dir=str(div2k["data_dir"]))
  assert images.names == ["train_0000", "train_0001", "train_0002"]
  ids = [_source_id(div2k["hr"], hr) for hr in images.hr]
  assert sorted(ids) == [1, 2, 3]
  for i, hr, lr in zip(ids, images.hr, images.lr[2], strict=True):
    assert hr.dtype == np.uint8 and lr.dtype == np.uint8 and hr.shape[-1] == 3
    np.testing.assert_array_equal(lr, div2k["lr"][2][i])  # the LR file, not re-made


def test_mdsr_pairs_configs_of_each_scale_by_hr(div2k):
  images = tfds_data.load(
    "div2k/bicubic_x{scale}", [2, 3], "train", data_dir=str(div2k["data_dir"])
  )
  assert len(images) == 3 and set(images.lr) == {2, 3}
  for k, hr in enumerate(images.hr):
    i = _source_id(div2k["hr"], hr)
    for s in (2, 3):
      np.testing.assert_array_equal(images.lr[s][k], div2k["lr"][s][i])
      lr, hr_crop = images.pair(k, s)
      assert hr_crop.shape[:2] == (lr.shape[0] * s, lr.shape[1] * s)


def test_validation_split_is_capped_and_aligned(div2k):
  full = tfds_data.load("div2k/bicubic_x{scale}", [3, 2], "valid", data_dir=str(div2k["data_dir"]))
  one = tfds_data.load(
    "div2k/bicubic_x{scale}", [3, 2], "valid", data_dir=str(div2k["data_dir"]), max_images=1
  )
  assert len(full) == 2 and len(one) == 1 and one.names == ["validation_0000"]
  np.testing.assert_array_equal(one.hr[0], full.hr[0])
  i = _source_id(div2k["hr"], one.hr[0])
  assert i in (801, 802)
  for s in (2, 3):
    np.testing.assert_array_equal(one.lr[s][0], div2k["lr"][s][i])


def test_lr_size_that_does_not_match_hr_is_refused(div2k):
  with pytest.raises(
    ConfigError,
    match=r"div2k/unknown_x2 train example \d: LR 35x21 .* "
    r"HR 70x45 at x2: expected 35x22",
  ):
    tfds_data.load("div2k/unknown_x2", [2], "train", data_dir=str(div2k["data_dir"]))


def test_configs_whose_hr_images_differ_are_refused(div2k, tmp_path):
  # bicubic_x3 prepared from other HR images, next to the bicubic_x2 of the fixture.
  hrs = _hr_images()
  hrs[1] = 255 - hrs[1]
  _write_archives(tmp_path / "zips", hrs, "bicubic", (3,))
  _prepare(tmp_path / "other", tmp_path / "zips", "div2k/bicubic_x3")
  data_dir = tmp_path / "tfds"
  shutil.copytree(div2k["data_dir"] / "div2k" / "bicubic_x2", data_dir / "div2k" / "bicubic_x2")
  shutil.copytree(tmp_path / "other" / "div2k" / "bicubic_x3", data_dir / "div2k" / "bicubic_x3")
  with pytest.raises(
    ConfigError,
    match=r"div2k/bicubic_x3 train does not hold the same HR "
    r"images as div2k/bicubic_x2: 1 of 3 missing, 1 others",
  ):
    tfds_data.load("div2k/bicubic_x{scale}", [2, 3], "train", data_dir=str(data_dir))


@pytest.mark.parametrize(
  "name, scales, message",
  [
    ("div2k/bicubic_x8", (2,), "allowed 'div2k/<kind>_x{scale}'"),
    ("div2k/realistic_mild_x4", (4,), "allowed"),
    ("mnist", (2,), "allowed"),
    ("div2k/bicubic_x2", (3,), "LR images at x2 only, but the model trains x3"),
    ("div2k/unknown_x4", (2, 3, 4), "use 'div2k/unknown_x{scale}'"),
  ],
)
def test_bad_config_names_are_refused(name, scales, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    tfds_data.tfds_names(name, scales)


def test_dataset_names_expand_scale():
  assert tfds_data.tfds_names("div2k/unknown_x{scale}", (2, 4)) == {
    2: "div2k/unknown_x2",
    4: "div2k/unknown_x4",
  }
  assert tfds_data.tfds_names("div2k/bicubic_x3", (3,)) == {3: "div2k/bicubic_x3"}


def test_validate_checks_the_name_against_the_model():
  c = config_lib.base_config()
  c.data.source = "tfds"
  config_lib.validate(c)  # default name, EDSR x2
  c.model.scales = (3,)
  c.data.tfds_name = "div2k/bicubic_x2"
  with pytest.raises(ConfigError, match=r"config.data.tfds_name='div2k/bicubic_x2'"):
    config_lib.validate(c)


def test_unprepared_data_dir_without_archives_says_how_to_prepare(tmp_path):
  with pytest.raises(ConfigError) as e:
    tfds_data.load("div2k/bicubic_x2", [2], data_dir=str(tmp_path))
  message = str(e.value)
  assert "div2k/bicubic_x2 is not prepared in" in message and str(tmp_path) in message
  assert "python -m edsr_jax.tfds_data --name=div2k/bicubic_x2" in message
  assert "5.02 GB" in message  # the registered size of the four archives
  for f in (
    "DIV2K_train_HR.zip",
    "DIV2K_valid_HR.zip",
    "DIV2K_train_LR_bicubic_X2.zip",
    "DIV2K_valid_LR_bicubic_X2.zip",
  ):
    assert f in message


def test_manual_dir_missing_an_archive_is_refused_before_any_download(div2k, tmp_path):
  manual = tmp_path / "zips"
  manual.mkdir()
  shutil.copy(div2k["root"] / "zips" / "DIV2K_train_HR.zip", manual)
  shutil.copy(div2k["root"] / "zips" / "DIV2K_valid_HR.zip", manual)
  with pytest.raises(
    ConfigError,
    match=r"lacks DIV2K_train_LR_bicubic_X3.zip, "
    r"DIV2K_valid_LR_bicubic_X3.zip",
  ):
    tfds_data.load("div2k/bicubic_x3", [3], data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))


def test_manual_dir_archives_are_found_by_name_and_checksummed(div2k, tmp_path):
  # TFDS picks the archives up from the manual dir under their official names and
  # refuses these fakes on sha256: real archives go through, offline, the same way.
  with pytest.raises(
    ConfigError,
    match=r"not the official DIV2K file(.|\n)*"
    + re.escape(str(div2k["root"] / "zips"))
    + r"/DIV2K_\w+\.zip",
  ):
    tfds_data.load(
      "div2k/bicubic_x2",
      [2],
      data_dir=str(tmp_path / "tfds"),
      manual_dir=str(div2k["root"] / "zips"),
    )


def test_cli_prepares_a_config(div2k, tmp_path):
  data_dir = tmp_path / "tfds"
  _seed_download_cache(data_dir, div2k["root"] / "zips", "div2k/bicubic_x3")
  result = subprocess.run(  # from another directory, with --data_dir relative to it
    [sys.executable, "-m", "edsr_jax.tfds_data", "--name=div2k/bicubic_x3", "--data_dir=tfds"],
    cwd=tmp_path,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(
    r"div2k/bicubic_x3: prepared in .*bicubic_x3/2.0.0 \(3 train, 2 validation", result.stdout
  )
  assert (data_dir / "div2k" / "bicubic_x3" / "2.0.0" / "dataset_info.json").is_file()


def test_cli_errors_name_its_flags(tmp_path):
  """`python -m edsr_jax.tfds_data`'s errors name its flags (--manual_dir, --data_dir,
  --name), not the config keys training uses, and leave the folders as they were: a
  missing --manual_dir is said not to exist, where it was looked for."""
  (tmp_path / "a_file").write_text("not a folder")
  cases = {
    "no_manual_dir": (
      ["--name=div2k/bicubic_x3", "--data_dir=tfds", "--manual_dir=zips"],
      f"--manual_dir=zips does not exist (looked at {tmp_path / 'zips'}); give the folder "
      "holding DIV2K_train_LR_bicubic_X3.zip",
    ),
    "data_dir_is_a_file": (["--data_dir=a_file"], "--data_dir=a_file: exists and is not a folder"),
    "bad_name": (
      ["--name=div2k/bicubic_x{scale}", "--data_dir=tfds"],
      "--name=div2k/bicubic_x{scale} is not a div2k config: allowed div2k/<kind>_x<s>",
    ),
  }
  procs = {
    case: subprocess.Popen(
      [sys.executable, "-m", "edsr_jax.tfds_data", *args],
      cwd=tmp_path,
      env=dict(os.environ, PYTHONPATH=str(REPO)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for case, (args, _) in cases.items()
  }
  for case, proc in procs.items():
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, (case, stderr[-3000:])
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: " + cases[case][1]), (case, last)
    assert "config." not in last, last
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no tfds/ made
  assert (tmp_path / "a_file").read_text() == "not a folder"


def test_prepare_names_the_cli_flags_when_asked(tmp_path, monkeypatch):
  """The messages of `prepare` as the CLI gives them (names=CLI_FLAGS): an archive folder
  that lacks zips, and a download that fails (offline, say), which says how to go on."""
  manual = tmp_path / "zips"
  manual.mkdir()
  with pytest.raises(ConfigError, match=r"^--manual_dir=\S+/zips lacks DIV2K_train_LR_bicubic_X2"):
    tfds_data.prepare(
      "div2k/bicubic_x2", str(tmp_path / "tfds"), str(manual), names=tfds_data.CLI_FLAGS
    )
  import requests
  import tensorflow_datasets as tfds

  def offline(self, **kwargs):
    raise requests.exceptions.ConnectionError("Failed to resolve 'data.vision.ee.ethz.ch'")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  for names, flag in ((tfds_data.CLI_FLAGS, "--manual_dir"), (tfds_data.CONFIG_KEYS, "config.")):
    with pytest.raises(ConfigError) as refused:
      tfds_data.prepare("div2k/bicubic_x2", str(tmp_path / "tfds"), names=names)
    message = str(refused.value)
    assert message.startswith("div2k/bicubic_x2: cannot download its archives (Failed to resolve")
    assert f"give their folder as {flag}" in message, message


def test_training_runs_on_the_prepared_dataset(div2k, tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.main",
      "--config=configs/edsr.py:x2,baseline,runlocal",
      "--config.data.source=tfds",
      "--config.data.tfds_name=div2k/bicubic_x2",
      f"--config.data.tfds_data_dir={div2k['data_dir']}",
      "--config.model.num_blocks=1",
      "--config.model.num_features=8",
      "--config.patch_size=16",
      f"--workdir={workdir}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "training images: 3; validation images: 1" in result.stderr
  losses = [float(x) for x in re.findall(r"train/loss=([-\d.e+]+)", result.stderr)]
  assert losses and all(np.isfinite(losses))
  assert (workdir / "checkpoints" / "10").is_dir()


def test_evaluate_reads_div2k_validation_from_tfds(div2k, tmp_path):
  """`evaluate --tfds_data_dir` scores the TFDS validation split (RGB, border scale + 6)."""
  workdir = tmp_path / "run"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.main",
      "--config=configs/edsr.py:x2,baseline,runlocal",
      "--config.model.num_blocks=1",
      "--config.model.num_features=8",
      "--config.num_train_steps=2",
      f"--workdir={workdir}",
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
    timeout=300,
  )
  out = tmp_path / "div2k.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "edsr_jax.evaluate",
      f"--checkpoint={workdir}",
      "--datasets=DIV2K",
      f"--tfds_data_dir={div2k['data_dir']}",
      f"--output_json={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  scores = json.loads(out.read_text())["DIV2K"]["x2"]
  # The bicubic row, recomputed here from the validation images TFDS holds.
  images = tfds_data.load("div2k/bicubic_x2", [2], "valid", data_dir=str(div2k["data_dir"]))
  want = np.mean(
    [
      metrics.evaluate_pair(imresize(lr, 2.0), hr, scale=2, convention="div2k")["psnr"]
      for lr, hr in (images.pair(i, 2) for i in range(len(images)))
    ]
  )
  assert scores["bicubic_psnr"] == pytest.approx(want, abs=1e-9)
  assert np.isfinite(scores["psnr"]) and 0 < scores["ssim"] <= 1
