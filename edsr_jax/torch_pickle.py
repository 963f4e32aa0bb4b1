"""Reads PyTorch `.pt` state_dicts without PyTorch and without running code from them.

A general reader with no project imports: `load_state_dict(path)` gives {name: numpy
array}. A `.pt` file is a pickle, and unpickling can run any function the file names, so
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
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import tarfile
import typing
import zipfile
import zlib
from collections.abc import Callable

import numpy as np


class TorchFileError(ValueError):
  """A file that cannot, or must not, be read as a state_dict; the message names the file."""


class StateDict(dict):
  """{name: numpy array}, in the file's order; `dtypes` is {name: the tensor's dtype in the
  file, as torch names it ('float32', 'float16', 'bfloat16', ...)}. bfloat16 tensors are
  widened to float32 arrays (numpy has no bfloat16), so `dtypes` is where their precision
  shows."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.dtypes: dict[str, str] = {}


# Pickle of the legacy layout's first record: torch's magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# A storage may claim at most this many times the file's size (a zip entry can be a
# compression bomb; weights do not compress, so real files are far below this).
_MAX_EXPANSION = 100

# torch's name for the dtype of each storage type.
_TORCH_DTYPE_NAMES = {
  "FloatStorage": "float32",
  "DoubleStorage": "float64",
  "HalfStorage": "float16",
  "BFloat16Storage": "bfloat16",
  "LongStorage": "int64",
  "IntStorage": "int32",
  "ShortStorage": "int16",
  "CharStorage": "int8",
  "ByteStorage": "uint8",
  "BoolStorage": "bool",
}

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


def _read_zip(path: str, file_size: int) -> StateDict:
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
    out = StateDict()
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
  out.dtypes = {name: _TORCH_DTYPE_NAMES[ref.storage.type.name] for name, ref in state.items()}
  return out


def _read_legacy(path: str, file_size: int) -> StateDict:
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

  out = StateDict()
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
  out.dtypes = {name: _TORCH_DTYPE_NAMES[ref.storage.type.name] for name, ref in state.items()}
  return out


def load_state_dict(path: str | os.PathLike) -> StateDict:
  """{name: numpy array} of a `.pt` state_dict, read without torch and without running code
  (a StateDict: `.dtypes` gives each tensor's dtype in the file).

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
