r"""The Python side of benchmarks/gpu_check.sh (benchmarks/README.md, "GPU check").

The script calls one subcommand per step; each prints what it found and, where the
summary needs it, writes JSON. Nothing imports JAX at module level: the data and wheel
steps run without it, and each JAX step decides itself which devices it touches.

  tree-size                 bytes of the files a device call copies (tracked + untracked,
                            not ignored)
  wheels NAME...            downloads the pinned wheels (requirements.lock) plus what they
                            need that the GPU image lacks, into --dest
  stage-data                copies the data the GPU run needs, shrunk losslessly (verified)
  smoke-source DIR          a tiny stand-in for the shared data, from scikit-image's photos
  install                   installs the carried wheels to --site and checks that our code
                            runs with them; falls back to the image's flax/optax/orbax
  imports                   that check (a tiny train step, a checkpoint round trip, the
                            shipped weights)
  machine                   versions and devices
  peak DTYPE                the dense peak TFLOP/s of this GPU for DTYPE ('' if unknown)
  checks                    two identical training runs give identical losses; tiled
                            inference equals untiled inference
  train-plan                training flags for a wall-clock budget
  train-run                 runs the trainer, SIGTERM at the budget (it saves, exits 75)
  summary                   summary.md and results.json from everything above
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import harness  # benchmarks/, the folder of this script

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIB = 1 << 20

# What the GPU image's python3 (/opt/torch/.venv, Python 3.12) has, as its owners list it.
# A requirement of a carried wheel that is neither here nor carried fails --prepare.
IMAGE_PACKAGES = """
absl-py aiofiles chex etils flax humanize jax jaxlib jax-cuda13-plugin
ml-dtypes msgpack numpy optax orbax-checkpoint protobuf pyyaml rich simplejson tensorstore
typing-extensions treescope toolz torch scikit-image pillow scipy tensorboard
""".split()
# Where the requirements' environment markers are evaluated: the GPU image.
IMAGE_MARKERS = {
  "python_version": "3.12",
  "python_full_version": "3.12.0",
  "sys_platform": "linux",
  "platform_system": "Linux",
  "platform_machine": "x86_64",
  "os_name": "posix",
  "implementation_name": "cpython",
  "platform_python_implementation": "CPython",
  "extra": "",
}
PIP_DOWNLOAD = [
  "download",
  "--no-deps",
  "--only-binary=:all:",
  "--python-version",
  "3.12",
  "--implementation",
  "cp",
  "--platform",
  "manylinux_2_28_x86_64",
  "--platform",
  "manylinux_2_17_x86_64",
  "--platform",
  "manylinux2014_x86_64",
]

# Published x2 Y-PSNR / SSIM (border 2) next to which the trained model is shown.
VDSR_X2 = {"Set5": (37.53, 0.9587), "Set14": (33.03, 0.9124), "B100": (31.90, 0.8960)}
# configs/edsr_291.py, x2: 16 blocks x 32 features, 12,000 steps on this project's CPU.
EDSR_291_CPU_X2 = {"Set5": (37.56, 0.9592), "Set14": (33.11, 0.9133), "B100": (31.90, 0.8960)}
DATASETS = ("Set5", "Set14", "B100")
TRAIN_SETS = ("T91", "BSD200")
# Dense peaks (TFLOP/s) by GPU name: (bfloat16, TF32). MFU of float32 rows is against
# TF32: JAX's default precision and PyTorch with allow_tf32 run float32 convolutions there.
PEAKS = (
  ("H200 NVL", (835.0, 418.0)),
  ("H100 NVL", (835.0, 418.0)),
  ("H100 PCIe", (756.0, 378.0)),
  ("H100", (989.0, 495.0)),  # SXM (nvidia-smi: "NVIDIA H100 80GB HBM3")
  ("H200", (989.0, 495.0)),  # SXM
  ("A100", (312.0, 156.0)),
)


def fallback_warning_pattern() -> re.Pattern:
  """The trainer's warning that it writes TensorBoard events without CLU / TensorFlow."""
  try:
    from edsr_jax.summaries import FALLBACK_WARNING

    return re.compile(re.escape(FALLBACK_WARNING.split("{", 1)[0].strip()) + r"[^\n]*")
  except ImportError:
    return re.compile(r"(CLU|TensorFlow)[^\n]*(cannot be imported|not installed)[^\n]*")


def normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def write_json(path, value) -> None:
  if path:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(value, indent=2, default=str) + "\n")


def read_json(path, default=None):
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return default


# ------------------------------------------------------------------ --prepare: sizes, wheels


def cmd_tree_size(args) -> None:
  """Bytes of what a device call copies besides the carried paths."""
  out = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd=args.repo,
    capture_output=True,
    check=True,
  ).stdout
  total = 0
  for name in out.decode().split("\0"):
    path = pathlib.Path(args.repo, name)
    if name and path.is_file() and not path.is_symlink():
      total += path.stat().st_size
  print(total)


def read_lock(path) -> dict[str, str]:
  pins = {}
  for line in pathlib.Path(path).read_text().splitlines():
    m = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
    if m:
      pins[normalize(m[1])] = m[2]
  return pins


def wheel_requirements(wheel: pathlib.Path) -> list[str]:
  """The Requires-Dist names of a wheel that apply on the GPU image (no extras)."""
  from packaging.requirements import Requirement

  with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
  names = []
  for line in text.splitlines():
    if not line.startswith("Requires-Dist:"):
      continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is None or req.marker.evaluate(dict(IMAGE_MARKERS)):
      names.append(req.name)
  return names


def cmd_wheels(args) -> None:
  """Downloads NAME==pin for each name, then each requirement the image lacks, likewise."""
  pins = read_lock(args.lock)
  image = {normalize(n) for n in IMAGE_PACKAGES}
  wanted = {normalize(n) for n in args.names}
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="wheels.", dir=pathlib.Path(args.dest).parent))
  carried, todo, missing = {}, [(n, "pinned in requirements.lock") for n in args.names], []
  try:
    while todo:
      name, why = todo.pop(0)
      key = normalize(name)
      if key in carried:
        continue
      if key not in pins:
        missing.append(f"{name} ({why}) has no pin in {args.lock}")
        continue
      before = set(tmp.iterdir())
      subprocess.run(
        [sys.executable, "-m", "pip", *PIP_DOWNLOAD, "-q", "-d", str(tmp), f"{name}=={pins[key]}"],
        check=True,
      )
      new = sorted(set(tmp.iterdir()) - before)
      wheel = new[0] if new else next(tmp.glob(f"{key.replace('-', '_')}-*.whl"))
      carried[key] = {"version": pins[key], "file": wheel.name, "why": why}
      for req in wheel_requirements(wheel):
        if normalize(req) not in image and normalize(req) not in wanted:
          todo.append((req, f"{name} requires it and the GPU image lacks it"))
    if missing:
      raise SystemExit("gpu_check: cannot carry: " + "; ".join(missing))
    write_json(tmp / "CARRIED.json", carried)
    dest = pathlib.Path(args.dest)
    if dest.exists():
      shutil.rmtree(dest)
    tmp.rename(dest)
    dest.chmod(0o755)  # mkdtemp made it private; whoever runs the GPU side must read it
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  for info in carried.values():
    print(f"  {info['file']:<58} {info['why']}")


# ------------------------------------------------------------------ --prepare: data

LOSSLESS = (".png", ".bmp", ".ppm", ".tif", ".tiff")


def _encode_webp(job: tuple[str, str]) -> tuple[str, int]:
  """Writes src as lossless WebP at dst; verifies that the pixels read back are equal."""
  import numpy as np
  from PIL import Image

  from edsr_jax import image_io

  src, dst = job
  want = image_io.read_rgb(src)
  tmp = dst + ".tmp.webp"
  with Image.open(src) as image:
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    image.save(tmp, "WEBP", lossless=True, quality=100, method=4)
  if not np.array_equal(image_io.read_rgb(tmp), want):
    os.unlink(tmp)
    raise SystemExit(f"gpu_check: lossless WebP of {src} does not read back equal")
  os.replace(tmp, dst)
  return dst, os.path.getsize(dst)


def _lr_reproduced(job: tuple[str, str, int]) -> bool:
  """Whether our MATLAB-compatible bicubic makes exactly the given LR file from HR."""
  import numpy as np

  from edsr_jax import data, image_io

  hr, lr, scale = job
  return bool(np.array_equal(data.bicubic_lr(image_io.read_rgb(hr), scale), image_io.read_rgb(lr)))


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  from edsr_jax import image_io

  return sorted(
    p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in image_io.IMAGE_EXTENSIONS
  )


def _folder_bytes(folder: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def cmd_stage_data(args) -> None:
  """The GPU run's data, made small without changing a pixel.

  Every step keeps what the project's loaders read exactly as it was: JPEGs are copied
  as they are; BMP / PNG become lossless WebP (`image_io.read_rgb` reads .webp; each file
  is decoded back and compared); a benchmark set's LR_bicubic/X2 files are left out when
  `data.bicubic_lr` (MATLAB-compatible, what the loaders compute when LR files are absent)
  reproduces every one of them bit for bit. If all that is still over --budget, B100 is
  left out. Re-running reuses files already staged from unchanged sources.
  """
  sys.path.insert(0, str(ROOT))
  src, dst = pathlib.Path(args.src), pathlib.Path(args.dst)
  dst.mkdir(parents=True, exist_ok=True)
  manifest_path = dst / "STAGED.json"
  old = read_json(manifest_path, {}).get("files", {})
  files, jobs, lr_checks, sets = {}, [], [], {}
  keep = set()

  def plan(source: pathlib.Path, target_dir: pathlib.Path) -> None:
    suffix = source.suffix.lower()
    target = target_dir / (source.stem + (".webp" if suffix in LOSSLESS else suffix))
    keep.add(target)
    stamp = [source.stat().st_size, source.stat().st_mtime_ns]
    files[str(target.relative_to(dst))] = {"source": str(source), "stamp": stamp}
    prev = old.get(str(target.relative_to(dst)))
    if target.exists() and prev and prev.get("stamp") == stamp:
      return  # staged before from the same file
    target_dir.mkdir(parents=True, exist_ok=True)
    if suffix in LOSSLESS:
      jobs.append((str(source), str(target)))
    else:
      shutil.copyfile(source, target)

  for name in TRAIN_SETS:
    folder = src / "train" / name
    if not folder.is_dir():
      raise SystemExit(f"gpu_check: no folder {folder}")
    for f in _image_files(folder):
      plan(f, dst / "train" / name)
    sets[f"train/{name}"] = {"images": len(_image_files(folder))}
  for name in DATASETS:
    hr_dir = src / "benchmark" / name / "HR"
    lr_dir = src / "benchmark" / name / "LR_bicubic" / "X2"
    if not hr_dir.is_dir():
      raise SystemExit(f"gpu_check: no folder {hr_dir}")
    hrs = _image_files(hr_dir)
    for f in hrs:
      plan(f, dst / "benchmark" / name / "HR")
    lr_files = [lr_dir / f"{f.stem}x2{f.suffix}" for f in hrs]
    if not all(p.is_file() for p in lr_files):
      raise SystemExit(f"gpu_check: {lr_dir} lacks LR files of {name}")
    lr_checks.append((name, [(str(h), str(lr), 2) for h, lr in zip(hrs, lr_files, strict=True)]))
    sets[f"benchmark/{name}"] = {"images": len(hrs)}

  workers = max(1, min(16, os.cpu_count() or 1))
  with concurrent.futures.ProcessPoolExecutor(workers) as pool:
    for name, checks in lr_checks:
      reproduced = all(pool.map(_lr_reproduced, checks, chunksize=4))
      sets[f"benchmark/{name}"]["lr_x2"] = (
        "left out: data.bicubic_lr reproduces every file exactly" if reproduced else "kept"
      )
      if not reproduced:
        for _, lr, _ in checks:
          plan(pathlib.Path(lr), dst / "benchmark" / name / "LR_bicubic" / "X2")
    if jobs:
      print(f"  encoding {len(jobs)} images as lossless WebP ({workers} processes)", flush=True)
      list(pool.map(_encode_webp, jobs, chunksize=4))

  for path in sorted(dst.rglob("*"), reverse=True):  # anything not planned: stale
    if path.is_file() and path != manifest_path and path not in keep:
      path.unlink()
    elif path.is_dir() and not any(path.iterdir()):
      path.rmdir()
  for key in sets:
    folder = dst / key
    sets[key]["bytes"] = _folder_bytes(folder)
    sets[key]["source_bytes"] = (
      _folder_bytes(src / key)
      if "benchmark" not in key
      else sum(_folder_bytes(src / key / sub) for sub in ("HR", "LR_bicubic/X2"))
    )
  dropped = []
  if args.budget is not None and sum(s["bytes"] for s in sets.values()) > args.budget:
    shutil.rmtree(dst / "benchmark" / "B100")
    dropped.append("B100")
    sets["benchmark/B100"]["left_out"] = "over the size budget"
    sets["benchmark/B100"]["bytes"] = 0
    files = {k: v for k, v in files.items() if not k.startswith("benchmark/B100/")}
  write_json(manifest_path, {"sets": sets, "dropped": dropped, "files": files})
  for key, info in sets.items():
    note = info.get("lr_x2", "") + (f" LEFT OUT: {info['left_out']}" if "left_out" in info else "")
    print(
      f"  {key:<18} {info['images']:>4} images  {info['source_bytes'] / MIB:6.2f} MiB -> "
      f"{info['bytes'] / MIB:6.2f} MiB  {note}"
    )
  print(f"  data total: {_folder_bytes(dst) / MIB:.2f} MiB")


def cmd_smoke_source(args) -> None:
  """A tiny stand-in for the shared data (same layout), from scikit-image's photos.

  T91 as BMP, BSD200 as JPEG, Set5 / Set14 / B100 with HR PNGs (Set14 with a greyscale
  one) and LR_bicubic/X2 files: Set5's and Set14's made by `data.bicubic_lr` (so staging
  leaves them out), B100's by Pillow's bicubic (so staging keeps them, as WebP).
  """
  import numpy as np
  import skimage.data
  from PIL import Image

  sys.path.insert(0, str(ROOT))
  from edsr_jax import data

  out = pathlib.Path(args.dir)
  photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
  grey = skimage.data.camera()

  def crop(image, i, h=56, w=72):
    y, x = 40 + 37 * i, 60 + 53 * i
    return np.ascontiguousarray(image[y : y + h, x : x + w])

  def save(image, path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)

  for i in range(3):
    save(crop(photos[i], i, 96, 96), out / "train" / "T91" / f"t{i + 1}.bmp")
    save(crop(photos[(i + 1) % 3], i + 3, 96, 80), out / "train" / "BSD200" / f"{i + 1}.jpg")
  for k, name in enumerate(DATASETS):
    for i in range(2):
      stem = f"{name.lower()}_{i}"
      hr = crop(grey, i + k, 46, 60) if (name == "Set14" and i == 1) else crop(photos[i], i + k)
      save(hr, out / "benchmark" / name / "HR" / f"{stem}.png")
      rgb = np.repeat(hr[..., None], 3, -1) if hr.ndim == 2 else hr
      if name == "B100":
        lr = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2), 3))
      else:
        lr = data.bicubic_lr(rgb, 2)
      save(lr, out / "benchmark" / name / "LR_bicubic" / "X2" / f"{stem}x2.png")
  print(f"  smoke data source in {out}")


def cmd_smoke_data(args) -> None:
  """--smoke's data: the stand-in source, staged as --prepare stages the real data."""
  work = pathlib.Path(args.dir)
  cmd_smoke_source(argparse.Namespace(dir=str(work / "smoke_source")))
  cmd_stage_data(
    argparse.Namespace(src=str(work / "smoke_source"), dst=str(work / "data"), budget=None)
  )


# ------------------------------------------------------------------ on the machine: setup


def _unzip_wheel(wheel: pathlib.Path, site: pathlib.Path) -> None:
  """What `pip install --no-deps --target` does for a plain wheel (no pip needed)."""
  with zipfile.ZipFile(wheel) as z:
    for member in z.namelist():
      parts = pathlib.PurePosixPath(member).parts
      if member.endswith("/"):
        continue
      if parts[0].endswith(".data"):  # name-version.data/purelib|platlib/... (scripts: no)
        if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
          continue
        parts = parts[2:]
      target = site.joinpath(*parts)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(z.read(member))


def _install(wheels: list[pathlib.Path], site: pathlib.Path) -> str:
  if site.exists():
    shutil.rmtree(site)
  site.mkdir(parents=True)
  cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
  cmd += ["--no-cache-dir", "--target", str(site), *map(str, wheels)]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode == 0:
    return "pip install --target"
  print(f"  pip install failed ({result.stderr.strip()[-300:]}); unpacking the wheels instead")
  for wheel in wheels:
    _unzip_wheel(wheel, site)
  return "unpacked"


def _run_imports(json_path: str, env: dict, label: str) -> dict:
  cmd = [sys.executable, __file__, "imports", "--json", json_path, "--label", label]
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  sys.stdout.write(result.stdout)
  sys.stdout.write(result.stderr[-4000:] if result.returncode else "")
  out = read_json(json_path, {})
  out["returncode"] = result.returncode
  return out


def cmd_install(args) -> None:
  """Installs the carried wheels to --site, checks our code with them; if that fails,
  installs ml_collections alone and uses the image's flax / optax / orbax instead."""
  wheels_dir, site = pathlib.Path(args.wheels), pathlib.Path(args.site)
  wheels = sorted(wheels_dir.glob("*.whl"))
  if not wheels:
    raise SystemExit(f"gpu_check: no wheels in {wheels_dir}: run --prepare and carry .gpu_check")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
  how = _install(wheels, site)
  print(f"  installed {len(wheels)} wheels to {site} ({how}): {', '.join(w.name for w in wheels)}")
  result = _run_imports(args.json, env, "carried")
  result.update(wheels=[w.name for w in wheels], fallback=False, install=how)
  if result["returncode"] != 0:
    print("  FAIL with the carried wheels: falling back to the image's flax / optax / orbax")
    only = [w for w in wheels if normalize(w.name.split("-")[0]) == "ml-collections"]
    how = _install(only, site)
    first = result
    result = _run_imports(args.json, env, "image")
    result.update(
      wheels=[w.name for w in only], fallback=True, install=how, carried_failure=first.get("error")
    )
  write_json(args.json, result)
  if result["returncode"] != 0:
    raise SystemExit("gpu_check: our code does not run with the carried or the image's packages")


def _versions() -> dict:
  from importlib import metadata

  out = {}
  for dist in (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "ml_collections",
    "chex",
    "etils",
    "tensorstore",
    "numpy",
    "scipy",
    "scikit-image",
    "pillow",
    "tensorboard",
    "torch",
    "clu",
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-datasets",
  ):
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      pass
  return out


def cmd_imports(args) -> None:
  """Our code with the packages on sys.path: a train step, a checkpoint written and read
  back, the shipped x2 weights upscaling an image."""
  result = {"label": args.label, "python": sys.version.split()[0]}
  try:
    import flax
    import jax
    import ml_collections
    import numpy as np
    import optax
    import orbax.checkpoint

    from edsr_jax import config_lib, data, export, inference, train

    result["versions"] = _versions()
    result["paths"] = {
      m.__name__: str(pathlib.Path(m.__file__).parent)
      for m in (flax, optax, orbax.checkpoint, ml_collections, jax)
    }
    config = config_lib.base_config()
    config.model.num_blocks, config.model.num_features = 1, 8
    config.batch_size, config.patch_size = jax.device_count(), 8
    mesh = train.make_mesh()
    model, tx = train.make_model_and_optimizer(config)
    state = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
    step = train.make_train_step(model, tx, mesh)
    rng = np.random.default_rng(0)
    b = config.batch_size
    batch = {
      "lr": rng.integers(0, 256, (b, 8, 8, 3), np.uint8),
      "hr": rng.integers(0, 256, (b, 16, 16, 3), np.uint8),
    }
    batch = {k: jax.device_put(v, train.batch_sharding(mesh)) for k, v in batch.items()}
    state, metrics = step(state, batch, scale=2)
    result["loss"] = float(metrics["loss"])
    with tempfile.TemporaryDirectory() as tmp:
      export.write_workdir(f"{tmp}/run", state, config, replace=False)
      restored = inference.load(f"{tmp}/run")
      same = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
        jax.device_get(state.params),
        jax.device_get(restored.params),
      )
      if not all(jax.tree.leaves(same)):
        raise RuntimeError("a checkpoint read back differs from what was written")
    result["checkpoint_round_trip"] = "ok"
    shipped = ROOT / "pretrained" / "edsr_291_x2"
    if shipped.exists():
      upscaler = inference.load(shipped)
      image = data.load_demo(["chelsea"], [2]).hr[0][:40, :48]
      out = upscaler.upscale(image)
      result["shipped_weights"] = (
        f"ok: {shipped.name} upscaled 48x40 to {out.shape[1]}x{out.shape[0]}"
      )
    result["devices"] = [str(d) for d in jax.devices()]
    print(
      f"  imports ({args.label}): OK with flax {result['versions'].get('flax')}, optax "
      f"{result['versions'].get('optax')}, orbax-checkpoint "
      f"{result['versions'].get('orbax-checkpoint')}, ml_collections "
      f"{result['versions'].get('ml_collections')} on JAX {jax.__version__}: a train step, "
      "a checkpoint round trip" + (", the shipped x2 weights" if shipped.exists() else "")
    )
  except Exception as e:  # anything: the caller falls back and records why
    import traceback

    result["error"] = f"{type(e).__name__}: {e}"
    write_json(args.json, result)
    print(f"  imports ({args.label}): FAIL: {result['error']}", file=sys.stderr)
    traceback.print_exc(limit=-4)  # into the log: what broke
    raise SystemExit(1) from None
  write_json(args.json, result)


def _try_import(name: str) -> str:
  try:
    __import__(name)
  except ImportError as e:
    return f"not importable ({type(e).__name__}: {str(e)[:120]})"
  except Exception as e:  # a broken install is also "not usable"
    return f"not importable ({type(e).__name__}: {str(e)[:120]})"
  return "importable"


def cmd_machine(args) -> None:
  import jax

  result = {
    "python": sys.version.split()[0],
    "executable": sys.executable,
    "host": platform.node(),
    "cpu": harness.cpu_model(),
    "cpus": os.cpu_count(),
    "versions": _versions(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "device_kind": jax.devices()[0].device_kind,
  }
  try:
    from PIL import features

    result["pillow_webp"] = bool(features.check("webp"))
  except Exception:
    result["pillow_webp"] = False
  for name in ("tensorflow", "tensorflow_datasets", "clu.metric_writers"):
    result[f"import {name}"] = _try_import(name)
  try:
    import torch

    result["torch"] = torch.__version__
    result["torch_cuda"] = torch.version.cuda
    result["torch_cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
      result["torch_device"] = torch.cuda.get_device_name(0)
      result["cudnn"] = torch.backends.cudnn.version()
  except ImportError:
    result["torch"] = None
  gpu = _nvidia_smi()
  result.update(gpu)
  name = result.get("gpu_name") or result["device_kind"]
  result["peak_tflops"] = dict(
    zip(("bfloat16", "float32"), peaks_for(name) or (None, None), strict=True)
  )
  write_json(args.json, result)
  for key, value in result.items():
    print(f"  {key}: {value}")


def _nvidia_smi() -> dict:
  if not shutil.which("nvidia-smi"):
    return {}
  full = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
  print(full.stdout + full.stderr)
  query = "name,driver_version,memory.total,power.limit,clocks.max.sm,compute_cap"
  result = subprocess.run(
    ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
    capture_output=True,
    text=True,
  )
  if result.returncode or not result.stdout.strip():
    return {}
  fields = [f.strip() for f in result.stdout.strip().splitlines()[0].split(",")]
  keys = ["gpu_name", "driver", "gpu_memory", "power_limit", "max_sm_clock", "compute_cap"]
  out = dict(zip(keys, fields, strict=False))
  out["gpus"] = len(result.stdout.strip().splitlines())
  return out


def peaks_for(name: str) -> tuple[float, float] | None:
  for key, peaks in PEAKS:
    if key in (name or ""):
      return peaks
  return None


def cmd_peak(args) -> None:
  machine = read_json(args.machine, {})
  value = (machine.get("peak_tflops") or {}).get(args.dtype)
  print("" if value is None else f"{value:g}")


# ------------------------------------------------------------------ checks


def _network(spec: dict):
  from edsr_jax import config_lib

  config = config_lib.base_config()
  config.model.num_blocks, config.model.num_features = spec["blocks"], spec["features"]
  config.model.scales = (spec.get("scale", 2),)
  config.batch_size, config.patch_size = spec["batch"], spec["patch"]
  return config


def det_child(spec: dict) -> dict:
  """`steps` train steps from the same seed on the same batches: losses, a digest of the
  parameters, twice in this process; optionally the loop's speed and the tiling check."""
  import jax
  import numpy as np

  from edsr_jax import data, train

  config = _network(spec)
  mesh = train.make_mesh()
  model, tx = train.make_model_and_optimizer(config)
  step_fn = train.make_train_step(model, tx, mesh)
  sharding = train.batch_sharding(mesh)
  b, p = config.batch_size, config.patch_size

  def batch(i):
    rng = np.random.default_rng([7, i])
    return {
      "lr": jax.device_put(rng.integers(0, 256, (b, p, p, 3), np.uint8), sharding),
      "hr": jax.device_put(rng.integers(0, 256, (b, 2 * p, 2 * p, 3), np.uint8), sharding),
    }

  def run():
    state = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
    losses = []
    for i in range(spec["steps"]):
      state, metrics = step_fn(state, batch(i), scale=2)
      losses.append(metrics["loss"])
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(state.params)):
      digest.update(np.ascontiguousarray(leaf).tobytes())
    return [float(x).hex() for x in jax.device_get(losses)], digest.hexdigest()[:16]

  losses, digest = run()
  again, digest_again = run()
  out = {
    "losses": losses,
    "digest": digest,
    "in_process_repeat_identical": losses == again and digest == digest_again,
    "platform": jax.devices()[0].platform,
    "device": jax.devices()[0].device_kind,
    "jax": jax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if spec.get("rate_steps"):
    # The trainer's loop (sampler -> prefetch -> step, no logging) on random images: the
    # steps/s that the training section plans its schedule with.
    rng = np.random.default_rng(1)
    hrs = [rng.integers(0, 256, (160, 240, 3), np.uint8) for _ in range(24)]
    images = data.SRImages([f"r{i}" for i in range(24)], hrs, {2: [h[::2, ::2] for h in hrs]})
    sampler = data.PatchSampler(images, scales=[2], patch_size=p, global_batch=b, seed=0)
    state = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
    n = spec["rate_steps"]
    batches = data.prefetch_batches(sampler, range(n + 5), [2], sharding, 2)
    for k, (_, scale, bt) in enumerate(batches):
      if k == 5:
        jax.block_until_ready(state)
        start = time.perf_counter()
      state, _ = step_fn(state, bt, scale=scale)
    jax.block_until_ready(state)
    out["loop_steps_per_sec"] = n / (time.perf_counter() - start)
  if spec.get("tiled"):
    out["tiled"] = [tiled_check(**t) for t in spec["tiled"]]
  return out


def tiled_check(blocks: int, features: int, scale: int, h: int, w: int, tile: int) -> dict:
  """Tiled against untiled inference of one random network (non-zero biases) on a random
  image: float32 outputs bitwise, and the uint8 images."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from edsr_jax import config_lib, inference, models

  config = config_lib.base_config()
  config.model.num_blocks, config.model.num_features = blocks, features
  config.model.scales = (scale,)
  model = models.create_model(config.model)
  params = model.init(jax.random.key(scale), jnp.zeros((1, 8, 8, 3)), scale)["params"]
  rng = np.random.default_rng(scale)
  params = jax.tree.map(
    lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32) if x.ndim == 1 else x, params
  )
  upscaler = inference.Upscaler(config, params)
  lr = rng.integers(0, 256, (h, w, 3), np.uint8)
  whole = upscaler.upscale_float(lr, scale, tile_size=0)
  tiled = upscaler.upscale_float(lr, scale, tile_size=tile)
  plan = upscaler.plan(lr.shape, scale, tile_size=tile)
  diff = np.abs(tiled.astype(np.float64) - whole.astype(np.float64))
  u_whole = upscaler.upscale(lr, scale, tile_size=0)
  u_tiled = upscaler.upscale(lr, scale, tile_size=tile)
  return {
    "network": f"{blocks}x{features}",
    "scale": scale,
    "image": f"{w}x{h}",
    "tile": tile,
    "tiles": plan.num_tiles,
    "calls": len(plan.calls),
    "float_identical": bool(np.array_equal(tiled, whole)),
    "float_max_abs_diff": float(diff.max()),
    "float_differ_fraction": float((diff > 0).mean()),
    "uint8_identical": bool(np.array_equal(u_tiled, u_whole)),
    "uint8_max_abs_diff": int(np.abs(u_tiled.astype(int) - u_whole.astype(int)).max()),
  }


def _spawn_child(spec: dict, env: dict) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, __file__, "det-child", json.dumps(spec)],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _collect(proc: subprocess.Popen) -> dict:
  out, err = proc.communicate()
  lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode or not lines:
    sys.stderr.write(err[-4000:])
    return {"error": f"exit {proc.returncode}: " + " | ".join(err.strip().splitlines()[-2:])}
  return json.loads(lines[-1][len("RESULT ") :])


def _pair(spec: dict, env: dict, sequential: bool = False) -> tuple[dict, dict]:
  """The two runs, side by side (no memory preallocation: they share the device), or one
  after the other (--sequential: on a CPU of two cores side by side gains nothing)."""
  env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  a = _spawn_child(spec, env)
  if sequential:
    a = _collect(a)
  b = _spawn_child({k: v for k, v in spec.items() if k not in ("rate_steps", "tiled")}, env)
  return (a if sequential else _collect(a)), _collect(b)


def cmd_checks(args) -> None:
  blocks, features = (int(v) for v in args.network.split("x"))
  spec = {
    "blocks": blocks,
    "features": features,
    "batch": args.batch,
    "patch": args.patch,
    "steps": args.steps,
    "rate_steps": args.rate_steps,
    "tiled": [
      dict(blocks=blocks, features=features, scale=s, h=h, w=w, tile=t)
      for s, h, w, t in ((2, *args.tiled_x2), (4, *args.tiled_x4))
      if t > 0
    ],
  }
  result = {"spec": spec}
  a, b = _pair(spec, dict(os.environ), args.sequential)
  result["runs"] = [a, b]
  ok = "error" not in a and "error" not in b
  same = ok and a["losses"] == b["losses"] and a["digest"] == b["digest"]
  result["determinism"] = "PASS" if same else "FAIL"
  lines = []
  if ok:
    lines.append(
      f"determinism: {result['determinism']}: two training runs in separate processes, "
      f"{args.steps} steps of EDSR {args.network} (batch {args.batch}, patch {args.patch}): "
      + (
        "identical losses and parameters"
        if same
        else f"losses {a['losses'][-1]} vs {b['losses'][-1]} at the last step; parameter "
        f"digests {a['digest']} vs {b['digest']}"
      )
      + f" [JAX {a['jax']}, {a['device']}]"
    )
    lines.append(
      "determinism within one process (the same compiled step run twice): "
      + (
        "PASS" if a["in_process_repeat_identical"] and b["in_process_repeat_identical"] else "FAIL"
      )
    )
  else:
    lines.append(f"determinism: FAIL: {a.get('error') or b.get('error')}")
  if ok and not same and a["platform"] == "gpu":
    flag = "--xla_gpu_deterministic_ops=true"
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
    c, d = _pair({k: v for k, v in spec.items() if k not in ("rate_steps", "tiled")}, env)
    again = "error" not in c and "error" not in d and c["losses"] == d["losses"]
    again = again and c["digest"] == d["digest"]
    result["determinism_with_flag"] = {"flag": flag, "result": "PASS" if again else "FAIL"}
    lines.append(f"determinism with XLA_FLAGS={flag}: {'PASS' if again else 'FAIL'}")
  if "loop_steps_per_sec" in a:
    result["loop_steps_per_sec"] = a["loop_steps_per_sec"]
    lines.append(
      f"training loop speed (sampler + prefetch + step, random images): "
      f"{a['loop_steps_per_sec']:.1f} steps/s [JAX {a['jax']}]"
    )
  tiled_ok = True
  for t in a.get("tiled", []):
    tiled_ok &= t["float_identical"] and t["uint8_identical"]
    lines.append(
      f"tiled == untiled, x{t['scale']} EDSR {t['network']}, {t['image']} LR, tile {t['tile']} "
      f"({t['tiles']} tiles, {t['calls']} calls): float32 bitwise "
      f"{'PASS' if t['float_identical'] else 'FAIL'} (max |diff| {t['float_max_abs_diff']:.3g}, "
      f"{100 * t['float_differ_fraction']:.3f}% of values), uint8 "
      f"{'PASS' if t['uint8_identical'] else 'FAIL'} (max |diff| {t['uint8_max_abs_diff']})"
      f" [JAX {a['jax']}]"
    )
  if not a.get("tiled"):
    tiled_ok = False
    lines.append("tiled == untiled: FAIL: not run")
  result["tiled"] = "PASS" if tiled_ok else "FAIL"
  result["lines"] = lines
  write_json(args.json, result)
  print("\n".join("  " + line for line in lines))
  if not (same and tiled_ok):
    raise SystemExit(1)


# ------------------------------------------------------------------ training


def cmd_train_plan(args) -> None:
  """Flags for a run that should end on its own within the budget (one per line)."""
  checks = read_json(args.checks, {})
  rate = checks.get("loop_steps_per_sec")
  if args.steps:
    steps = args.steps
  elif rate:
    # Loading the 291 images, compiling and four validations come off the budget.
    steps = int(rate * max(30.0, args.budget - args.overhead) * 0.85) // 100 * 100
    steps = max(steps, 200)
  else:
    steps = args.default_steps
  quarter = max(1, steps // 4)
  flags = [
    f"--config.num_train_steps={steps}",
    f"--config.lr_decay_steps={quarter}",
    f"--config.eval_every_steps={quarter}",
    f"--config.checkpoint_every_steps={quarter}",
    f"--config.log_every_steps={max(1, min(1000, steps // 50))}",
  ]
  write_json(args.json, {"steps": steps, "rate": rate, "budget_s": args.budget})
  print("\n".join(flags))


def cmd_train_run(args) -> None:
  """Runs the trainer (the command after --); SIGTERM once the budget is spent (or once
  checkpoint --stop_at_checkpoint exists), but only after the run wrote config.json
  (its signal handlers are about to be installed then); SIGKILL 60 s later."""
  workdir = pathlib.Path(args.workdir)
  start = time.monotonic()
  proc = subprocess.Popen(args.cmd, cwd=ROOT)
  signalled = killed = None
  reason = ""
  while proc.poll() is None:
    time.sleep(0.2)
    now = time.monotonic() - start
    started = (workdir / "config.json").exists()
    if signalled is None:
      stop = (
        args.stop_at_checkpoint
        and (workdir / "checkpoints" / str(args.stop_at_checkpoint)).is_dir()
      )
      if started and (now >= args.budget or stop):
        time.sleep(0 if now >= args.budget else 0.5)
        proc.send_signal(signal.SIGTERM)
        signalled = now
        reason = "wall budget" if now >= args.budget else f"checkpoint {args.stop_at_checkpoint}"
        print(f"gpu_check: SIGTERM to the trainer after {now:.0f} s ({reason})", flush=True)
      elif now >= args.budget + 60:
        proc.kill()
        killed = now
    elif now - signalled > 60 and killed is None:
      proc.kill()
      killed = now
  wall = time.monotonic() - start
  write_json(
    args.json,
    {
      "returncode": proc.returncode,
      "wall_s": wall,
      "sigterm_at_s": signalled,
      "sigterm_reason": reason,
      "killed_at_s": killed,
      "budget_s": args.budget,
    },
  )
  # 0: finished; 75: stopped by the signal after saving (the trainer's contract).
  raise SystemExit(0 if proc.returncode in (0, 75) else proc.returncode or 1)


def _scalars(workdir: pathlib.Path) -> dict[str, dict[int, float]]:
  try:
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util
  except ImportError:
    return {}
  out: dict[str, dict[int, float]] = {}
  for f in sorted(workdir.glob("events.out.tfevents.*")):
    for event in event_file_loader.EventFileLoader(str(f)).Load():
      for value in event.summary.value:
        try:
          number = float(tensor_util.make_ndarray(value.tensor))
        except (TypeError, ValueError):
          continue  # images
        out.setdefault(value.tag, {})[event.step] = number
  return out


def train_report(work: pathlib.Path) -> dict:
  workdir = work / "train"
  run = read_json(work / "results" / "train_run.json", {})
  plan = read_json(work / "results" / "train_plan.json", {})
  ckpt = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []
  log = (
    (work / "logs" / "train.log").read_text(errors="replace")
    if (work / "logs" / "train.log").exists()
    else ""
  )
  scalars = _scalars(workdir)
  config = read_json(workdir / "config.json", {})
  model = config.get("model", {})
  report = {
    "network": f"{model.get('num_blocks', '?')}x{model.get('num_features', '?')}",
    "batch": config.get("batch_size"),
    "patch": config.get("patch_size"),
    "learning_rate": config.get("learning_rate"),
    "dtype": model.get("dtype"),
    **run,
    "planned_steps": plan.get("steps"),
    "planned_rate": plan.get("rate"),
    "checkpoints": steps,
    "steps_reached": steps[-1] if steps else None,
    "fallback_warning": (fallback_warning_pattern().search(log) or [None])[0],
    "events_files": len(list(workdir.glob("events.out.tfevents.*"))),
  }
  for tag in ("train/loss", "val/psnr", "val/ssim", "steps_per_sec"):
    if scalars.get(tag):
      last = max(scalars[tag])
      report[tag] = {"step": last, "value": scalars[tag][last]}
  if scalars.get("val/psnr"):
    report["val_curve"] = sorted(scalars["val/psnr"].items())
  return report


# ------------------------------------------------------------------ summary


def _fmt(value, spec=".3g", missing="-"):
  return missing if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines


def cmd_summary(args) -> None:
  work = pathlib.Path(args.work)
  results = work / "results"
  sections = []
  tsv = work / "sections.tsv"
  if tsv.exists():
    for line in tsv.read_text().splitlines()[1:]:
      name, status, seconds, limit, note = (line.split("\t") + [""] * 5)[:5]
      sections.append(
        {"section": name, "status": status, "seconds": seconds, "limit": limit, "note": note}
      )
  machine = read_json(results / "machine.json", {})
  imports = read_json(results / "imports.json", {})
  checks = read_json(results / "checks.json", {})
  train = train_report(work) if (work / "results" / "train_run.json").exists() else {}
  evaluation = read_json(results / "evaluate.json", {})
  jax_version = machine.get("jax") or (imports.get("versions") or {}).get("jax", "?")
  versions = machine.get("versions") or imports.get("versions") or {}
  device = machine.get("gpu_name") or machine.get("device_kind") or "?"
  tag = f"JAX {jax_version}"
  lines = [
    f"# GPU check ({args.mode}): {device}",
    "",
    f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; host {machine.get('cpu', '?')}, "
    f"{machine.get('cpus', '?')} CPUs; Python {machine.get('python', '?')}; "
    f"JAX {jax_version}, jaxlib {versions.get('jaxlib', '?')}, "
    f"flax {versions.get('flax', '?')}, optax {versions.get('optax', '?')}, "
    f"orbax-checkpoint {versions.get('orbax-checkpoint', '?')}, "
    f"ml_collections {versions.get('ml_collections', '?')}, "
    f"PyTorch {machine.get('torch') or versions.get('torch', '?')}"
    + (
      f" (CUDA {machine.get('torch_cuda')}, cuDNN {machine.get('cudnn')})"
      if machine.get("torch_cuda")
      else ""
    )
    + (f"; driver {machine['driver']}" if machine.get("driver") else "")
    + f"; wall {args.wall} s.",
  ]
  if imports:
    what = (
      "the image's flax / optax / orbax (the carried pins failed: "
      f"{imports.get('carried_failure')})"
      if imports.get("fallback")
      else "carried wheels " + ", ".join(imports.get("wheels", []))
      if imports.get("wheels")
      else "the local venv"
    )
    lines.append(f"Packages: {what}.")
  tf_state = machine.get("import tensorflow")
  if tf_state:
    lines.append(
      f"TensorFlow: {tf_state}; CLU's writers: {machine.get('import clu.metric_writers')}."
    )
  lines += ["", "## Sections", ""]
  lines += _table(
    ["section", "result", "seconds", "limit s", "note"],
    [[s["section"], s["status"], s["seconds"], s["limit"], s["note"]] for s in sections],
  )

  if checks.get("lines"):
    lines += ["", "## Exactness on this device", ""]
    lines += [f"- {line}" for line in checks["lines"]]

  peaks = machine.get("peak_tflops") or {}
  rows = []
  for path in sorted(results.glob("throughput*.json")):
    for row in read_json(path, []):
      j, t = row.get("jax") or {}, row.get("torch") or {}
      flops = j.get("flops")
      peak = peaks.get(row["dtype"])

      def tflops(side, flops=flops):
        return side.get("steps_per_sec", 0) * flops / 1e12 if flops and side else None

      jt, tt = tflops(j), tflops(t)
      rows.append(
        [
          row["network"],
          row["batch"],
          row["dtype"],
          _fmt(j.get("steps_per_sec"), ".2f"),
          _fmt(t.get("steps_per_sec"), ".2f"),
          _fmt(j["steps_per_sec"] / t["steps_per_sec"] if j and t else None, ".2f"),
          _fmt(flops / 1e9 if flops else None, ".1f"),
          _fmt(jt, ".1f"),
          _fmt(tt, ".1f"),
          _fmt(100 * jt / peak if jt and peak else None, ".1f"),
          _fmt(100 * tt / peak if tt and peak else None, ".1f"),
          _fmt(j.get("peak", 0) / 1e9 if j.get("peak") else None, ".2f"),
          _fmt(t.get("peak", 0) / 1e9 if t.get("peak") else None, ".2f"),
          j.get("version", "-"),
        ]
      )
  if rows:
    lines += ["", "## Train steps/s: JAX against PyTorch (benchmarks/train_throughput.py)", ""]
    peak_note = (
      f"MFU against the dense peak of {device}: {peaks.get('bfloat16'):g} TFLOP/s for bfloat16 "
      f"rows, {peaks.get('float32'):g} (TF32) for float32 rows."
      if peaks.get("bfloat16")
      else "No MFU: no known peak for this device."
    )
    patches = sorted(
      {str(row.get("patch")) for p in results.glob("throughput*.json") for row in read_json(p, [])}
    )
    lines += [f"x2, LR patch {'/'.join(patches)}; {tag}; {peak_note}", ""]
    lines += _table(
      [
        "network",
        "batch",
        "dtype",
        "JAX steps/s",
        "PT steps/s",
        "JAX/PT",
        "GFLOP/step",
        "JAX TFLOP/s",
        "PT TFLOP/s",
        "JAX MFU %",
        "PT MFU %",
        "JAX GB",
        "PT GB",
        "JAX",
      ],
      rows,
    )

  rows = []
  for path in sorted(results.glob("inference*.json")):
    for row in read_json(path, []):
      if "error" in row or "skipped" in row:
        rows.append(
          [row["image"], row["method"], "failed" if "error" in row else "skipped"] + ["-"] * 6
        )
        continue
      tf = row["flops"] / row["seconds"] / 1e12 if row.get("flops") else None
      peak = peaks.get("float32")
      rows.append(
        [
          row["image"],
          row["method"],
          _fmt(row.get("tiles", row.get("calls")), "d")
          if row.get("tiles", row.get("calls")) is not None
          else "-",
          _fmt(row.get("seconds"), ".4f"),
          _fmt(tf, ".1f"),
          _fmt(100 * tf / peak if tf and peak else None, ".1f"),
          _fmt(row["peak"] / 1e9 if row.get("peak") else None, ".2f"),
          "-" if row.get("max_diff") is None else row["max_diff"],
          row.get("version", "-"),
        ]
      )
  if rows:
    lines += ["", "## Inference: ours against forward_chop (benchmarks/inference.py)", ""]
    what = "EDSR baseline" if args.mode == "gpu" else "a tiny EDSR (--smoke)"
    lines += [f"{what}, random weights, float32; {tag}.", ""]
    lines += _table(
      [
        "image",
        "method",
        "tiles",
        "time s",
        "TFLOP/s",
        "MFU %",
        "peak GB",
        "max|diff| vs own untiled",
        "version",
      ],
      rows,
    )

  if train:
    lines += [
      "",
      f"## Training: EDSR {train.get('network')} x2 (configs/edsr_291.py's recipe)",
      "",
      f"Batch {train.get('batch')}, LR patch {train.get('patch')}, Adam from "
      f"{train.get('learning_rate')} halved every quarter of the planned steps, EMA 0.999, "
      f"{train.get('dtype')}; trained on T91 + BSD200"
      + (" (the 291 images)" if args.mode == "gpu" else " (--smoke: 6 generated images)")
      + "; validated on Set5.",
    ]
    stopped = train.get("sigterm_reason")
    lines.append(
      f"Steps reached: {train.get('steps_reached')}"
      + (
        f" of {train['planned_steps']} planned (from "
        f"{_fmt(train.get('planned_rate'), '.0f')} steps/s measured by the checks)"
        if train.get("planned_steps")
        else ""
      )
      + f"; trainer exit {train.get('returncode')}"
      + (f", stopped by SIGTERM ({stopped}) after {train['sigterm_at_s']:.0f} s" if stopped else "")
      + f"; {train.get('wall_s', 0):.0f} s wall including data loading and compiling; {tag}."
    )
    if train.get("train/loss"):
      lines.append(
        f"Last logged train loss (L1, 0..255): {train['train/loss']['value']:.3f} "
        f"at step {train['train/loss']['step']}."
      )
    if train.get("val_curve"):
      curve = ", ".join(f"{s}: {v:.2f}" for s, v in train["val_curve"])
      lines.append(f"Set5 validation Y-PSNR (EMA) by step: {curve}.")
    lines.append(f"TensorBoard event files written: {train.get('events_files', 0)}.")
    lines.append(
      f"The trainer's summary-writer fallback: {train.get('fallback_warning') or 'none'}."
    )
  if evaluation:
    names = [n for n in DATASETS if n in evaluation] + [n for n in evaluation if n not in DATASETS]
    scores = {n: evaluation[n].get("x2", {}) for n in names}

    def cell(pair):
      return f"{pair[0]:.2f} / {pair[1]:.4f}" if pair else "-"

    rows = [
      ["Bicubic (measured here)"]
      + [cell((s["bicubic_psnr"], s["bicubic_ssim"])) if s else "-" for s in scores.values()],
      ["VDSR (published, 291 images)"] + [cell(VDSR_X2.get(n)) for n in names],
      ["EDSR 16x32, configs/edsr_291.py, 12,000 steps on the project's CPU"]
      + [cell(EDSR_291_CPU_X2.get(n)) for n in names],
      [
        f"this run: EDSR {train.get('network', '?')}, {train.get('steps_reached', '?')} steps, "
        f"{device}, {tag}"
      ]
      + [cell((s["psnr"], s["ssim"])) if s else "-" for s in scores.values()],
    ]
    lines += ["", "## Scores x2 (python -m edsr_jax.evaluate; Y-PSNR / SSIM, border 2)", ""]
    lines += _table(["method"] + [f"{n} x2" for n in names], rows)
  lines.append("")
  text = "\n".join(lines)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.md").write_text(text)
  write_json(
    out / "results.json",
    {
      "mode": args.mode,
      "wall_s": args.wall,
      "sections": sections,
      "machine": machine,
      "imports": imports,
      "checks": checks,
      "throughput": {p.stem: read_json(p) for p in sorted(results.glob("throughput*.json"))},
      "inference": {p.stem: read_json(p) for p in sorted(results.glob("inference*.json"))},
      "train": train,
      "evaluate": evaluation,
      "jax": jax_version,
    },
  )
  print(text)


# ------------------------------------------------------------------ main


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("tree-size")
  p.add_argument("--repo", default=str(ROOT))
  p = sub.add_parser("wheels")
  p.add_argument("names", nargs="+")
  p.add_argument("--lock", required=True)
  p.add_argument("--dest", required=True)
  p = sub.add_parser("stage-data")
  p.add_argument("--src", required=True)
  p.add_argument("--dst", required=True)
  p.add_argument("--budget", type=int, default=None, help="bytes the data may take")
  p = sub.add_parser("smoke-source")
  p.add_argument("dir")
  p = sub.add_parser("smoke-data")
  p.add_argument("--dir", required=True)
  p = sub.add_parser("install")
  p.add_argument("--wheels", required=True)
  p.add_argument("--site", required=True)
  p.add_argument("--json", required=True)
  p = sub.add_parser("imports")
  p.add_argument("--json", required=True)
  p.add_argument("--label", default="")
  p = sub.add_parser("machine")
  p.add_argument("--json", required=True)
  p = sub.add_parser("peak")
  p.add_argument("dtype")
  p.add_argument("machine")
  p = sub.add_parser("checks")
  p.add_argument("--json", required=True)
  p.add_argument("--network", default="16x64", help="blocks x features")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--patch", type=int, default=32)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--rate_steps", type=int, default=300)
  p.add_argument("--sequential", action="store_true", help="the two runs one after the other")
  p.add_argument(
    "--tiled_x2", type=int, nargs=3, default=(200, 300, 64), metavar=("H", "W", "TILE")
  )
  p.add_argument(
    "--tiled_x4", type=int, nargs=3, default=(100, 150, 48), metavar=("H", "W", "TILE")
  )
  p = sub.add_parser("det-child")
  p.add_argument("spec")
  p = sub.add_parser("train-plan")
  p.add_argument("--checks", required=True)
  p.add_argument("--json", required=True)
  p.add_argument("--budget", type=float, required=True)
  p.add_argument("--overhead", type=float, default=35.0)
  p.add_argument("--steps", type=int, default=0, help="fixed number of steps (no plan)")
  p.add_argument("--default_steps", type=int, default=20000)
  p = sub.add_parser("train-run")
  p.add_argument("--workdir", required=True)
  p.add_argument("--json", required=True)
  p.add_argument("--budget", type=float, required=True)
  p.add_argument("--stop_at_checkpoint", type=int, default=0)
  p.add_argument("cmd", nargs=argparse.REMAINDER)
  p = sub.add_parser("summary")
  p.add_argument("--work", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--mode", required=True)
  p.add_argument("--wall", default="?")
  args = parser.parse_args()
  if args.command == "det-child":
    sys.path.insert(0, str(ROOT))
    print("RESULT " + json.dumps(det_child(json.loads(args.spec))), flush=True)
    return
  if args.command == "train-run" and args.cmd[:1] == ["--"]:
    args.cmd = args.cmd[1:]
  handler = {
    "tree-size": cmd_tree_size,
    "wheels": cmd_wheels,
    "stage-data": cmd_stage_data,
    "smoke-source": cmd_smoke_source,
    "smoke-data": cmd_smoke_data,
    "install": cmd_install,
    "imports": cmd_imports,
    "machine": cmd_machine,
    "peak": cmd_peak,
    "checks": cmd_checks,
    "train-plan": cmd_train_plan,
    "train-run": cmd_train_run,
    "summary": cmd_summary,
  }[args.command]
  with contextlib.suppress(BrokenPipeError):
    handler(args)


if __name__ == "__main__":
  main()
