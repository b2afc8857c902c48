"""Reading PyTorch checkpoints without torch, and without running code from the file.

`load_torch_state_dict(path)` returns `{name: numpy.ndarray}` from a file written by `torch.save`
in either of its formats:

* the legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles and raw
  bytes in one stream -- a magic number, the protocol version, a `sys_info` dict (byte order,
  type sizes), the main pickle (storages appear as persistent ids), the list of storage keys, then
  each storage's bytes, prefixed by its element count as an 8-byte integer;
* the zip format (torch >= 1.6): `<archive>/data.pkl` holds the main pickle, storage `KEY` lives in
  `<archive>/data/KEY`, and `<archive>/byteorder` says 'little' or 'big' (little when absent).

Pickles are read by a restricted unpickler: it admits only the globals needed to rebuild tensors,
storages, parameters and (ordered) dicts, each replaced by a harmless stand-in of our own. Any other
global -- `os.system`, `builtins.exec`, `subprocess.Popen`, a whole pickled `nn.Module` -- is refused
with `UnsafeCheckpointError` before anything is called, so a hostile file cannot run its payload.
Damaged or truncated files raise `CheckpointError` naming the file and, where it applies, the tensor.

bfloat16 storages come back as float32 (exactly: bfloat16 is the top half of a float32); complex,
quantized and sparse tensors are not supported.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

__all__ = ["CheckpointError", "CheckpointNotFoundError", "UnsafeCheckpointError", "load_torch_state_dict", "load_torch_checkpoint"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# A tensor may repeat its storage (stride 0, as `expand` saves); more than this many bytes is refused.
MAX_EXPANDED_BYTES = 1 << 32

# Keys under which training scripts commonly nest the state dict, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "params", "module",
                "ema", "model_ema")


class CheckpointError(ValueError):
  """A checkpoint that is missing, damaged or not a state dict."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
  """A pickle that asks for something other than tensors, storages and dicts; never executed."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """No file at the checkpoint path."""


# Storage class name -> numpy dtype as stored on disk ('bfloat16' is decoded separately).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}
# torch dtype name (as pickled by `_rebuild_tensor_v3`) -> storage class name.
_TORCH_DTYPES = {
    "float64": "DoubleStorage", "double": "DoubleStorage", "float32": "FloatStorage",
    "float": "FloatStorage", "float16": "HalfStorage", "half": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "long": "LongStorage",
    "int32": "IntStorage", "int": "IntStorage", "int16": "ShortStorage", "short": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for a `torch.*Storage` class: a name and a dtype, nothing callable."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return _STORAGE_DTYPES[self.name]


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
  """Stands in for a `torch.<dtype>` object."""
  storage: str


@dataclasses.dataclass(eq=False)
class _Storage:
  """A storage named in the pickle; its bytes are read after the pickle (legacy) or on demand."""
  key: str
  type: _StorageType
  numel: int
  location: str
  data: np.ndarray | None = None  # 1-D, native byte order, filled in by the reader


@dataclasses.dataclass(eq=False)
class _Tensor:
  """A tensor waiting for its storage's bytes: a strided view of it."""
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]
  dtype_name: str | None = None  # storage class name that overrides the storage's (untyped storages)


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
    return tuple(value)
  raise CheckpointError(f"tensor {what} must be a tuple of ints, got {value!r}")


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *unused: Any,
                    dtype_name: str | None = None) -> _Tensor:
  """Stand-in for `torch._utils._rebuild_tensor[_v2]`: records the view, reads nothing yet."""
  if not isinstance(storage, _Storage):
    raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
  if not isinstance(storage_offset, int) or storage_offset < 0:
    raise CheckpointError(f"tensor storage offset must be a non-negative int, got {storage_offset!r}")
  shape, strides = _as_int_tuple(size, "size"), _as_int_tuple(stride, "stride")
  if len(shape) != len(strides) or any(s < 0 for s in shape) or any(s < 0 for s in strides):
    raise CheckpointError(f"bad tensor geometry: size {shape}, stride {strides}")
  return _Tensor(storage, storage_offset, shape, strides, dtype_name)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad=False, hooks=None,
                       dtype=None, *unused) -> _Tensor:
  if not isinstance(dtype, _TorchDtype):
    raise CheckpointError(f"tensor dtype must be a torch dtype, got {dtype!r}")
  return _rebuild_tensor(storage, storage_offset, size, stride, dtype_name=dtype.storage)


def _rebuild_parameter(data: Any, *unused: Any) -> _Tensor:
  """Stand-in for `torch._utils._rebuild_parameter[_with_state]`: a parameter is its tensor."""
  if not isinstance(data, _Tensor):
    raise CheckpointError(f"parameter rebuilt from {type(data).__name__}, expected a tensor")
  return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> _Tensor:
  """Stand-in for `torch._tensor._rebuild_from_type_v2`, for plain tensors and parameters only."""
  inner = func.func if isinstance(func, functools.partial) and not func.args and not func.keywords else None
  if inner not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter) or not isinstance(args, tuple):
    raise UnsafeCheckpointError(f"refusing tensor rebuild through {func!r}")
  if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
    raise UnsafeCheckpointError(f"refusing tensor subclass {new_type!r}")
  return func(*args)


@dataclasses.dataclass(frozen=True)
class _TypeMarker:
  name: str


_TENSOR_TYPE = _TypeMarker("torch.Tensor")
_PARAMETER_TYPE = _TypeMarker("torch.nn.parameter.Parameter")


def _encode_latin1(text: Any, encoding: Any = "latin1") -> bytes:
  """Stand-in for `_codecs.encode`, which protocol-2 pickles use to carry bytes."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafeCheckpointError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
  return text.encode("latin1")


def _ordered_dict(*args: Any) -> collections.OrderedDict:
  if args and not (len(args) == 1 and isinstance(args[0], (list, tuple, dict))):
    raise CheckpointError("OrderedDict rebuilt from unexpected arguments")
  return collections.OrderedDict(*args)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
    ("torch", "Size"): tuple,
    ("_codecs", "encode"): _encode_latin1,
}
_SAFE_GLOBALS.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
_SAFE_GLOBALS.update({("torch", name): _TorchDtype(storage) for name, storage in _TORCH_DTYPES.items()})


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves globals only from `_SAFE_GLOBALS`; storages through `persistent_load`."""

  def __init__(self, file: BinaryIO, storages: dict[str, _Storage], where: str):
    super().__init__(file, encoding="utf-8")
    self._storages = storages
    self._where = where

  def find_class(self, module: str, name: str) -> Any:
    target = _SAFE_GLOBALS.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
    if target is not None:
      # A fresh object per reference, so that a BUILD opcode aimed at it (setattr) alters only
      # this load's copy, never the shared stand-ins that later loads use.
      if dataclasses.is_dataclass(target):
        return dataclasses.replace(target)
      return target if isinstance(target, type) else functools.partial(target)
    hint = ""
    if name in ("system", "exec", "eval", "Popen", "call", "run", "check_output", "__import__",
                "getattr", "compile", "open") or module in ("os", "posix", "nt", "subprocess", "builtins"):
      hint = " (this would run code or touch the system)"
    elif module.startswith("torch"):
      hint = (" (only tensors, storages and dicts are supported: save a state dict, not a module or"
              " another object)")
    raise UnsafeCheckpointError(
        f"refusing to load {self._where}: its pickle asks for global '{module}.{name}'{hint}; "
        "this reader admits only what rebuilds tensors, storages and dicts, and never runs code "
        "from a checkpoint")

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
      raise UnsafeCheckpointError(
          f"refusing to load {self._where}: unsupported persistent id of kind {kind!r} "
          "(only storages are supported; a pickled module is not a state dict)")
    _, storage_type, key, location, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
      raise CheckpointError(f"{self._where}: storage {key!r} has type {storage_type!r}, "
                            "not a torch storage class")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
      raise CheckpointError(f"{self._where}: malformed storage id {pid!r}")
    if len(pid) == 6 and pid[5] is not None:
      raise CheckpointError(f"{self._where}: storage {key!r} is a view into another storage, a "
                            "pre-1.0 torch feature that is not supported")
    found = self._storages.get(key)
    if found is None:
      found = self._storages[key] = _Storage(key, storage_type, numel, str(location))
    elif found.type != storage_type or found.numel != numel:
      raise CheckpointError(f"{self._where}: storage {key!r} is described inconsistently")
    return found


def _unpickle(data: bytes | BinaryIO, storages: dict[str, _Storage], where: str) -> Any:
  file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
  try:
    return _RestrictedUnpickler(file, storages, where).load()
  except CheckpointError as e:
    if where in str(e):
      raise
    raise type(e)(f"{where}: {e}") from None  # a rebuild function's error, which cannot know the file
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
          AttributeError, struct.error, UnicodeDecodeError, MemoryError, OverflowError) as e:
    raise CheckpointError(f"{where} is damaged or not a PyTorch checkpoint: cannot unpickle "
                          f"({type(e).__name__}: {e})") from None


def _decode_storage(raw: bytes | memoryview, storage: _Storage, big_endian: bool, where: str) -> np.ndarray:
  dtype = storage.type.dtype
  expected = storage.numel * dtype.itemsize
  if len(raw) < expected:
    raise CheckpointError(f"{where}: storage {storage.key!r} ({storage.type.name}) is truncated: "
                          f"{len(raw)} bytes, expected {expected}")
  arr = np.frombuffer(raw, dtype.newbyteorder(">") if big_endian else dtype, count=storage.numel)
  return arr.astype(dtype, copy=False) if big_endian else arr


def _read_legacy(f: BinaryIO, where: str) -> tuple[Any, dict[str, _Storage]]:
  storages: dict[str, _Storage] = {}
  file_size = os.fstat(f.fileno()).st_size
  magic = _unpickle(f, {}, where)
  if magic != LEGACY_MAGIC_NUMBER:
    raise CheckpointError(f"{where} is not a PyTorch checkpoint (bad magic number)")
  protocol = _unpickle(f, {}, where)
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise CheckpointError(f"{where}: unsupported legacy protocol version {protocol!r}")
  sys_info = _unpickle(f, {}, where)
  if not isinstance(sys_info, dict):
    raise CheckpointError(f"{where}: malformed sys_info record {sys_info!r}")
  big_endian = not sys_info.get("little_endian", True)
  obj = _unpickle(f, storages, where)
  keys = _unpickle(f, {}, where)
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise CheckpointError(f"{where}: malformed storage key list")
  for key in keys:
    storage = storages.get(key)
    if storage is None:
      raise CheckpointError(f"{where}: storage {key!r} is listed but never used by the pickle")
    head = f.read(8)
    if len(head) != 8:
      raise CheckpointError(f"{where}: file ends before storage {key!r} (truncated)")
    count = struct.unpack(">q" if big_endian else "<q", head)[0]
    if count != storage.numel:
      raise CheckpointError(f"{where}: storage {key!r} holds {count} elements, "
                            f"the pickle expects {storage.numel}")
    nbytes = count * storage.type.dtype.itemsize
    if nbytes > file_size - f.tell():
      raise CheckpointError(f"{where}: storage {key!r} is truncated: the file ends before its "
                            f"{nbytes} bytes")
    storage.data = _decode_storage(f.read(nbytes), storage, big_endian, where)
  return obj, storages


# What zipfile raises on damaged archives (bad CRC, names that are not UTF-8, unknown compression
# methods, truncated records); found by fuzzing (tests/test_torch_checkpoint.py).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
               struct.error)


def _read_zip(path: str, where: str) -> tuple[Any, dict[str, _Storage]]:
  storages: dict[str, _Storage] = {}
  try:
    zf = zipfile.ZipFile(path)
  except _ZIP_ERRORS as e:  # a damaged directory: bad names, sizes, offsets, methods
    raise CheckpointError(f"{where} is not a readable zip checkpoint: {e}") from None
  try:
    with zf:
      names = zf.namelist()
      pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
      if len(pkl) != 1:
        raise CheckpointError(f"{where}: zip checkpoint must hold exactly one '<archive>/data.pkl', "
                              f"found {len(pkl)}")
      prefix = pkl[0][: -len("data.pkl")]
      big_endian = False
      if prefix + "byteorder" in names:
        order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if order not in ("little", "big"):
          raise CheckpointError(f"{where}: unknown byteorder {order!r}")
        big_endian = order == "big"
      obj = _unpickle(zf.read(pkl[0]), storages, where)
      for key, storage in storages.items():
        member = f"{prefix}data/{key}"
        if member not in names:
          raise CheckpointError(f"{where}: storage file {member!r} is missing")
        nbytes = storage.numel * storage.type.dtype.itemsize
        if zf.getinfo(member).file_size < nbytes:
          raise CheckpointError(f"{where}: storage {key!r} is truncated: {member!r} holds "
                                f"{zf.getinfo(member).file_size} bytes, expected {nbytes}")
        with zf.open(member) as m:  # never more than the storage's size, whatever the zip claims
          storage.data = _decode_storage(m.read(nbytes), storage, big_endian, where)
  except CheckpointError:
    raise
  except _ZIP_ERRORS as e:  # the byteorder record and storages too
    raise CheckpointError(f"{where}: damaged zip checkpoint: {e}") from None
  return obj, storages


def _materialize(t: _Tensor, name: str, where: str) -> np.ndarray:
  storage = t.storage
  if storage.data is None:
    raise CheckpointError(f"{where}: tensor {name!r} uses storage {storage.key!r}, whose bytes "
                          "are missing")
  data = storage.data
  type_name = t.dtype_name or storage.type.name
  if type_name != storage.type.name:  # a typed view of untyped bytes (_rebuild_tensor_v3)
    if storage.type.name != "UntypedStorage":
      raise CheckpointError(f"{where}: tensor {name!r} is {type_name} on a {storage.type.name}")
    itemsize = _STORAGE_DTYPES[type_name].itemsize
    data = data[: data.size // itemsize * itemsize].view(_STORAGE_DTYPES[type_name])
  numel = math.prod(t.shape)
  if numel > data.size and numel * data.itemsize > MAX_EXPANDED_BYTES:
    raise CheckpointError(f"{where}: tensor {name!r} of size {list(t.shape)} would expand "
                          f"{data.size} stored elements to {numel * data.itemsize} bytes")
  if numel:
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
    if last >= data.size:
      raise CheckpointError(f"{where}: tensor {name!r} of size {list(t.shape)} (stride "
                            f"{list(t.stride)}, offset {t.offset}) reaches element {last} of "
                            f"storage {storage.key!r}, which holds {data.size}")
    view = np.lib.stride_tricks.as_strided(
        data[t.offset:], shape=t.shape, strides=[s * data.itemsize for s in t.stride],
        writeable=False)
    out = np.array(view, copy=True, order="C")
  else:
    out = np.zeros(t.shape, data.dtype)
  if type_name == "BFloat16Storage":  # widen exactly: bfloat16 bits are a float32's top half
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out


def _materialize_tree(obj: Any, name: str, where: str) -> Any:
  if isinstance(obj, _Tensor):
    return _materialize(obj, name, where)
  if isinstance(obj, _Storage):
    return obj.data
  if isinstance(obj, Mapping):
    out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialize_tree(v, f"{name}.{k}" if name else str(k), where)
    return out
  if isinstance(obj, (list, tuple)):
    items = [_materialize_tree(v, f"{name}[{i}]", where) for i, v in enumerate(obj)]
    return items if isinstance(obj, list) else tuple(items)
  return obj


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
  """Everything a `torch.save` file holds, tensors as numpy arrays (dicts, lists, numbers...)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointNotFoundError(f"checkpoint not found: {path}")
  if os.path.isdir(path):
    raise CheckpointError(f"checkpoint path is a folder, expected a .pth/.pt file: {path}")
  where = f"checkpoint {path}"
  if zipfile.is_zipfile(path):
    obj, _ = _read_zip(path, where)
  else:
    with open(path, "rb") as f:
      head = f.read(1)
      if not head:
        raise CheckpointError(f"{where} is empty")
      if head != b"\x80":
        raise CheckpointError(f"{where} is not a PyTorch checkpoint (neither zip nor pickle)")
      f.seek(0)
      obj, _ = _read_legacy(f, where)
  return _materialize_tree(obj, "", where)


def _is_state_dict(obj: Any) -> bool:
  return (isinstance(obj, Mapping) and len(obj) > 0 and
          all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()))


def _find_state_dict(obj: Any, key: str | None, where: str) -> dict[str, np.ndarray]:
  if key is not None:
    for part in key.split("/"):
      if not isinstance(obj, Mapping) or part not in obj:
        raise CheckpointError(f"{where} has no entry {key!r}")
      obj = obj[part]
    if not _is_state_dict(obj):
      raise CheckpointError(f"{where}: entry {key!r} is not a dict of tensors")
    return obj
  if _is_state_dict(obj):
    return obj
  if isinstance(obj, Mapping):
    for k in WRAPPER_KEYS:
      if _is_state_dict(obj.get(k)):
        return obj[k]
    nested = [k for k, v in obj.items() if _is_state_dict(v)]
    if len(nested) == 1:
      return obj[nested[0]]
    summary = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12])
    raise CheckpointError(f"{where} is not a state dict (a dict of tensors) and holds none under "
                          f"a single key; top-level entries: {summary}. Pass key=...")
  raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state dict")


def load_torch_state_dict(path: str | os.PathLike, key: str | None = None, *,
                          strip_prefix: str | None = "module.") -> dict[str, np.ndarray]:
  """A PyTorch state dict as `{name: numpy.ndarray}`, read safely (never executes the file).

  Accepts a bare state dict or a checkpoint that wraps one (under 'state_dict', 'model', ...,
  or the only dict of tensors in it); `key` names the entry explicitly ('a/b' for nesting).
  `strip_prefix` is removed from the names when all of them carry it (DataParallel's 'module.').
  """
  path = os.fspath(path)
  obj = load_torch_checkpoint(path)
  sd = _find_state_dict(obj, key, f"checkpoint {path}")
  out = {str(k): v for k, v in sd.items()}
  if strip_prefix and all(k.startswith(strip_prefix) for k in out):
    out = {k[len(strip_prefix):]: v for k, v in out.items()}
  return out
