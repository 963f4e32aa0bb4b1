"""DIV2K through TensorFlow Datasets: the real `div2k` builder, decoded into memory once.

With `config.data.source = "tfds"` training reads `config.data.tfds_name` from
`config.data.tfds_data_dir` (default: TFDS's own, `$TFDS_DATA_DIR` or
`~/tensorflow_datasets`): the 'train' split for training and the first
`max_val_images` of the 'validation' split for validation. `"div2k/bicubic_x{scale}"`
stands for one builder config per model scale (MDSR loads x2, x3 and x4 and pairs their
LR images with one copy of the HR images); a fixed name such as `"div2k/bicubic_x2"`
must be the model's only scale. Kinds: `bicubic` (the paper's track) and `unknown`.

Preparing (once; training never downloads by itself):

  python -m edsr_jax.tfds_data --name=div2k/bicubic_x2 --data_dir=/data/tfds

downloads the four official archives and writes the TFRecords. Without network, give
the official zip files instead, unrenamed, in one folder:

  python -m edsr_jax.tfds_data --name=div2k/bicubic_x2 --data_dir=/data/tfds \
      --manual_dir=/data/DIV2K_zips

or set `config.data.tfds_manual_dir` and the first (single-process) training run
prepares it. How that works offline: the installed builder (tensorflow_datasets 4.9.10,
div2k 2.0.0) asks its download manager for four URLs (`download_and_extract`). Before
any network access the manager looks in the manual dir for each URL's file name as
registered in the builder's checksums.tsv (DIV2K_train_HR.zip, DIV2K_valid_HR.zip,
DIV2K_{train,valid}_LR_bicubic_X2.zip; `unknown` and x3/x4 likewise) and, when found,
checks its size and sha256 against the registered ones: an archive that is not the
official file is refused (we report which), a missing one would be downloaded, so we
check that all four are there first. The extracted archives go to
`<data_dir>/downloads/extracted` and may be deleted once the dataset is prepared.
(TFDS also reuses files in `<data_dir>/downloads` under its own cache names without
re-hashing them; the tests use that to build a small dataset from fake archives.)

Disk, from the archive sizes registered in the builder's checksums.tsv: train HR
3.53 GB + valid HR 0.45 GB + LR x2 0.93 + 0.12 GB = 5.02 GB of zips for bicubic_x2
(x3: 4.46 GB, x4: 4.26 GB). The builder stores each PNG's bytes unchanged and PNGs do
not compress further in a zip, so the prepared TFRecords are about the archives' size
again (~5.0 GB for bicubic_x2; every config holds its own copy of the 4 GB of HR
images), plus ~5 GB of extracted files while preparing: ~15 GB peak with the zips.
These are estimates from the registered sizes, not measured on the full set. In memory
the 800 decoded training images (about 2040x1350 each) take ~6.6 GB (HR) + ~1.7 GB
(x2 LR).

TFDS keeps no file names (an example's key, the LR file name, only decides its place in
the shuffled TFRecords), so images are named `<split>_<index>` in stored order and the
validation subset is a fixed pseudo-random choice among 0801-0900, not 0801-0810.
Configs of different scales store their examples in different orders; they are paired
by the bytes of their HR image, which must be identical.
"""

import argparse
import functools
import hashlib
import os
import re
import sys
from collections.abc import Sequence

import jax

from edsr_jax.config_lib import ConfigError
from edsr_jax.data import SRImages

KINDS = ("bicubic", "unknown")
_SPLITS = {"train": "train", "valid": "validation", "validation": "validation"}
_NAME = re.compile(r"div2k/(?P<kind>[a-z]+)_x(?P<scale>\{scale\}|\d+)")


def dataset_names(name: str, scales: Sequence[int]) -> dict[int, str]:
  """{scale: TFDS name} for `config.data.tfds_name` and the model's scales."""
  m = _NAME.fullmatch(name)
  allowed = (
    f"'div2k/<kind>_x{{scale}}' or 'div2k/<kind>_x<s>' with kind one of {KINDS} "
    "and s one of 2, 3, 4"
  )
  if not m or m["kind"] not in KINDS or m["scale"] not in ("{scale}", "2", "3", "4"):
    raise ConfigError(f"config.data.tfds_name={name!r} is invalid: allowed {allowed}")
  if m["scale"] != "{scale}" and tuple(scales) != (int(m["scale"]),):
    raise ConfigError(
      f"config.data.tfds_name={name!r} has LR images at x{m['scale']} only, but the "
      f"model trains x{', x'.join(map(str, scales))}: use 'div2k/{m['kind']}_x{{scale}}'"
    )
  return {s: f"div2k/{m['kind']}_x{s}" for s in scales}


@functools.cache
def _import_tfds():
  """Imports TensorFlow (host CPU only) and TFDS on first use."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  # JAX owns the accelerators; TF only decodes PNGs on the host.
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # TF already initialised, or no such device kind
      pass
  return tf, tfds


def _builder(name: str, data_dir: str | None):
  _, tfds = _import_tfds()
  return tfds.builder(name, data_dir=data_dir or None)


def archive_names(builder) -> list[str]:
  """The official file names of the builder config's four archives."""
  return [builder.url_infos[url].filename for url in builder.builder_config.download_urls.values()]


def _archive_size(builder) -> str:
  size = sum(builder.url_infos[url].size for url in builder.builder_config.download_urls.values())
  return f"{size / 1e9:.2f} GB"


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None):
  """Prepares one div2k config (a no-op if it is): from `manual_dir`, else downloads."""
  from etils import epath
  from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

  _, tfds = _import_tfds()
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  if manual_dir:
    missing = [f for f in archive_names(builder) if not epath.Path(manual_dir, f).exists()]
    if missing:  # TFDS would silently download these
      raise ConfigError(
        f"{name}: the archive folder {manual_dir} (config.data.tfds_manual_dir) lacks "
        f"{', '.join(missing)}; it needs {', '.join(archive_names(builder))} as "
        "downloaded from https://data.vision.ee.ethz.ch/cvl/DIV2K/, unrenamed"
      )
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config)
  except NonMatchingChecksumError as e:
    raise ConfigError(
      f"{name}: an archive is not the official DIV2K file (its size or "
      f"sha256 differs from the registered one); replace it:\n{e}"
    ) from None
  return builder


def _ready_builder(name: str, data_dir: str | None, manual_dir: str | None):
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  where = f" --data_dir={data_dir}" if data_dir else ""
  if not manual_dir:
    raise ConfigError(
      f"{name} is not prepared in {builder.data_dir} (config.data.tfds_data_dir="
      f"{data_dir or ''!r}). Prepare it once: `python -m edsr_jax.tfds_data --name={name}"
      f"{where}` downloads {_archive_size(builder)}; offline, add --manual_dir (or set "
      f"config.data.tfds_manual_dir) to a folder holding {', '.join(archive_names(builder))}"
    )
  if jax.process_count() > 1:  # several hosts would write the same files at once
    raise ConfigError(
      f"{name} is not prepared in {builder.data_dir}; prepare it before a "
      f"multi-process run: python -m edsr_jax.tfds_data --name={name}{where} "
      f"--manual_dir={manual_dir}"
    )
  return prepare(name, data_dir, manual_dir)


def _examples(builder, split: str, decode_hr: bool, limit: int | None):
  """Yields (sha256 of the HR file, decoded HR or None, decoded LR) in stored order."""
  tf, tfds = _import_tfds()
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={"hr": tfds.decode.SkipDecoding(), "lr": tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False),
  )
  if limit is not None:
    ds = ds.take(limit)

  def decode(example):
    # channels=3 follows image_io's rule: grey copied to RGB, alpha dropped.
    out = {
      "hr_file": example["hr"],
      "lr": tf.io.decode_image(example["lr"], channels=3, expand_animations=False),
    }
    if decode_hr:
      out["hr"] = tf.io.decode_image(example["hr"], channels=3, expand_animations=False)
    return out

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
  for ex in tfds.as_numpy(ds):
    yield hashlib.sha256(ex["hr_file"]).hexdigest(), ex.get("hr"), ex["lr"]


def load(
  name: str,
  scales: Sequence[int],
  split: str = "train",
  *,
  data_dir: str | None = None,
  manual_dir: str | None = None,
  max_images: int | None = None,
) -> SRImages:
  """One split ('train' or 'valid') of the div2k config(s) for `scales`, as SRImages."""
  names = dataset_names(name, scales)
  if split not in _SPLITS:
    raise ValueError(f"split {split!r}: allowed {sorted(_SPLITS)}")
  split = _SPLITS[split]
  keys, hrs, lrs = None, None, {}
  for scale, ds_name in names.items():
    builder = _ready_builder(ds_name, data_dir, manual_dir)
    if keys is None:  # the first config fixes the images, their order and the HR copy
      rows = list(_examples(builder, split, True, max_images))
      if not rows:
        raise ConfigError(f"{ds_name} has no {split} images in {builder.data_dir}")
      keys, hrs = [k for k, _, _ in rows], [hr for _, hr, _ in rows]
      lr = [lr for _, _, lr in rows]
    else:  # other scales: the same HR files, stored in another order
      found = {k: lr for k, _, lr in _examples(builder, split, False, None)}
      missing = [i for i, k in enumerate(keys) if k not in found]
      extra = len(found) - (len(keys) - len(missing))
      if missing or (max_images is None and extra):
        raise ConfigError(
          f"{ds_name} {split} does not hold the same HR images as {names[scales[0]]}: "
          f"{len(missing)} of {len(keys)} missing, {extra} others; prepare both configs "
          "from the same DIV2K HR archives"
        )
      lr = [found[k] for k in keys]
    for i, (hr, lr_i) in enumerate(zip(hrs, lr, strict=True)):
      want = (hr.shape[0] // scale, hr.shape[1] // scale)
      if lr_i.shape[:2] != want:
        raise ConfigError(
          f"{ds_name} {split} example {i}: LR {lr_i.shape[1]}x{lr_i.shape[0]} does not "
          f"match its HR {hr.shape[1]}x{hr.shape[0]} at x{scale}: expected "
          f"{want[1]}x{want[0]}"
        )
    lrs[scale] = lr
  return SRImages([f"{split}_{i:04d}" for i in range(len(keys))], hrs, lrs)


def load_for_config(config, scales: Sequence[int], split: str) -> SRImages:
  """`split` of `config.data.tfds_name`; validation is capped at max_val_images."""
  d = config.data
  return load(
    d.tfds_name,
    scales,
    split,
    data_dir=d.tfds_data_dir or None,
    manual_dir=d.tfds_manual_dir or None,
    max_images=d.max_val_images if split == "valid" else None,
  )


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m edsr_jax.tfds_data", description="Prepares div2k configs for training."
  )
  parser.add_argument(
    "--name",
    default="div2k/bicubic_x2",
    help="comma-separated div2k configs, e.g. div2k/bicubic_x2,div2k/bicubic_x3",
  )
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's own)")
  parser.add_argument(
    "--manual_dir",
    default=None,
    help="folder with the official DIV2K zips; without it they are downloaded",
  )
  args = parser.parse_args(argv)
  for name in args.name.split(","):
    m = _NAME.fullmatch(name)
    if not (m and m["scale"].isdigit()):
      parser.error(f"--name {name!r}: give configs with their scale, e.g. div2k/bicubic_x2")
    dataset_names(name, [int(m["scale"])])
    builder = prepare(name, args.data_dir, args.manual_dir)
    splits = builder.info.splits
    print(
      f"{name}: prepared in {builder.data_dir} ({splits['train'].num_examples} train, "
      f"{splits['validation'].num_examples} validation images)"
    )


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  try:
    main()
  except ConfigError as e:
    sys.exit(f"error: {e}")
