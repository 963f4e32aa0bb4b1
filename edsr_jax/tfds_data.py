"""DIV2K through TensorFlow Datasets: the real `div2k` builder, decoded into memory once.

The `tfds` data source (`config.data.tfds_name`, `tfds_data_dir`, `tfds_manual_dir`):
`load` reads a split of one builder config per model scale and pairs their LR images
with one copy of the HR images, and `prepare` (also `python -m edsr_jax.tfds_data`)
writes a config's records once, from the official archives. TensorFlow is imported on
first use only, so that the other sources and tools never pay for it. How preparing
works offline, disk sizes and naming: README, "Data".

  python -m edsr_jax.tfds_data --name=div2k/bicubic_x2 --data_dir=/data/tfds \
      [--manual_dir=/data/DIV2K_zips]
"""

import functools
import hashlib
import os
import re
import shlex
from collections.abc import Mapping, Sequence

import jax
from absl import app, flags
from etils import epath

from edsr_jax import cli, errors, image_io
from edsr_jax.image_io import SRImages

_SPLITS = {"train": "train", "valid": "validation", "validation": "validation"}


TFDS_KINDS = ("bicubic", "unknown")
_TFDS_NAME = re.compile(r"div2k/(?P<kind>[a-z]+)_x(?P<scale>\{scale\}|\d+)")


# What the user calls each folder in messages: the config keys (training, evaluate), or
# the flags of `python -m edsr_jax.tfds_data`.
CONFIG_KEYS = {"data_dir": "config.data.tfds_data_dir", "manual_dir": "config.data.tfds_manual_dir"}
CLI_FLAGS = {"data_dir": "--data_dir", "manual_dir": "--manual_dir"}


def tfds_names(name: str, scales: Sequence[int]) -> dict[int, str]:
  """{scale: TFDS name} for `config.data.tfds_name` and the model's scales.

  `div2k/<kind>_x{scale}` names one builder config per scale; `div2k/<kind>_x<s>` is
  one config, which must then be the model's only scale.
  """
  m = _TFDS_NAME.fullmatch(name)
  allowed = (
    f"'div2k/<kind>_x{{scale}}' or 'div2k/<kind>_x<s>' with kind one of {TFDS_KINDS} "
    "and s one of 2, 3, 4"
  )
  if not m or m["kind"] not in TFDS_KINDS or m["scale"] not in ("{scale}", "2", "3", "4"):
    raise errors.ConfigError(f"config.data.tfds_name={name!r} is invalid: allowed {allowed}")
  if m["scale"] != "{scale}" and tuple(scales) != (int(m["scale"]),):
    raise errors.ConfigError(
      f"config.data.tfds_name={name!r} has LR images at x{m['scale']} only, but the "
      f"model trains x{', x'.join(map(str, scales))}: use 'div2k/{m['kind']}_x{{scale}}'"
    )
  return {s: f"div2k/{m['kind']}_x{s}" for s in scales}


@functools.cache
def _import_tfds():
  """Imports TensorFlow (host CPU only) and TFDS on first use."""
  # Deferred: TensorFlow takes seconds and memory to import, and only this source needs it.
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


def _failed_download(error: BaseException, tfds) -> bool:
  """Whether `error` is a download that failed (no network, a proxy, a server error):
  TFDS's DownloadError, or what `requests` raises (OSErrors too)."""
  module = type(error).__module__.split(".")[0]
  return isinstance(error, tfds.download.DownloadError) or module in ("requests", "urllib3")


def prepare(
  name: str,
  data_dir: str | None = None,
  manual_dir: str | None = None,
  *,
  names: Mapping[str, str] = CONFIG_KEYS,
):
  """Prepares one div2k config (a no-op if it is): from `manual_dir`, else downloads.

  Messages name the folders as `names` says: the config keys (CONFIG_KEYS), or the
  command-line flags (CLI_FLAGS).
  """
  if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise errors.ConfigError(f"{names['data_dir']}={data_dir}: exists and is not a folder")
  _, tfds = _import_tfds()
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  archives = ", ".join(archive_names(builder))
  if manual_dir:
    if not os.path.isdir(manual_dir):
      problem = "is not a folder" if os.path.exists(manual_dir) else "does not exist"
      raise errors.ConfigError(
        f"{names['manual_dir']}={manual_dir} {problem} (looked at "
        f"{os.path.abspath(manual_dir)}); give the folder holding {archives} as "
        "downloaded from https://data.vision.ee.ethz.ch/cvl/DIV2K/"
      )
    missing = [f for f in archive_names(builder) if not epath.Path(manual_dir, f).exists()]
    if missing:  # TFDS would silently download these
      raise errors.ConfigError(
        f"{names['manual_dir']}={manual_dir} lacks {', '.join(missing)}: {name} needs "
        f"{archives} as downloaded from https://data.vision.ee.ethz.ch/cvl/DIV2K/, unrenamed"
      )
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config)
  except tfds.core.download.download_manager.NonMatchingChecksumError as e:
    raise errors.ConfigError(
      f"{name}: an archive is not the official DIV2K file (its size or "
      f"sha256 differs from the registered one); replace it:\n{e}"
    ) from None
  except (OSError, tfds.download.DownloadError) as e:
    if _failed_download(e, tfds):
      raise errors.ConfigError(
        f"{name}: cannot download its archives ({errors.one_line(e)[:300]}); offline, "
        f"download {archives} elsewhere and give their folder as {names['manual_dir']}"
      ) from None
    where = (
      f"{names['data_dir']}={data_dir}"
      if data_dir
      else f"TFDS's default data dir (choose another with {names['data_dir']})"
    )
    raise errors.ConfigError(
      f"{where}: cannot prepare {name} there: {e.strerror or errors.one_line(e)} ({e.filename})"
    ) from None
  return builder


def _ready_builder(name: str, data_dir: str | None, manual_dir: str | None):
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  where = f" --data_dir={shlex.quote(data_dir)}" if data_dir else ""
  if not manual_dir:
    raise errors.ConfigError(
      f"{name} is not prepared in {builder.data_dir} (config.data.tfds_data_dir="
      f"{data_dir or ''!r}). Prepare it once: `python -m edsr_jax.tfds_data --name={name}"
      f"{where}` downloads {_archive_size(builder)}; offline, add --manual_dir (or set "
      f"config.data.tfds_manual_dir) to a folder holding {', '.join(archive_names(builder))}"
    )
  if jax.process_count() > 1:  # several hosts would write the same files at once
    raise errors.ConfigError(
      f"{name} is not prepared in {builder.data_dir}; prepare it before a "
      f"multi-process run: python -m edsr_jax.tfds_data --name={name}{where} "
      f"--manual_dir={shlex.quote(manual_dir)}"
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
      "lr_header": tf.strings.substr(example["lr"], 0, 25),
      "lr": tf.io.decode_image(example["lr"], channels=3, expand_animations=False),
    }
    if decode_hr:
      out["hr"] = tf.io.decode_image(example["hr"], channels=3, expand_animations=False)
    return out

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
  for i, ex in enumerate(tfds.as_numpy(ds)):
    # TF's decoder would narrow 16-bit PNGs to 8 bits; image_io's rule refuses them.
    for what, header in (("HR", ex["hr_file"][:25]), ("LR", ex["lr_header"])):
      image_io.check_8_bit_png(header, f"{builder.info.full_name} {split} example {i} {what}")
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
  names = tfds_names(name, scales)
  if split not in _SPLITS:
    raise ValueError(f"split {split!r}: allowed {sorted(_SPLITS)}")
  split = _SPLITS[split]
  keys, hrs, lrs = None, None, {}
  for scale, ds_name in names.items():
    builder = _ready_builder(ds_name, data_dir, manual_dir)
    if keys is None:  # the first config fixes the images, their order and the HR copy
      rows = list(_examples(builder, split, True, max_images))
      if not rows:
        raise errors.ConfigError(f"{ds_name} has no {split} images in {builder.data_dir}")
      keys, hrs = [k for k, _, _ in rows], [hr for _, hr, _ in rows]
      lr = [lr for _, _, lr in rows]
    else:  # other scales: the same HR files, stored in another order
      found = {k: lr for k, _, lr in _examples(builder, split, False, None)}
      missing = [i for i, k in enumerate(keys) if k not in found]
      extra = len(found) - (len(keys) - len(missing))
      if missing or (max_images is None and extra):
        raise errors.ConfigError(
          f"{ds_name} {split} does not hold the same HR images as {names[scales[0]]}: "
          f"{len(missing)} of {len(keys)} missing, {extra} others; prepare both configs "
          "from the same DIV2K HR archives"
        )
      lr = [found[k] for k in keys]
    for i, (hr, lr_i) in enumerate(zip(hrs, lr, strict=True)):
      want = (hr.shape[0] // scale, hr.shape[1] // scale)
      if lr_i.shape[:2] != want:
        raise errors.ConfigError(
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


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module defines no flags.
  flags.DEFINE_list(
    "name", ["div2k/bicubic_x2"], "div2k configs, e.g. div2k/bicubic_x2,div2k/bicubic_x3"
  )
  cli.DEFINE_path("data_dir", None, "TFDS data dir (default: TFDS's own).")
  cli.DEFINE_path(
    "manual_dir", None, "Folder with the official DIV2K zips; without it they are downloaded."
  )


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in flags.FLAGS.name:
    m = _TFDS_NAME.fullmatch(name)
    if not m or m["kind"] not in TFDS_KINDS or m["scale"] not in ("2", "3", "4"):
      raise errors.UserError(
        f"--name={name} is not a div2k config: allowed div2k/<kind>_x<s> with kind one of "
        f"{', '.join(TFDS_KINDS)} and s one of 2, 3, 4, e.g. div2k/bicubic_x2 (a list: "
        "--name=div2k/bicubic_x2,div2k/bicubic_x3)"
      )
    builder = prepare(name, flags.FLAGS.data_dir, flags.FLAGS.manual_dir, names=CLI_FLAGS)
    splits = builder.info.splits
    print(
      f"{name}: prepared in {builder.data_dir} ({splits['train'].num_examples} train, "
      f"{splits['validation'].num_examples} validation images)"
    )


def run() -> None:
  """`edsr-tfds-data` (a console script, pyproject.toml) = `python -m edsr_jax.tfds_data`."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
