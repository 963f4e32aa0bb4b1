r"""Whole-image inference: our tiled upscaler next to the official code's `forward_chop`, and
next to the same network exported (SavedModel, TFLite, ONNX) in the runtimes people deploy with.

  python benchmarks/inference.py                    # EDSR baseline; 510x339 x4, 1920x1080 x2
  python benchmarks/inference.py --sizes=510x339x4  # one image (minutes on a 2-core CPU)
  python benchmarks/inference.py --network=full --peak_tflops=989   # e.g. on an H100
  python benchmarks/inference.py --exported=none    # without the exported models
  python benchmarks/inference.py --smoke            # a tiny network and images (the tests)

One network with the same random weights on both sides: the official architecture in
PyTorch (tests/torch_reference.py, weights perturbed by `randomize_` so that no bias is
zero) and ours with those weights converted by `edsr_jax.torch_weights`. Inputs are random
uint8 images of the given LR sizes (WxH). Rows per image:

- ours, auto: `Upscaler.upscale(image)` as a user calls it (images up to 512x512 LR pixels
  run whole; larger ones in tiles whose halo covers the receptive field);
- ours, tile N (`--tile_size`, 0 to skip): forced tiles of at most N LR pixels a side;
- ours, untiled: `upscale(image, tile_size=0)`, the reference for ours;
- official forward_chop: the official code's tiled inference (`--chop`) reimplemented
  below: four quadrants with `shave=10` LR pixels of overlap, recursing while a quadrant
  has `min_size=160000` pixels or more, no blending; one quadrant per call (one GPU);
- official, untiled: the whole image through the PyTorch network, the reference for it;
- the exported models (`--exported`), on the CPU whatever `--device` says: our network
  with the same weights written by `edsr_jax.deploy.export` (a child process, once per
  scale; each export's time, imports excluded, and each artifact's size on disk are a
  second table), each artifact loaded and run on the whole image, untiled, uint8 in and
  out, by its runtime: "TensorFlow SavedModel" (`tf.saved_model.load`, its
  `serving_default` signature; the StableHLO inside runs through TensorFlow's XLA),
  "LiteRT .tflite" (the `ai_edge_litert` Interpreter's signature runner, `num_threads` =
  the CPU count), "onnxruntime .onnx" (an `InferenceSession` on `CPUExecutionProvider`),
  "OpenCV dnn .onnx" (`cv2.dnn.readNetFromONNX`); and "onnxruntime .onnx, our tiles"
  (`deploy.load_onnx(path).upscale(image)`: onnxruntime in exactly our auto tiles and
  batches). Their max |diff| and differ are against "ours, untiled" (the runtimes sum the
  convolutions in other orders: at most 1 grey level on a few values is expected).
  `--exported=auto` (the default) runs them all when the run is on a CPU (no CUDA for
  PyTorch) and TensorFlow, LiteRT, onnxruntime, OpenCV and jax2onnx are importable, else
  none (a line says why); `all`, `none` or a list of savedmodel, tflite, onnxruntime,
  opencv, onnx_tiles asks for exactly those. `--smoke` runs them on its first image only.

Columns: tiles (forward_chop: quadrants) and calls to the network; LR megapixels pushed
through it (overlaps included); time of a run after one warm-up run (compilation, cuDNN
autotuning) and of the first run; useful TFLOP/s = XLA's cost analysis of the untiled
network on this image (work done more than once in overlaps is not counted) / time, and
MFU against `--peak_tflops`; peak memory; and the largest difference of the uint8 output
from the same side's untiled output (ours must be 0: tiling is exact by construction;
forward_chop's 10-pixel overlap is less than the network's receptive field, so its seams
differ; the exported models: from "ours, untiled").

Memory: on a GPU the allocator's peak (JAX `peak_bytes_in_use`, PyTorch
`max_memory_allocated`), weights included; on a CPU the process's peak resident memory
(VmHWM), libraries included ("setup" is the peak before the first run: the runtime and
the loaded model). Each row runs in its own process. On a CPU, untiled rows whose
activations would not fit in 40% of the available memory are skipped (an estimate; never
run into the OOM killer on a shared host); so are the exported models' whole-image rows.
For the memory bound of our tiling on very large images (2040x1356 x4, 4K x2) see
benchmarks/tiled_inference.py.

`--device=auto`: PyTorch on CUDA when available, JAX on its default backend; `--dtype`
float32 (TF32 convolutions on GPU on both sides, their defaults) or bfloat16 (ours with a
bfloat16 compute dtype, PyTorch under `torch.autocast`); the exported models compute in
float32 either way (`deploy.export`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import harness

ROOT = pathlib.Path(__file__).resolve().parents[1]

NETWORKS = {"tiny": (4, 8, 1.0), "baseline": (16, 64, 1.0), "full": (32, 256, 0.1)}
DEFAULT_SIZES = "510x339x4,1920x1080x2"
SMOKE_SIZES = "61x47x2,40x33x4"
# --exported: runtime -> (row label, artifact format, whole image untiled)
RUNTIMES = {
  "savedmodel": ("TensorFlow SavedModel", "savedmodel", True),
  "tflite": ("LiteRT .tflite", "tflite", True),
  "onnxruntime": ("onnxruntime .onnx", "onnx", True),
  "opencv": ("OpenCV dnn .onnx", "onnx", True),
  "onnx_tiles": ("onnxruntime .onnx, our tiles", "onnx", False),
}
ARTIFACTS = {"savedmodel": "savedmodel/", "tflite": "model.tflite", "onnx": "model.onnx"}
# What each runtime / format needs (the export child checks them before anything slow).
RUNTIME_MODULES = {
  "savedmodel": ("tensorflow",),
  "tflite": ("ai_edge_litert.interpreter",),
  "onnxruntime": ("onnxruntime",),
  "opencv": ("cv2",),
  "onnx_tiles": ("onnxruntime",),
}
FORMAT_MODULES = {"savedmodel": ("tensorflow",), "tflite": ("tensorflow",), "onnx": ("jax2onnx",)}


def _status_bytes(key: str, path: str = "/proc/self/status") -> int | None:
  try:
    for line in pathlib.Path(path).read_text().splitlines():
      if line.startswith(key + ":"):
        return int(line.split()[1]) * 1024  # kB
  except OSError:
    pass
  return None


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
  """'510x339x4,...' -> [(width, height, scale), ...]."""
  out = []
  for item in text.split(","):
    w, h, s = (int(v) for v in item.lower().split("x"))
    out.append((w, h, s))
  return out


def untiled_bytes(h: int, w: int, scale: int, features: int) -> int:
  """Rough float32 activation memory of an untiled forward pass (for the CPU guard)."""
  biggest, pixels = 3 * h * w * features, h * w
  for r in {2: (2,), 3: (3,), 4: (2, 2)}[scale]:
    biggest = max(biggest, 2 * pixels * r * r * features)  # conv output + pixel shuffle
    pixels *= r * r
  return 4 * (biggest + 2 * 3 * pixels)


def random_image(h: int, w: int):
  import numpy as np

  return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def parse_exported(text: str, on_cpu: bool) -> tuple[list[str], bool]:
  """--exported -> (the runtimes to run, whether chosen automatically)."""
  if text == "auto":
    return (list(RUNTIMES) if on_cpu else []), True
  if text in ("none", ""):
    return [], False
  if text == "all":
    return list(RUNTIMES), False
  names = [name.strip() for name in text.split(",")]
  unknown = [name for name in names if name not in RUNTIMES]
  if unknown:
    raise ValueError(
      f"--exported: unknown {', '.join(unknown)}; auto, all, none or some of {', '.join(RUNTIMES)}"
    )
  return [name for name in RUNTIMES if name in names], False


def disk_bytes(path: pathlib.Path) -> int:
  """A file's size, or a folder's (every file below it)."""
  if path.is_dir():
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  return path.stat().st_size


# ------------------------------------------------------------------ the official chop


def forward_chop(model, x, scale: int, shave: int = 10, min_size: int = 160000):
  """The official EDSR-PyTorch `forward_chop` for one GPU, on NCHW x.

  Four quadrants, each half the image plus `shave` LR pixels towards the centre; a
  quadrant with fewer than `min_size` pixels goes through the model, a larger one is
  chopped again the same way. Each output quadrant is the matching quarter of its
  quadrant's output: the overlap is cut off, not blended.
  """
  if min_size <= (2 * shave + 1) ** 2:  # a quadrant never gets below (2 * shave)^2 pixels
    raise ValueError(f"min_size={min_size} must exceed (2 * shave + 1)^2: it would never stop")
  _, _, h, w = x.shape
  h_half, w_half = h // 2, w // 2
  h_size, w_size = h_half + shave, w_half + shave
  quadrants = [
    x[..., :h_size, :w_size],
    x[..., :h_size, w - w_size :],
    x[..., h - h_size :, :w_size],
    x[..., h - h_size :, w - w_size :],
  ]
  if h_size * w_size < min_size:
    outs = [model(q) for q in quadrants]
  else:
    outs = [forward_chop(model, q, scale, shave, min_size) for q in quadrants]
  h, w, h_half, w_half = scale * h, scale * w, scale * h_half, scale * w_half
  h_size, w_size = scale * h_size, scale * w_size
  out = x.new_empty(x.shape[0], outs[0].shape[1], h, w, dtype=outs[0].dtype)
  out[..., :h_half, :w_half] = outs[0][..., :h_half, :w_half]
  out[..., :h_half, w_half:] = outs[1][..., :h_half, w_size - w + w_half :]
  out[..., h_half:, :w_half] = outs[2][..., h_size - h + h_half :, :w_half]
  out[..., h_half:, w_half:] = outs[3][..., h_size - h + h_half :, w_size - w + w_half :]
  return out


# ------------------------------------------------------------------ children


def _timed_runs(run, repeats: int) -> tuple[float, float, object]:
  start = time.perf_counter()
  out = run()
  first = time.perf_counter() - start
  best = None
  for _ in range(repeats):
    start = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - start
    best = elapsed if best is None else min(best, elapsed)
  return first, (first if best is None else best), out


def our_network(spec: dict, dtype: str):
  """(config, params): our network with the official-layout weights of `spec`, converted."""
  import numpy as np

  sys.path.insert(0, str(ROOT))
  from edsr_jax import config_lib, torch_weights

  blocks, features, res_scale = NETWORKS[spec["network"]]
  scale = spec["size"][2]
  state = dict(np.load(spec["weights"]))
  arch = torch_weights.Architecture("edsr", blocks, features, (scale,))
  torch_weights.check_state_dict(state, arch)
  config = config_lib.base_config()
  config.model.num_blocks, config.model.num_features = blocks, features
  config.model.res_scale, config.model.scales = res_scale, (scale,)
  config.model.dtype = dtype
  return config, torch_weights.to_flax_params(state, arch)


def ours_child(spec: dict) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  sys.path.insert(0, str(ROOT))
  from edsr_jax import inference, models

  w, h, scale = spec["size"]
  config, params = our_network(spec, spec["dtype"])
  device = jax.devices()[0]
  params = jax.device_put(params, device)
  upscaler = inference.Upscaler(config, params)
  image = random_image(h, w)
  result = {
    "platform": device.platform,
    "device": getattr(device, "device_kind", "?"),
    "version": f"JAX {jax.__version__}",
  }
  if spec["flops"]:  # XLA's count for the whole image, untiled (compiled, not run)
    model = models.create_model(config.model, jnp.dtype(spec["dtype"]))
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, scale))
    compiled = apply.lower(params, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
      analysis = analysis[0] if analysis else {}
    result["flops"] = float((analysis or {}).get("flops", 0.0)) or None
  tile = spec["tile"]
  try:
    plan = upscaler.plan(image.shape, scale, tile_size=tile)
    result["calls"] = len(plan.calls)
    result["tiles"] = plan.num_tiles
    result["lr_pixels"] = len(plan.calls) * plan.per_call * plan.window[0] * plan.window[1]
  except AttributeError:  # an Upscaler without plan(): no tile counts
    pass
  result["setup"] = _status_bytes("VmHWM")
  first, best, out = _timed_runs(lambda: upscaler.upscale(image, tile_size=tile), spec["repeats"])
  np.save(spec["out"], out)
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    result.update(peak=stats["peak_bytes_in_use"], peak_kind="device")
  else:
    result.update(peak=_status_bytes("VmHWM"), peak_kind="rss")
  result.update(first_s=first, seconds=best, load=os.getloadavg()[0])
  return result


def official_child(spec: dict) -> dict:
  import numpy as np
  import torch

  sys.path.insert(0, str(ROOT / "tests"))
  import torch_reference

  cuda = spec["device"] != "cpu" and torch.cuda.is_available()
  if spec["device"] == "cuda" and not cuda:
    raise SystemExit("--device=cuda, but torch.cuda.is_available() is False")
  dev = torch.device("cuda" if cuda else "cpu")
  if cuda:
    torch.backends.cudnn.benchmark = True  # as the official code does
  blocks, features, res_scale = NETWORKS[spec["network"]]
  w, h, scale = spec["size"]
  net = torch_reference.EDSR(scale, blocks, features, res_scale)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()})
  net = net.eval().to(dev)
  image = random_image(h, w)
  x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(dev)
  counter = {"calls": 0, "lr_pixels": 0}
  bf16 = spec["dtype"] == "bfloat16"

  def model(batch):
    counter["calls"] += 1
    counter["lr_pixels"] += batch.shape[0] * batch.shape[2] * batch.shape[3]
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      return net(batch).float()

  def run():
    counter.update(calls=0, lr_pixels=0)
    with torch.no_grad():
      y = (
        forward_chop(model, x, scale, spec["shave"], spec["min_size"]) if spec["chop"] else model(x)
      )
      # The official quantisation, done here the same way as ours: clip, round half up.
      y = torch.floor(y.clamp(0, 255) + 0.5).to(torch.uint8)
      return y[0].permute(1, 2, 0).cpu().numpy()

  setup = _status_bytes("VmHWM")
  first, best, out = _timed_runs(run, spec["repeats"])
  np.save(spec["out"], out)
  result = {
    "platform": dev.type,
    "version": f"PyTorch {torch.__version__}",
    "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
    "first_s": first,
    "seconds": best,
    "setup": setup,
    "load": os.getloadavg()[0],
    **counter,
  }
  if cuda:
    result.update(peak=torch.cuda.max_memory_allocated(), peak_kind="device")
  else:
    result.update(peak=_status_bytes("VmHWM"), peak_kind="rss")
  return result


def export_child(spec: dict) -> dict:
  """Writes our network (float32) in each of `spec["formats"]` to `spec["dir"]`:
  {format: {path, bytes, seconds} or {error}}; or {missing} when a module that the
  runtimes or the exporters need is not importable and `spec["auto"]` (then nothing runs)."""
  import importlib

  needed = {m for r in spec["runtimes"] for m in RUNTIME_MODULES[r]}
  needed |= {m for f in spec["formats"] for m in FORMAT_MODULES[f]}
  # TensorFlow first: where it is missing (the GPU image), auto mode stops in a moment.
  for name in sorted(needed, key=lambda m: (m != "tensorflow", m)):
    try:
      importlib.import_module(name)
    except ImportError as e:
      if spec["auto"]:
        return {"missing": f"{name}: {e}"}

  import jax
  import numpy as np

  sys.path.insert(0, str(ROOT))
  from edsr_jax import checkpoint, deploy, errors

  config, params = our_network(spec, "float32")
  step_dir = pathlib.Path(spec["dir"], "0")  # Restored.step is the folder's name
  restored = checkpoint.Restored(config, params, step_dir, False)
  leaves = jax.tree.leaves(params)
  result = {
    "params": int(sum(np.size(x) for x in leaves)),
    "params_bytes": int(sum(np.asarray(x).nbytes for x in leaves)),
  }
  for fmt in spec["formats"]:
    path = pathlib.Path(spec["dir"], ARTIFACTS[fmt])
    start = time.perf_counter()
    try:
      deploy.export(restored, fmt, path, overwrite=True)
    except Exception as e:  # noqa: BLE001 - one format failing leaves the others
      result[fmt] = {"error": errors.one_line(e)}
      continue
    result[fmt] = {
      "path": str(path),
      "bytes": disk_bytes(path),
      "seconds": time.perf_counter() - start,
    }
  return result


def exported_child(spec: dict) -> dict:
  """One exported artifact run by one runtime on the CPU, on the whole image (onnx_tiles:
  in our tiles), uint8 in and out."""
  import numpy as np

  w, h, scale = spec["size"]
  image = random_image(h, w)
  batch = np.ascontiguousarray(image[None])
  path, runtime = spec["artifact"], spec["runtime"]
  result = {"platform": "cpu", "device": "cpu", "tiles": 1, "calls": 1, "lr_pixels": h * w}
  if runtime == "savedmodel":
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    x = tf.constant(batch)
    result["version"] = f"TensorFlow {tf.__version__}"

    def run():
      return serve(lr=x)["sr"].numpy()[0]

  elif runtime == "tflite":
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
    runner = interpreter.get_signature_runner("serving_default")
    result["version"] = f"LiteRT {ai_edge_litert.__version__}"

    def run():
      return runner(lr=batch)["sr"][0]

  elif runtime == "onnxruntime":
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    result["version"] = f"onnxruntime {onnxruntime.__version__}"

    def run():
      return session.run(["sr"], {"lr": batch})[0][0]

  elif runtime == "opencv":
    import cv2

    net = cv2.dnn.readNetFromONNX(path)
    result["version"] = f"OpenCV {cv2.__version__}"

    def run():
      net.setInput(batch)
      return net.forward()[0]

  elif runtime == "onnx_tiles":
    import onnxruntime

    sys.path.insert(0, str(ROOT))
    from edsr_jax import deploy

    upscaler = deploy.load_onnx(path)
    plan = upscaler.plan(image.shape, scale)
    result.update(
      calls=len(plan.calls),
      tiles=plan.num_tiles,
      lr_pixels=len(plan.calls) * plan.per_call * plan.window[0] * plan.window[1],
      version=f"onnxruntime {onnxruntime.__version__}",
    )

    def run():
      return upscaler.upscale(image)

  else:
    raise ValueError(f"unknown runtime {runtime!r}")
  result["setup"] = _status_bytes("VmHWM")
  first, best, out = _timed_runs(run, spec["repeats"])
  out = np.asarray(out)
  if out.shape != (h * scale, w * scale, 3) or out.dtype != np.uint8:
    raise ValueError(f"{runtime}: {out.dtype} {out.shape}, not uint8 {(h * scale, w * scale, 3)}")
  np.save(spec["out"], out)
  result.update(
    first_s=first,
    seconds=best,
    peak=_status_bytes("VmHWM"),
    peak_kind="rss",
    load=os.getloadavg()[0],
  )
  return result


CHILDREN = {
  "ours": ours_child,
  "official": official_child,
  "export": export_child,
  "exported": exported_child,
}


def run_child(kind: str, spec: dict, env: dict) -> dict:
  result = harness.run(__file__, {"kind": kind, **spec}, env, ROOT)
  return result


# ------------------------------------------------------------------ main


def _gb(value, kind) -> str:
  if value is None:
    return "-"
  return f"{value / 1e9:.2f}{' rss' if kind == 'rss' else ''}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--network", choices=tuple(NETWORKS), default=None, help="baseline (default) or full"
  )
  parser.add_argument("--sizes", default=None, help=f"LR WxHxscale list ({DEFAULT_SIZES})")
  parser.add_argument(
    "--tile_size", type=int, default=None, help="an extra 'ours, tile N' row (default 256; 0: none)"
  )
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up")
  parser.add_argument("--shave", type=int, default=10, help="forward_chop overlap (official 10)")
  parser.add_argument(
    "--min_size",
    type=int,
    default=160000,
    help="forward_chop recursion threshold (official 160000)",
  )
  parser.add_argument("--peak_tflops", type=float, default=None, help="for MFU")
  parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
  parser.add_argument(
    "--smoke", action="store_true", help=f"tiny network, images {SMOKE_SIZES}, tiles of 8: seconds"
  )
  parser.add_argument(
    "--exported",
    default="auto",
    help="exported-model rows: auto (all on a CPU run where the runtimes are installed), "
    f"all, none, or some of {','.join(RUNTIMES)}",
  )
  parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    spec = json.loads(args.child)
    harness.answer(CHILDREN[spec["kind"]](spec))
    return

  import numpy as np
  import torch

  sys.path.insert(0, str(ROOT / "tests"))
  import torch_reference

  network = args.network or ("tiny" if args.smoke else "baseline")
  sizes = parse_sizes(args.sizes or (SMOKE_SIZES if args.smoke else DEFAULT_SIZES))
  tile_size = args.tile_size if args.tile_size is not None else (8 if args.smoke else 256)
  blocks, features, res_scale = NETWORKS[network]
  # The checkout first; what PYTHONPATH already holds (packages installed with --target,
  # as benchmarks/gpu_check.sh does on a GPU image) stays visible to the children.
  pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="3")
  if args.device == "cpu":
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  on_cpu = args.device == "cpu" or not torch.cuda.is_available()
  try:
    runtimes, auto = parse_exported(args.exported, on_cpu)
  except ValueError as e:
    parser.error(str(e))
  # The exported models run on the CPU: no GPU for TensorFlow or JAX (the export) there.
  cpu_env = dict(env, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  print(
    f"host: {harness.cpu_model()}, {os.cpu_count()} CPUs; EDSR {network} ({blocks} blocks, "
    f"{features} features), random weights; {args.dtype}; time = best of {args.repeats} "
    f"run(s) after a warm-up",
    flush=True,
  )

  tmp = tempfile.TemporaryDirectory(prefix="edsr_inference_")
  rows, versions, exports, notes = [], {}, {}, []
  for index, (w, h, scale) in enumerate(sizes):
    weights = pathlib.Path(tmp.name, f"x{scale}.npz")
    if not weights.exists():
      torch.manual_seed(0)
      net = torch_reference.randomize_(
        torch_reference.EDSR(scale, blocks, features, res_scale), seed=0
      )
      np.savez(weights, **{k: v.numpy() for k, v in net.state_dict().items()})
    label = f"{w}x{h} x{scale}"
    fits = True
    if on_cpu:
      available = _status_bytes("MemAvailable", "/proc/meminfo") or 0
      need = untiled_bytes(h, w, scale, features)
      fits = need < 0.4 * available
    methods = [
      ("ours, auto", "ours", dict(tile=None)),
      (f"ours, tile {tile_size}", "ours", dict(tile=tile_size)),
      ("ours, untiled", "ours", dict(tile=0)),
      ("official forward_chop", "official", dict(chop=True)),
      ("official, untiled", "official", dict(chop=False)),
    ]
    if not tile_size:
      methods.pop(1)
    if runtimes and (index == 0 or not args.smoke):  # --smoke: its first image only
      if scale not in exports:  # our network with these weights, in every format needed
        formats = list(dict.fromkeys(RUNTIMES[r][1] for r in runtimes))
        spec = dict(network=network, size=(w, h, scale), weights=str(weights), auto=auto)
        spec.update(dir=str(pathlib.Path(tmp.name, f"exported_x{scale}")), formats=formats)
        exports[scale] = run_child("export", dict(spec, runtimes=runtimes), cpu_env)
        print(f"  done: export x{scale} ({', '.join(formats)})", flush=True)
      if "missing" in exports[scale]:  # auto: a runtime or an exporter is not installed
        notes.append(f"Exported models skipped (--exported=auto): no {exports[scale]['missing']}")
        runtimes = []
      else:
        methods += [(RUNTIMES[r][0], r, dict(runtime=r)) for r in runtimes]
    outputs = {}
    for k, (name, kind, extra) in enumerate(methods):
      untiled = extra.get("tile") == 0 or extra.get("chop") is False
      artifact = None
      if kind in RUNTIMES:
        untiled = RUNTIMES[kind][2]
        export = exports[scale]
        artifact = export.get(RUNTIMES[kind][1]) or {"error": export.get("error", "?")}
        extra = dict(extra, artifact=artifact.get("path"))
      spec = dict(
        network=network,
        size=(w, h, scale),
        dtype=args.dtype,
        repeats=args.repeats,
        device=args.device,
        weights=str(weights),
        shave=args.shave,
        min_size=args.min_size,
        flops=k == 0,
        out=str(pathlib.Path(tmp.name, f"{label}-{name}.npy".replace(" ", "_"))),
        **extra,
      )
      if untiled and not fits:
        result = {"skipped": f"~{need / 1e9:.0f} GB, {available / 1e9:.0f} GB available"}
      elif artifact is not None and "error" in artifact:
        result = {"error": "export: " + artifact["error"]}
      elif artifact is not None:
        result = run_child("exported", spec, cpu_env)
        result["artifact_bytes"] = artifact["bytes"]
      else:
        result = run_child(kind, spec, env)
      if "error" not in result and "skipped" not in result:
        versions[kind] = f"{result['version']} on {result['device']}"
        outputs[name] = spec["out"]
      rows.append({"image": label, "method": name, "pixels": h * w, **result})
      print(f"  done: {label} {name}", flush=True)
    group = rows[-len(methods) :]
    for row in group:
      row["flops"] = group[0].get("flops")
      ref = "official, untiled" if row["method"].startswith("official") else "ours, untiled"
      if row["method"] in outputs and ref in outputs:
        a = np.load(outputs[row["method"]]).astype(np.int16)
        b = np.load(outputs[ref]).astype(np.int16)
        row["max_diff"] = int(np.abs(a - b).max())
        row["differ"] = float((a != b).mean())
    if "ours, untiled" in outputs and "official, untiled" in outputs:
      a = np.load(outputs["ours, untiled"]).astype(np.int16)
      b = np.load(outputs["official, untiled"]).astype(np.int16)
      official = next(row for row in group if row["method"] == "official, untiled")
      official["cross"] = (int(np.abs(a - b).max()), float((a != b).mean()))
    for path in outputs.values():
      pathlib.Path(path).unlink(missing_ok=True)

  print("\n" + "; ".join(dict.fromkeys(versions.values())))
  header = (
    f"{'image':<15}{'method':<30}{'tiles':>6}{'calls':>6}{'LR Mpx':>8}{'time s':>9}"
    f"{'1st run s':>10}{'TFLOP/s':>9}{'MFU':>8}{'setup GB':>10}{'peak GB':>10}"
    f"{'max|diff|':>10}{'differ':>9}"
  )
  print(f"{header}\n{'-' * len(header)}")
  for row in rows:
    start = f"{row['image']:<15}{row['method']:<30}"
    if "error" in row or "skipped" in row:
      print(
        start
        + (
          "failed: " + row["error"]
          if "error" in row
          else "skipped (untiled would need " + row["skipped"] + ")"
        )
      )
      continue
    tflops = row["flops"] / row["seconds"] / 1e12 if row.get("flops") else None
    mfu = f"{100 * tflops / args.peak_tflops:.3g}%" if tflops and args.peak_tflops else "-"
    calls = row.get("calls")
    mpx = f"{row['lr_pixels'] / 1e6:.3f}" if row.get("lr_pixels") else "-"
    diff = row.get("max_diff")
    differ = f"{100 * row['differ']:.3f}%" if "differ" in row else "-"
    tiles = row.get("tiles", calls)
    print(
      start + f"{'-' if tiles is None else tiles:>6}{'-' if calls is None else calls:>6}"
      f"{mpx:>8}{row['seconds']:>9.3f}"
      f"{row['first_s']:>10.3f}{'-' if tflops is None else f'{tflops:.3g}':>9} {mfu:>7}"
      f"{_gb(row.get('setup'), 'rss') if row.get('peak_kind') == 'rss' else '-':>10}"
      f"{_gb(row.get('peak'), row.get('peak_kind')):>10}"
      f"{'-' if diff is None else diff:>10}{differ:>9}"
    )
  print()
  for row in rows:
    if "cross" in row:
      print(
        f"{row['image']}: ours untiled vs official untiled (same weights, two frameworks): "
        f"max |diff| {row['cross'][0]}, {100 * row['cross'][1]:.3f}% of values differ"
      )
  loads = [row["load"] for row in rows if "load" in row]
  if loads:
    print(
      f"1-minute load average at the end of each row: {min(loads):.1f} to {max(loads):.1f} "
      f"({os.cpu_count()} CPUs; above that, other work shared the CPUs)"
    )
  print(
    "max|diff| / differ: the uint8 output against the same side's untiled output (ours "
    "must be 0; the exported models: against ours, untiled). TFLOP/s: XLA's count for the "
    "untiled image / time (overlaps not counted). 'rss' = process peak resident memory "
    "(CPU), else the device allocator's peak."
  )
  for scale, export in exports.items():
    if "missing" in export:
      continue
    if "error" in export:
      print(f"\nExport x{scale} failed: {export['error']}")
      continue
    print(
      f"\nExported x{scale} by edsr_jax.deploy.export (uint8 in and out, float32 weights "
      f"inside: {export['params']:,} parameters, {export['params_bytes'] / 1e6:.2f} MB):"
    )
    header = f"{'format':<12}{'artifact':<16}{'size MB':>9}{'export s':>10}"
    print(f"{header}\n{'-' * len(header)}")
    for fmt, name in ARTIFACTS.items():
      if fmt in export:
        done = export[fmt]
        if "error" in done:
          print(f"{fmt:<12}{name:<16}failed: {done['error']}")
        else:
          print(f"{fmt:<12}{name:<16}{done['bytes'] / 1e6:>9.2f}{done['seconds']:>10.1f}")
  for note in notes:
    print("\n" + note)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
  tmp.cleanup()


if __name__ == "__main__":
  main()
