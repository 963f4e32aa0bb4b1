"""`config.data.train_dir=a,b,c`: the images of several folders train together.

Real files: the benchmark-layout Set5, and plain HR folders made of Set14 PNGs, T91 BMPs
and a BSD200 JPEG from the shared data (EDSR_SHARED_DATA).
"""

import shutil

import numpy as np
import pytest

from edsr_jax import config_lib, data, image_io
from edsr_jax.errors import ConfigError


def _folder(path, files):
  """A plain HR folder holding `files` ({name in the folder: source file})."""
  path.mkdir(parents=True)
  for name, source in files.items():
    shutil.copy(source, path / name)
  return path


@pytest.fixture
def folders(shared_data, tmp_path):
  bench, train_data = shared_data / "benchmark", shared_data / "train"
  set5 = bench / "Set5"  # benchmark layout: LR from its files
  set14 = _folder(
    tmp_path / "Set14",
    {
      "baboon.png": bench / "Set14" / "HR" / "baboon.png",
      "t1.bmp": train_data / "T91" / "t1.bmp",
      "t2.bmp": train_data / "T91" / "t2.bmp",
    },
  )
  bsd = _folder(
    tmp_path / "BSD200",
    {
      "100075.jpg": train_data / "BSD200" / "100075.jpg",
      "t1.bmp": train_data / "T91" / "t3.bmp",  # the same name as in Set14/: another image
    },
  )
  return set5, set14, bsd


def test_union_of_folders_in_every_layout_with_unique_names(folders):
  set5, set14, bsd = folders
  images = data.load_folders([set5, set14, bsd], (2, 3))
  assert images.names == [
    "baby",
    "bird",
    "butterfly",
    "head",
    "woman",
    "baboon",
    "Set14/t1",  # in two folders: prefixed with the folder's name
    "t2",
    "100075",
    "BSD200/t1",
  ]
  files = [set5 / "HR" / f"{n}.png" for n in images.names[:5]] + [
    set14 / "baboon.png",
    set14 / "t1.bmp",
    set14 / "t2.bmp",
    bsd / "100075.jpg",
    bsd / "t1.bmp",
  ]
  for k, f in enumerate(files):
    np.testing.assert_array_equal(images.hr[k], image_io.read_rgb(f))
    for s in (2, 3):
      if k < 5:  # Set5's own LR files
        lr_file = set5 / "LR_bicubic" / f"X{s}" / f"{f.stem}x{s}.png"
        np.testing.assert_array_equal(images.lr[s][k], image_io.read_rgb(lr_file))
      else:  # plain folders (BMP, JPEG, PNG): MATLAB-bicubic LR
        np.testing.assert_array_equal(images.lr[s][k], data.bicubic_lr(images.hr[k], s))
  assert not np.array_equal(images.hr[6][:50, :50], images.hr[9][:50, :50])


def test_train_dir_with_commas_loads_every_folder(folders):
  set5, set14, bsd = folders
  config = config_lib.base_config()
  config.data.train_dir = f"{set5}, {set14},{bsd}"  # spaces around a comma are dropped
  config_lib.validate(config)
  images = data.load_train_images(config, (2,))
  assert len(images) == 5 + 3 + 2
  assert images.names[-1] == "BSD200/t1"
  # One folder is exactly what it always was.
  config.data.train_dir = str(set14)
  assert data.load_train_images(config, (2,)).names == ["baboon", "t1", "t2"]


def test_folders_of_the_same_name_are_told_apart_by_their_path(shared_data, tmp_path):
  t1 = shared_data / "train" / "T91" / "t1.bmp"
  a = _folder(tmp_path / "a" / "HR", {"x.bmp": t1, "y.bmp": t1})
  b = _folder(tmp_path / "b" / "HR", {"x.bmp": t1})
  assert data.load_folders([a, b], (2,)).names == [f"{a}/x", "y", f"{b}/x"]


def test_a_folder_named_twice_is_refused(shared_data, tmp_path):
  a = _folder(tmp_path / "a", {"x.bmp": shared_data / "train" / "T91" / "t1.bmp"})
  (tmp_path / "link").symlink_to(a)
  for second in (a, tmp_path / "link"):
    with pytest.raises(ConfigError, match=r"names the folder .* twice"):
      data.load_folders([a, second], (2,))


@pytest.mark.parametrize("value", ["a,,b", "a,", ",a", " , "])
def test_an_empty_part_is_refused(value):
  config = config_lib.base_config()
  config.data.train_dir = value
  with pytest.raises(
    ConfigError, match=rf"config.data.train_dir={value!r} is invalid: allowed a folder, or several"
  ):
    config_lib.validate(config)
