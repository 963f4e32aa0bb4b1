"""Reads PyTorch `.pt` state_dicts without PyTorch, and maps EDSR / MDSR ones onto our params.

Reading. A `.pt` file is a pickle, and unpickling can run any function the file names, so
the pickle is read by an Unpickler that resolves only the few globals a state_dict of
tensors needs (`ALLOWED_GLOBALS`), each to a stand-in defined here that records numbers
and builds nothing else; any other global stops the load before anything runs. Two
layouts are read:

- the zip layout (torch >= 1.6 default): `<archive>/data.pkl` plus one raw entry
  `<archive>/data/<key>` per storage, byte order in `<archive>/byteorder`;
- the legacy layout (torch 0.4 - 1.5, and `_use_new_zipfile_serialization=False`): five
  pickles in a row (magic number, protocol version, system info, the object, the storage
  keys), then each storage as an int64 element count and its raw little-endian bytes.

Tensors are copied out of their storages with bounds checked against the storage size, so
a crafted size / stride cannot read outside the file's data.

Mapping. `detect_architecture` reads the network's sizes from the tensor shapes (with
optional overrides that must agree with them), `check_state_dict` insists on exactly the
official keys and shapes and the standard DIV2K mean shift, and `to_flax_params` gives the
parameter tree of `edsr_jax.models` (OIHW conv weights become HWIO kernels).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import re
import tarfile
import typing
import zipfile
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from edsr_jax import models


class TorchFileError(ValueError):
  """A file that cannot, or must not, be read as a state_dict; the message names the file."""


# Pickle of the legacy layout's first record: torch's magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# A storage may claim at most this many times the file's size (a zip entry can be a
# compression bomb; weights do not compress, so real files are far below this).
_MAX_EXPANSION = 100

_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": np.uint16,  # bit patterns; widened to float32 on reading
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


# The stand-ins are NamedTuples: a pickle's BUILD opcode cannot change a tuple after it
# was made (no __dict__, no __setstate__), so what the checks below saw is what is used.
class _StorageType(typing.NamedTuple):
  """Stand-in for `torch.FloatStorage` & co.: a dtype, and not callable."""

  name: str
  dtype: np.dtype


class _StorageRef(typing.NamedTuple):
  """What `persistent_load` returns: which storage, of what type and element count."""

  key: str
  type: _StorageType
  numel: int
  view: tuple[str, int, int] | None = None  # legacy storage view: (view key, offset, size)


class _TensorRef(typing.NamedTuple):
  """What the tensor rebuild stand-ins return; materialised once storages are read."""

  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


class _Callable(typing.NamedTuple):
  """An allowed function, wrapped so that BUILD cannot reach the function's attributes."""

  fn: Callable

  def __call__(self, *args):
    return self.fn(*args)


def _index_tuple(value, what: str) -> tuple[int, ...]:
  if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
    raise TorchFileError(f"tensor {what} {value!r} is not a tuple of non-negative integers")
  return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  # Signature of torch._utils._rebuild_tensor_v2 (and of the older _rebuild_tensor); the
  # extra arguments (requires_grad, backward hooks, metadata) do not affect the values.
  if not isinstance(storage, _StorageRef):
    raise TorchFileError(f"tensor storage is a {type(storage).__name__}, not a storage")
  if type(storage_offset) is not int or storage_offset < 0:
    raise TorchFileError(f"tensor storage offset {storage_offset!r} is not valid")
  size, stride = _index_tuple(size, "size"), _index_tuple(stride, "stride")
  if len(size) != len(stride) or len(size) > 32:
    raise TorchFileError(f"tensor size {size} and stride {stride} are not a valid shape")
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  # torch.nn.Parameter(data, requires_grad): only the data matters here.
  if not isinstance(data, _TensorRef):
    raise TorchFileError(f"parameter data is a {type(data).__name__}, not a tensor")
  return data


ALLOWED_GLOBALS = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor),
  ("torch._utils", "_rebuild_tensor"): _Callable(_rebuild_tensor),
  ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
  **{("torch", name): _StorageType(name, np.dtype(dt)) for name, dt in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only ALLOWED_GLOBALS; storages become _StorageRef records."""

  def __init__(self, file, path: str, legacy: bool):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._legacy = legacy

  def find_class(self, module, name):
    # Called for every GLOBAL / STACK_GLOBAL / INST / OBJ / EXT opcode, before anything
    # can be called, so refusing here stops the load with nothing run.
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except (KeyError, TypeError):
      raise TorchFileError(
        f"refusing to load {self._path}: it references {module}.{name}, which a weights "
        "file does not need (a file that runs code when loaded is not a plain state_dict)"
      ) from None

  def persistent_load(self, pid):
    n = 6 if self._legacy else 5
    if not (
      isinstance(pid, tuple)
      and len(pid) == n
      and pid[0] == "storage"
      and isinstance(pid[1], _StorageType)
      and isinstance(pid[2], str)
      and type(pid[4]) is int
      and pid[4] >= 0
    ):
      raise TorchFileError(f"{self._path}: unexpected storage reference {pid!r}")
    view = None
    if self._legacy and pid[5] is not None:
      view = pid[5]
      if not (
        isinstance(view, tuple)
        and len(view) == 3
        and isinstance(view[0], str)
        and all(type(v) is int and v >= 0 for v in view[1:])
      ):
        raise TorchFileError(f"{self._path}: unexpected storage view {view!r}")
    return _StorageRef(pid[2], pid[1], pid[4], view)


def _unpickle(data: bytes | io.BufferedIOBase, path: str, legacy: bool):
  file = io.BytesIO(data) if isinstance(data, bytes) else data
  try:
    return _RestrictedUnpickler(file, path, legacy).load()
  except TorchFileError:
    raise
  except Exception as e:  # any malformed or truncated pickle
    raise TorchFileError(
      f"{path} is not a readable torch file: its pickle is malformed or "
      f"truncated ({type(e).__name__}: {e})"
    ) from None


def _array_from_bytes(raw: bytes, stype: _StorageType, numel: int, order: str, where: str):
  nbytes = numel * stype.dtype.itemsize
  if len(raw) != nbytes:
    raise TorchFileError(
      f"{where} holds {len(raw)} bytes, but its {stype.name} of {numel} "
      f"elements needs {nbytes} (truncated or corrupt file)"
    )
  arr = np.frombuffer(raw, dtype=stype.dtype.newbyteorder(order))
  if stype.name == "BFloat16Storage":  # bfloat16 is the top half of a float32
    return (arr.astype(np.uint32) << 16).view(np.float32)
  return arr.astype(stype.dtype.newbyteorder("="))


def _materialise(ref: _TensorRef, storage: np.ndarray, name: str, path: str) -> np.ndarray:
  if 0 in ref.size:
    return np.zeros(ref.size, storage.dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
  if last >= storage.size:
    raise TorchFileError(
      f"{path}: tensor {name!r} (size {ref.size}, stride {ref.stride}, offset {ref.offset}) "
      f"reaches element {last} of a storage of {storage.size}"
    )
  base = storage[ref.offset :]
  # A stride of a length-1 dimension is never used (and may be anything, even huge).
  strides = tuple(
    s * storage.itemsize if n > 1 else 0 for n, s in zip(ref.size, ref.stride, strict=True)
  )
  return np.lib.stride_tricks.as_strided(base, ref.size, strides, writeable=False).copy()


def _check_state_dict_object(obj, path: str) -> dict[str, _TensorRef]:
  if not isinstance(obj, dict):
    raise TorchFileError(
      f"{path} holds a {type(obj).__name__}, not a state_dict "
      "(a mapping of parameter names to tensors)"
    )
  # dict.items, not obj.items: BUILD may have put an `items` attribute on the instance.
  items = list(dict.items(obj))
  for name, value in items:
    if not isinstance(name, str) or not isinstance(value, _TensorRef):
      raise TorchFileError(
        f"{path}: state_dict entry {name!r} is a {type(value).__name__}, not a tensor"
      )
  return dict(items)


# What zipfile raises for damaged, truncated or unusual (encrypted, exotic compression)
# archives.
_ZIP_ERRORS = (
  zipfile.BadZipFile,
  zipfile.LargeZipFile,
  OSError,
  EOFError,
  NotImplementedError,
  RuntimeError,
  ValueError,
  zlib.error,
)


def _zip_read(archive: zipfile.ZipFile, name: str, path: str) -> bytes:
  try:
    return archive.read(name)
  except _ZIP_ERRORS as e:
    raise TorchFileError(f"{path} is not a readable torch file: entry {name}: {e}") from None


def _read_zip(path: str, file_size: int) -> dict[str, np.ndarray]:
  try:
    archive = zipfile.ZipFile(path)
  except _ZIP_ERRORS as e:
    raise TorchFileError(
      f"{path} is not a readable torch file: {e} (truncated download?)"
    ) from None
  with archive:
    pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if len(pickles) != 1:
      raise TorchFileError(
        f"{path} is a zip file but not a torch checkpoint: it has "
        f"{len(pickles)} '<archive>/data.pkl' entries, expected 1"
      )
    prefix = pickles[0][: -len("data.pkl")]
    data_pkl = _zip_read(archive, pickles[0], path)
    order_name = prefix + "byteorder"
    byteorder = (
      _zip_read(archive, order_name, path).decode("ascii", "replace").strip()
      if order_name in archive.namelist()
      else "little"
    )
    if byteorder not in ("little", "big"):
      raise TorchFileError(f"{path}: unknown byte order {byteorder!r}")
    order = "<" if byteorder == "little" else ">"
    state = _check_state_dict_object(_unpickle(data_pkl, path, legacy=False), path)

    storages: dict[str, np.ndarray] = {}
    out = {}
    for name, ref in state.items():
      sref = ref.storage
      if sref.key not in storages:
        entry = f"{prefix}data/{sref.key}"
        try:
          info = archive.getinfo(entry)
        except KeyError:
          raise TorchFileError(f"{path}: storage {entry} of tensor {name!r} is missing") from None
        if info.file_size > _MAX_EXPANSION * max(file_size, 1):
          raise TorchFileError(
            f"{path}: zip entry {entry} claims {info.file_size} bytes, "
            "far more than the file could hold"
          )
        raw = _zip_read(archive, entry, path)
        storages[sref.key] = _array_from_bytes(
          raw, sref.type, sref.numel, order, f"{path}: storage {entry}"
        )
      out[name] = _materialise(ref, storages[sref.key], name, path)
  return out


def _read_legacy(path: str, file_size: int) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    magic = _unpickle(f, path, legacy=True)
    if magic != _LEGACY_MAGIC:
      raise TorchFileError(f"{path} is not a torch file (no torch magic number)")
    protocol = _unpickle(f, path, legacy=True)
    if protocol != _LEGACY_PROTOCOL:
      raise TorchFileError(f"{path}: unsupported legacy torch protocol {protocol!r}")
    sys_info = _unpickle(f, path, legacy=True)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
      # Writers of this layout put raw bytes in the saving machine's order; only
      # little-endian machines are known to have made EDSR files.
      raise TorchFileError(
        f"{path}: legacy torch file from a big-endian machine "
        f"(system info {sys_info!r}); re-save it with a current torch"
      )
    state = _check_state_dict_object(_unpickle(f, path, legacy=True), path)
    keys = _unpickle(f, path, legacy=True)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise TorchFileError(f"{path}: malformed storage key list")

    refs = {ref.storage.key: ref.storage for ref in state.values()}
    storages: dict[str, np.ndarray] = {}
    for key in keys:
      head = f.read(8)
      if len(head) != 8:
        raise TorchFileError(f"{path} is truncated: storage {key} is missing")
      numel = int.from_bytes(head, "little", signed=True)
      if key not in refs:
        raise TorchFileError(f"{path}: storage {key} is not used by any tensor")
      if numel != refs[key].numel:
        raise TorchFileError(
          f"{path}: storage {key} holds {numel} elements, its reference says {refs[key].numel}"
        )
      stype = refs[key].type
      nbytes = numel * stype.dtype.itemsize
      if nbytes > file_size - f.tell():
        raise TorchFileError(
          f"{path} is truncated: storage {key} needs {nbytes} bytes, {file_size - f.tell()} remain"
        )
      raw = f.read(nbytes)
      storages[key] = _array_from_bytes(raw, stype, numel, "<", f"{path}: storage {key}")

  out = {}
  for name, ref in state.items():
    sref = ref.storage
    if sref.key not in storages:
      raise TorchFileError(f"{path}: storage {sref.key} of tensor {name!r} is missing")
    storage = storages[sref.key]
    if sref.view is not None:  # torch < 0.4: a view of another storage
      _, start, size = sref.view
      if start + size > storage.size:
        raise TorchFileError(f"{path}: storage view {sref.view} exceeds its storage")
      storage = storage[start : start + size]
    out[name] = _materialise(ref, storage, name, path)
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: numpy array} of a `.pt` state_dict, read without torch and without running code.

  Raises TorchFileError (naming the file) for a file that is missing, not a torch file,
  truncated, not a state_dict of tensors, or that references any global outside
  ALLOWED_GLOBALS.
  """
  path = os.fspath(path)
  try:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError as e:
    raise TorchFileError(f"cannot read {path}: {e.strerror or e}") from None
  if head.startswith(b"PK\x03\x04"):
    return _read_zip(path, file_size)
  if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle's PROTO opcode
    return _read_legacy(path, file_size)
  if file_size > 512 and tarfile.is_tarfile(path):
    raise TorchFileError(
      f"{path} is in torch's tar format (torch < 0.4), which is not "
      "supported: load and re-save it with torch.save"
    )
  raise TorchFileError(
    f"{path} is not a torch weights file (neither the zip layout of "
    "torch >= 1.6 nor the legacy pickle layout)"
  )


# --------------------------------------------------------------------------------------
# Official EDSR / MDSR state_dicts.


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What the weights determine: network, blocks, features and scale(s)."""

  model: str  # "edsr" or "mdsr"
  num_blocks: int
  num_features: int
  scales: tuple[int, ...]  # EDSR: (scale,); MDSR: one per branch, in the file's order

  def describe(self) -> str:
    scales = ", ".join(f"x{s}" for s in self.scales)
    return (
      f"{self.model.upper()}, {self.num_blocks} residual blocks, "
      f"{self.num_features} features, {scales}"
    )


class WeightsMismatchError(ValueError):
  """The file's tensors do not match the network asked for; the message names the tensor."""


def _shape(state, key) -> tuple[int, ...] | None:
  return tuple(state[key].shape) if key in state else None


def _upsampler_scale(state, prefix: str, features: int) -> int:
  """x2 / x3 / x4 from an official Upsampler's first conv `<prefix>0.weight`."""
  key = f"{prefix}0.weight"
  shape = _shape(state, key)
  if shape is None:
    raise WeightsMismatchError(f"missing tensor {key} (the upsampler's first conv)")
  if shape[0] == 9 * features:
    return 3
  if shape[0] == 4 * features:
    return 4 if f"{prefix}2.weight" in state else 2
  raise WeightsMismatchError(
    f"{key} has shape {shape}: its {shape[0]} output channels are neither 4 x {features} "
    f"(an x2 stage) nor 9 x {features} (x3) features, so it is not an EDSR upsampler"
  )


def _scale_shape_note(scale: int, features: int) -> str:
  out = 9 * features if scale == 3 else 4 * features
  second = "a second x2 stage tail.0.2.weight" if scale == 4 else "no tail.0.2.weight"
  return f"tail.0.0.weight of shape ({out}, {features}, 3, 3) and {second}"


def detect_architecture(
  state: Mapping[str, np.ndarray],
  *,
  model: str | None = None,
  scale: int | None = None,
  scales: tuple[int, ...] | None = None,
  num_blocks: int | None = None,
  num_features: int | None = None,
) -> Architecture:
  """Reads the network from the tensor shapes; each given argument must agree with them.

  Raises WeightsMismatchError naming the tensor (and its shape) that contradicts an
  argument, or that no official network has.
  """
  head = _shape(state, "head.0.weight")
  if head is None or len(head) != 4:
    raise WeightsMismatchError(
      f"no conv weight head.0.weight (found {head}): not an official EDSR / MDSR state_dict; "
      f"its first keys are {list(state)[:5]}"
    )
  features = head[0]
  if head[1] != 3:
    raise WeightsMismatchError(
      f"head.0.weight has shape {head}: {head[1]} input channels, the networks here take RGB (3)"
    )
  if num_features is not None and num_features != features:
    raise WeightsMismatchError(
      f"--num_features={num_features}, but head.0.weight has shape {head}: {features} features"
    )

  mdsr_keys = [k for k in state if k.startswith("pre_process.")]
  detected_model = "mdsr" if mdsr_keys else "edsr"
  if model is not None and model != detected_model:
    if model == "edsr":
      raise WeightsMismatchError(
        f"--model=edsr, but the file has MDSR tensor {mdsr_keys[0]} of shape "
        f"{_shape(state, mdsr_keys[0])} (EDSR has no pre_process stage)"
      )
    raise WeightsMismatchError(
      f"--model=mdsr, but the file has no pre_process.* tensors (MDSR's per-scale "
      f"stages); tail.0.0.weight of shape {_shape(state, 'tail.0.0.weight')} is an EDSR "
      "upsampler"
    )

  blocks = 0
  while f"body.{blocks}.body.0.weight" in state:
    blocks += 1
  if num_blocks is not None and num_blocks != blocks:
    last = f"body.{blocks}.weight"
    if num_blocks > blocks:
      detail = f"there is no body.{blocks}.body.0.weight"
    else:
      extra = f"body.{num_blocks}.body.0.weight"
      detail = f"{extra} of shape {_shape(state, extra)} is a residual block"
    raise WeightsMismatchError(
      f"--num_blocks={num_blocks}, but the file has {blocks} residual blocks: {detail}, "
      f"and {last} of shape {_shape(state, last)} is the body's final conv"
    )
  if blocks == 0:
    raise WeightsMismatchError("no residual blocks (no body.0.body.0.weight)")

  if detected_model == "edsr":
    if scales is not None:
      raise WeightsMismatchError("--scales is for MDSR; this is an EDSR file (use --scale)")
    found = _upsampler_scale(state, "tail.0.", features)
    if scale is not None and scale != found:
      raise WeightsMismatchError(
        f"--scale={scale}, but tail.0.0.weight has shape {_shape(state, 'tail.0.0.weight')}"
        f"{' with a second stage tail.0.2.weight' if found == 4 else ''}, an x{found} "
        f"upsampler; x{scale} needs {_scale_shape_note(scale, features)}"
      )
    return Architecture("edsr", blocks, features, (found,))

  if scale is not None:
    raise WeightsMismatchError(
      "--scale is for EDSR; this MDSR file holds several scales (use --scales to check them)"
    )
  found_scales = []
  while f"upsample.{len(found_scales)}.0.weight" in state:
    i = len(found_scales)
    found_scales.append(_upsampler_scale(state, f"upsample.{i}.", features))
  found_scales = tuple(found_scales)
  if not found_scales or len(set(found_scales)) != len(found_scales):
    raise WeightsMismatchError(
      f"MDSR upsamplers give scales {found_scales} (from upsample.<i>.0.weight); "
      "expected distinct scales, one per branch"
    )
  if scales is not None and tuple(scales) != found_scales:
    detail = ", ".join(
      f"upsample.{i}.0.weight {_shape(state, f'upsample.{i}.0.weight')} -> x{s}"
      for i, s in enumerate(found_scales)
    )
    raise WeightsMismatchError(
      f"--scales={','.join(map(str, scales))}, but the file's upsamplers are {detail}"
    )
  return Architecture("mdsr", blocks, features, found_scales)


def _conv_keys(prefix: str, out_ch: int, in_ch: int, k: int) -> dict[str, tuple[int, ...]]:
  return {f"{prefix}.weight": (out_ch, in_ch, k, k), f"{prefix}.bias": (out_ch,)}


def _upsampler_keys(prefix: str, scale: int, f: int) -> dict[str, tuple[int, ...]]:
  stages = {2: (2,), 3: (3,), 4: (2, 2)}[scale]
  out = {}
  for i, r in enumerate(stages):  # conv at 0, 2 (PixelShuffle at 1, 3)
    out.update(_conv_keys(f"{prefix}.{2 * i}", r * r * f, f, 3))
  return out


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
  """{state_dict key: shape} of the official network `arch`."""
  f, b = arch.num_features, arch.num_blocks
  out = {}
  out.update(_conv_keys("sub_mean", 3, 3, 1))
  out.update(_conv_keys("add_mean", 3, 3, 1))
  out.update(_conv_keys("head.0", f, 3, 3))
  if arch.model == "mdsr":
    for s in range(len(arch.scales)):
      for k in range(2):
        for c in (0, 2):
          out.update(_conv_keys(f"pre_process.{s}.{k}.body.{c}", f, f, 5))
  for i in range(b):
    for c in (0, 2):
      out.update(_conv_keys(f"body.{i}.body.{c}", f, f, 3))
  out.update(_conv_keys(f"body.{b}", f, f, 3))
  if arch.model == "edsr":
    out.update(_upsampler_keys("tail.0", arch.scales[0], f))
    out.update(_conv_keys("tail.1", 3, f, 3))
  else:
    for i, s in enumerate(arch.scales):
      out.update(_upsampler_keys(f"upsample.{i}", s, f))
    out.update(_conv_keys("tail.0", 3, f, 3))
  return out


def _listing(keys, limit: int = 12) -> str:
  keys = sorted(keys, key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
  more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def check_state_dict(state: Mapping[str, np.ndarray], arch: Architecture) -> None:
  """Exactly the official keys and shapes of `arch`, float tensors, standard mean shift."""
  expected = expected_shapes(arch)
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  problems = []
  if missing:
    problems.append(f"missing tensors: {_listing(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {_listing(unexpected)}")
  for key, shape in expected.items():
    if key in state and tuple(state[key].shape) != shape:
      problems.append(f"{key} has shape {tuple(state[key].shape)}, {arch.describe()} needs {shape}")
  if problems:
    raise WeightsMismatchError(f"the file does not hold {arch.describe()}: " + "; ".join(problems))
  for key in expected:
    if state[key].dtype.kind != "f":
      raise WeightsMismatchError(f"{key} has dtype {state[key].dtype}, not floating point")
  _check_mean_shift(state)


def _check_mean_shift(state: Mapping[str, np.ndarray]) -> None:
  # Our model applies the DIV2K mean as a constant; weights trained with another mean,
  # std or rgb_range would compute a different function under it.
  mean = np.asarray(models.DIV2K_RGB_MEAN, np.float32) * np.float32(models.RGB_RANGE)
  eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
  for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
    for key, want in ((f"{name}.weight", eye), (f"{name}.bias", sign * mean)):
      got = state[key].astype(np.float32)
      if not np.allclose(got, want, rtol=0, atol=1e-3):
        raise WeightsMismatchError(
          f"{key} is {np.round(got.reshape(-1), 4).tolist()}, but this project's models "
          f"use the standard DIV2K mean shift ({np.round(want.reshape(-1), 4).tolist()}: "
          f"rgb_mean {models.DIV2K_RGB_MEAN} x rgb_range {models.RGB_RANGE:g}, std 1); "
          "weights trained with another mean, std or rgb_range would compute a different "
          "function here, so they are refused"
        )


def _conv(state, prefix: str) -> dict[str, np.ndarray]:
  weight = state[f"{prefix}.weight"].astype(np.float32)
  return {
    "kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),  # OIHW -> HWIO
    "bias": state[f"{prefix}.bias"].astype(np.float32),
  }


def _res_blocks(state, prefix: str, count: int) -> dict:
  return {
    f"block{i}": {
      "conv1": _conv(state, f"{prefix}.{i}.body.0"),
      "conv2": _conv(state, f"{prefix}.{i}.body.2"),
    }
    for i in range(count)
  }


def _upsampler(state, prefix: str, scale: int) -> dict:
  stages = 2 if scale == 4 else 1
  return {f"conv{i}": _conv(state, f"{prefix}.{2 * i}") for i in range(stages)}


def to_flax_params(state: Mapping[str, np.ndarray], arch: Architecture) -> dict:
  """The `edsr_jax.models` parameter tree (float32) of a checked official state_dict."""
  body = _res_blocks(state, "body", arch.num_blocks)
  body["conv"] = _conv(state, f"body.{arch.num_blocks}")
  params = {"head": _conv(state, "head.0"), "body": body}
  if arch.model == "edsr":
    params["upsample"] = _upsampler(state, "tail.0", arch.scales[0])
    params["tail"] = _conv(state, "tail.1")
    return params
  for i, s in enumerate(arch.scales):
    params[f"pre_process_x{s}"] = _res_blocks(state, f"pre_process.{i}", 2)
    params[f"upsample_x{s}"] = _upsampler(state, f"upsample.{i}", s)
  params["tail"] = _conv(state, "tail.0")
  return params


def default_res_scale(arch: Architecture) -> float | None:
  """res_scale of the official network of this size (not stored in the weights), or None.

  EDSR: 0.1 with 256 features (full), 1.0 with 64 (baseline); MDSR: 1.0 (both released
  MDSRs have 64 features and unscaled blocks). None for any other size: it must be given.
  """
  if arch.num_features == 64:
    return 1.0
  if arch.model == "edsr" and arch.num_features == 256:
    return 0.1
  return None
