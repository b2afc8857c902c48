"""persistent.backbones.torch_checkpoint.load_torch_state_dict: both torch.save formats, built by hand here (no torch), a
real checkpoint of each format written by torch (tests/make_efficientnet_golden.py), the package's
legacy .pth, damaged files, and hostile pickles that must be refused without running."""
from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zipfile

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from persistent.backbones import torch_checkpoint as tio

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
STORAGE_CLASSES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
                   np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage",
                   np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
                   np.dtype(np.bool_): "BoolStorage", np.dtype(np.int8): "CharStorage",
                   np.dtype(np.int16): "ShortStorage"}


# ---------------------------------------------------------------------------------------------
# A tiny pickle assembler: emits protocol-2 opcodes the way torch.save's pickles use them.

def op_global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def op_str(s: str) -> bytes:
  raw = s.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def op_int(v: int) -> bytes:
  if 0 <= v < 256:
    return b"K" + bytes([v])
  if -2**31 <= v < 2**31:
    return b"J" + struct.pack("<i", v)
  raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(raw)]) + raw


def op_obj(v) -> bytes:
  """Plain values: str, int, bool, None, tuples of them, raw bytes (already opcodes)."""
  if isinstance(v, (bytes, bytearray)):
    return bytes(v)
  if v is None:
    return b"N"
  if isinstance(v, bool):
    return b"\x88" if v else b"\x89"
  if isinstance(v, int):
    return op_int(v)
  if isinstance(v, str):
    return op_str(v)
  if isinstance(v, tuple):
    return b"(" + b"".join(op_obj(x) for x in v) + b"t"
  raise TypeError(v)


def op_call(module: str, name: str, *args) -> bytes:
  """GLOBAL module.name, then REDUCE with args: what __reduce__ pickles to."""
  return op_global(module, name) + op_obj(tuple(args)) + b"R"


def op_storage(key: str, storage_class: str, numel: int, legacy: bool) -> bytes:
  pid = (b"(" + op_str("storage") + op_global("torch", storage_class) + op_str(key) + op_str("cpu") +
         op_int(numel) + (b"N" if legacy else b"") + b"t")
  return pid + b"Q"  # BINPERSID


def op_tensor(storage: bytes, offset: int, shape, stride, rebuild: str = "_rebuild_tensor_v2") -> bytes:
  hooks = op_call("collections", "OrderedDict")
  return op_call("torch._utils", rebuild, storage, offset, tuple(shape), tuple(stride), False, hooks)


def op_dict(items, ordered: bool = True) -> bytes:
  head = op_call("collections", "OrderedDict") if ordered else b"}"
  return head + b"(" + b"".join(op_obj(k) + op_obj(v) for k, v in items) + b"u"


def pickled(body: bytes) -> bytes:
  return b"\x80\x02" + body + b"."


class Checkpoint:
  """Tensors laid out in storages, written as a legacy or zip torch.save file."""

  def __init__(self):
    self.storages: dict[str, np.ndarray] = {}

  def storage(self, key: str, data: np.ndarray) -> str:
    self.storages[key] = np.ascontiguousarray(data).reshape(-1)
    return key

  def tensor(self, key: str, offset: int, shape, stride, legacy: bool, storage_class=None, **kw) -> bytes:
    data = self.storages[key]
    cls = storage_class or STORAGE_CLASSES[data.dtype]
    return op_tensor(op_storage(key, cls, data.size, legacy), offset, shape, stride, **kw)

  def write(self, path, main: bytes, legacy: bool, big_endian: bool = False,
            sys_info: bytes | None = None) -> str:
    path = str(path)
    order = ">" if big_endian else "<"
    keys = sorted(self.storages)
    if legacy:
      info = sys_info or pickle.dumps({"protocol_version": 1001, "little_endian": not big_endian,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
      with open(path, "wb") as f:
        f.write(pickle.dumps(tio.LEGACY_MAGIC_NUMBER, protocol=2))
        f.write(pickle.dumps(tio.LEGACY_PROTOCOL_VERSION, protocol=2))
        f.write(info)
        f.write(main)
        f.write(pickle.dumps(keys, protocol=2))
        for k in keys:
          d = self.storages[k]
          f.write(struct.pack(order + "q", d.size))
          f.write(d.astype(d.dtype.newbyteorder(order)).tobytes())
    else:
      with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", main)
        z.writestr("archive/byteorder", "big" if big_endian else "little")
        z.writestr("archive/version", "3\n")
        for k in keys:
          d = self.storages[k]
          z.writestr(f"archive/data/{k}", d.astype(d.dtype.newbyteorder(order)).tobytes())
    return path


FORMATS = pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])


def mixed_checkpoint(legacy: bool):
  """A state dict exercising dtypes, strides, offsets and shared storage; returns (ckpt, main, expected)."""
  rng = np.random.default_rng(0)
  c = Checkpoint()
  f32 = rng.standard_normal(24).astype(np.float32)
  c.storage("0", f32)
  shared = np.arange(10, dtype=np.int64) * 3
  c.storage("1", shared)
  bf16_values = np.array([1.0, -2.5, 3.140625, 0.0, 2.0**-10, -65536.0], np.float32)
  c.storage("2", (bf16_values.view(np.uint32) >> 16).astype(np.uint16))
  small = {"3": rng.standard_normal(5).astype(np.float16), "4": rng.standard_normal(6),
           "5": np.array([-5, 0, 7], np.int32), "6": np.array([0, 255, 17, 3], np.uint8),
           "7": np.array([True, False, True])}
  for k, v in small.items():
    c.storage(k, v)
  items = [
      ("f32", c.tensor("0", 0, (2, 3, 4), (12, 4, 1), legacy)),
      ("f32_transposed", c.tensor("0", 0, (4, 6), (1, 4), legacy)),
      ("i64_slice", c.tensor("1", 3, (5,), (1,), legacy)),
      ("i64_full", c.tensor("1", 0, (10,), (1,), legacy)),
      ("bf16", c.tensor("2", 0, (2, 3), (3, 1), legacy, storage_class="BFloat16Storage")),
      ("f16", c.tensor("3", 0, (5,), (1,), legacy)),
      ("f64", c.tensor("4", 0, (3, 2), (2, 1), legacy)),
      ("i32", c.tensor("5", 0, (3,), (1,), legacy)),
      ("u8", c.tensor("6", 0, (2, 2), (2, 1), legacy)),
      ("bool", c.tensor("7", 0, (3,), (1,), legacy)),
      ("scalar", c.tensor("0", 5, (), (), legacy)),
      ("empty", c.tensor("0", 0, (0, 4), (4, 1), legacy)),
      ("param", op_call("torch._utils", "_rebuild_parameter",
                        c.tensor("4", 2, (2,), (1,), legacy), True, op_call("collections", "OrderedDict"))),
  ]
  expected = {
      "f32": f32.reshape(2, 3, 4), "f32_transposed": f32[:24].reshape(6, 4).T, "i64_slice": shared[3:8],
      "i64_full": shared, "bf16": bf16_values.reshape(2, 3), "f16": small["3"],
      "f64": small["4"].reshape(3, 2), "i32": small["5"], "u8": small["6"].reshape(2, 2),
      "bool": small["7"], "scalar": np.float32(f32[5]).reshape(()), "empty": np.zeros((0, 4), np.float32),
      "param": small["4"][2:4],
  }
  return c, op_dict(items), expected


def assert_state_dict_equal(got, expected):
  assert list(got) == list(expected)
  for k, v in expected.items():
    assert got[k].dtype == np.asarray(v).dtype, k
    assert got[k].shape == np.shape(v), k
    np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert got[k].flags.c_contiguous, k


# ---------------------------------------------------------------------------------------------
# Reading.

@FORMATS
@pytest.mark.parametrize("big_endian", [False, True], ids=["little", "big"])
def test_hand_built_checkpoint_round_trips(tmp_path, legacy, big_endian):
  c, main, expected = mixed_checkpoint(legacy)
  path = c.write(tmp_path / "ckpt.pth", pickled(main), legacy, big_endian=big_endian)
  sd = tio.load_torch_state_dict(path)
  assert isinstance(sd, dict)
  assert_state_dict_equal(sd, expected)


@FORMATS
@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_wrapped_state_dict_is_found(tmp_path, legacy, wrapper):
  c, main, expected = mixed_checkpoint(legacy)
  body = op_dict([("epoch", 7), (wrapper, main), ("arch", "x")], ordered=False)
  path = c.write(tmp_path / "ckpt.pth", pickled(body), legacy)
  assert_state_dict_equal(tio.load_torch_state_dict(path), expected)
  assert_state_dict_equal(tio.load_torch_state_dict(path, key=wrapper), expected)
  whole = tio.load_torch_checkpoint(path)
  assert whole["epoch"] == 7 and whole["arch"] == "x"
  with pytest.raises(tio.CheckpointError, match="no entry 'nope'"):
    tio.load_torch_state_dict(path, key="nope")


def test_ambiguous_checkpoint_asks_for_key(tmp_path):
  c, main, _ = mixed_checkpoint(False)
  path = c.write(tmp_path / "two.pt", pickled(op_dict([("a", main), ("b", main)], ordered=False)), False)
  with pytest.raises(tio.CheckpointError, match="Pass key"):
    tio.load_torch_state_dict(path)
  assert set(tio.load_torch_state_dict(path, key="b")) == set(tio.load_torch_state_dict(path, key="a"))


def test_data_parallel_prefix_is_stripped(tmp_path):
  c = Checkpoint()
  c.storage("0", np.arange(4, dtype=np.float32))
  main = op_dict([("module.a", c.tensor("0", 0, (2,), (1,), False)),
                  ("module.b", c.tensor("0", 2, (2,), (1,), False))])
  path = c.write(tmp_path / "dp.pt", pickled(main), False)
  assert list(tio.load_torch_state_dict(path)) == ["a", "b"]
  assert list(tio.load_torch_state_dict(path, strip_prefix=None)) == ["module.a", "module.b"]


def test_rebuild_tensor_v3_on_untyped_storage(tmp_path):
  c = Checkpoint()
  values = np.array([1.5, -2.0, 4.25], np.float32)
  c.storage("0", values.view(np.uint8))
  tensor = op_call("torch._utils", "_rebuild_tensor_v3",
                   op_storage("0", "UntypedStorage", 12, False), 0, (3,), (1,), False,
                   op_call("collections", "OrderedDict"), op_global("torch", "float32"))
  path = c.write(tmp_path / "v3.pt", pickled(op_dict([("w", tensor)])), False)
  np.testing.assert_array_equal(tio.load_torch_state_dict(path)["w"], values)


@pytest.mark.parametrize("name", ["torch_small_legacy.pt", "torch_small_zip.pt"])
def test_files_written_by_real_torch(name):
  expected = np.load(os.path.join(FIXTURES, "torch_small_expected.npz"))
  sd = tio.load_torch_state_dict(os.path.join(FIXTURES, name))
  assert_state_dict_equal(sd, {k: expected[k] for k in expected.files})


def test_efficientnet_package_checkpoint():
  from persistent.backbones import efficientnet
  try:
    path = efficientnet.default_weights_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  sd = tio.load_torch_state_dict(path)
  assert len(sd) == 296
  assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.weight"].dtype == np.float32
  assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert sd["_bn0.num_batches_tracked"].dtype == np.int64
  assert sum(v.size for v in sd.values()) == 4_694_073
  assert all(np.isfinite(v).all() for v in sd.values())


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data(),
                  legacy=st.booleans(), dtype=st.sampled_from(sorted(STORAGE_CLASSES, key=str)))
def test_any_permuted_view(tmp_path_factory, shape, data, legacy, dtype):
  """A permuted view of a contiguous array (what .t()/.permute() save) reads back equal."""
  perm = data.draw(st.permutations(range(len(shape))))
  offset = data.draw(st.integers(0, 3))
  size = int(np.prod(shape))
  base = (np.arange(offset + size) * 37 % 251).astype(dtype)
  c = Checkpoint()
  c.storage("0", base)
  contiguous = base[offset:].reshape(shape)
  view = contiguous.transpose(perm)
  strides = tuple(s // base.itemsize for s in view.strides)
  main = op_dict([("t", c.tensor("0", offset, view.shape, strides, legacy))])
  path = c.write(tmp_path_factory.mktemp("h") / "t.pt", pickled(main), legacy)
  got = tio.load_torch_state_dict(path)["t"]
  assert got.dtype == dtype
  np.testing.assert_array_equal(got, view)


# ---------------------------------------------------------------------------------------------
# Missing and damaged files.

def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    tio.load_torch_state_dict(tmp_path / "absent.pth")
  with pytest.raises(tio.CheckpointError, match="folder"):
    tio.load_torch_state_dict(tmp_path)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"PK\x03\x04 this is not really a zip", "not a PyTorch checkpoint|zip"),
    (b"\x89PNG\r\n\x1a\n", "not a PyTorch checkpoint"),
    (pickle.dumps(12345, protocol=2), "bad magic number"),
    (b"\x80\x02\x8a\x0a", "damaged or not a PyTorch checkpoint"),
])
def test_garbage_files(tmp_path, content, match):
  path = tmp_path / "bad.pth"
  path.write_bytes(content)
  with pytest.raises(tio.CheckpointError, match=match):
    tio.load_torch_state_dict(path)


@pytest.mark.parametrize("cut", [10, 200, 60])
def test_truncated_legacy_file(tmp_path, cut):
  c, main, _ = mixed_checkpoint(True)
  path = c.write(tmp_path / "ckpt.pth", pickled(main), True)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-cut])
  with pytest.raises(tio.CheckpointError, match="truncated|ends before|damaged"):
    tio.load_torch_state_dict(path)


def rewritten_zip(tmp_path, edit):
  """A hand-built zip checkpoint copied member by member through edit(name, bytes) -> bytes | None."""
  c, main, _ = mixed_checkpoint(False)
  path = c.write(tmp_path / "ckpt.pt", pickled(main), False)
  out = tmp_path / "edited.pt"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
    for n in src.namelist():
      data = edit(n, src.read(n))
      if data is not None:
        dst.writestr(n, data)
  return out


def test_zip_missing_storage_names_it(tmp_path):
  path = rewritten_zip(tmp_path, lambda n, d: None if n == "archive/data/3" else d)
  with pytest.raises(tio.CheckpointError, match="archive/data/3"):
    tio.load_torch_state_dict(path)


def test_zip_short_storage_names_it(tmp_path):
  path = rewritten_zip(tmp_path, lambda n, d: d[:3] if n == "archive/data/4" else d)
  with pytest.raises(tio.CheckpointError, match="storage '4'.*truncated"):
    tio.load_torch_state_dict(path)


def test_zip_without_data_pkl(tmp_path):
  path = rewritten_zip(tmp_path, lambda n, d: None if n.endswith("data.pkl") else d)
  with pytest.raises(tio.CheckpointError, match="data.pkl"):
    tio.load_torch_state_dict(path)


@FORMATS
def test_tensor_past_its_storage_is_named(tmp_path, legacy):
  c = Checkpoint()
  c.storage("0", np.zeros(6, np.float32))
  main = op_dict([("ok", c.tensor("0", 0, (2, 3), (3, 1), legacy)),
                  ("layer.weight", c.tensor("0", 2, (2, 3), (3, 1), legacy))])
  path = c.write(tmp_path / "ckpt", pickled(main), legacy)
  with pytest.raises(tio.CheckpointError, match="tensor 'layer.weight'"):
    tio.load_torch_state_dict(path)


@FORMATS
def test_expanded_views(tmp_path, legacy):
  """Stride-0 views (torch's expand) read back; absurd expansions are refused, not allocated."""
  c = Checkpoint()
  c.storage("0", np.array([1.0, 2.0], np.float32))
  main = op_dict([("row", c.tensor("0", 0, (3, 2), (0, 1), legacy)),
                  ("bomb", c.tensor("0", 0, (1 << 20, 1 << 20), (0, 0), legacy))])
  path = c.write(tmp_path / "ckpt", pickled(main), legacy)
  with pytest.raises(tio.CheckpointError, match="tensor 'bomb'.*would expand"):
    tio.load_torch_state_dict(path)
  path = c.write(tmp_path / "ok", pickled(op_dict([("row", c.tensor("0", 0, (3, 2), (0, 1), legacy))])), legacy)
  np.testing.assert_array_equal(tio.load_torch_state_dict(path)["row"], [[1, 2]] * 3)


def test_huge_claimed_storage_is_not_allocated(tmp_path):
  c = Checkpoint()
  c.storage("0", np.zeros(4, np.float32))
  main = op_dict([("w", op_tensor(op_storage("0", "FloatStorage", 1 << 40, True), 0, (4,), (1,)))])
  path = c.write(tmp_path / "ckpt", pickled(main), True)
  data = bytearray(open(path, "rb").read())
  i = data.rindex(struct.pack("<q", 4))  # the storage's element count, just before its bytes
  data[i:i + 8] = struct.pack("<q", 1 << 40)
  open(path, "wb").write(bytes(data))
  with pytest.raises(tio.CheckpointError, match="storage '0' is truncated"):
    tio.load_torch_state_dict(path)


def test_legacy_element_count_mismatch(tmp_path):
  c = Checkpoint()
  c.storage("0", np.zeros(6, np.float32))
  main = op_dict([("w", op_tensor(op_storage("0", "FloatStorage", 8, True), 0, (8,), (1,)))])
  path = c.write(tmp_path / "ckpt", pickled(main), True)
  with pytest.raises(tio.CheckpointError, match="storage '0' holds 6 elements"):
    tio.load_torch_state_dict(path)


def test_not_a_state_dict(tmp_path):
  c = Checkpoint()
  path = c.write(tmp_path / "list.pt", pickled(op_obj((1, 2, "x"))), False)
  with pytest.raises(tio.CheckpointError, match="not a state dict"):
    tio.load_torch_state_dict(path)
  assert tio.load_torch_checkpoint(path) == (1, 2, "x")


# ---------------------------------------------------------------------------------------------
# Hostile pickles: refused before anything runs.

def payloads(marker: str) -> dict[str, bytes]:
  """Pickle fragments that create `marker` when an ordinary unpickler evaluates them."""
  touch_py = f"open({marker!r}, 'w').close()"
  return {
      "os.system": op_call("os", "system", f"touch '{marker}'"),
      "posix.system": op_call("posix", "system", f"touch '{marker}'"),
      "exec": op_call("builtins", "exec", touch_py),
      "eval": op_call("builtins", "eval", f"__import__('pathlib').Path({marker!r}).touch()"),
      "subprocess.Popen": op_call("subprocess", "Popen", ("touch", marker)),
      "subprocess.call": op_call("subprocess", "call", ("touch", marker)),
      "subprocess.run": op_call("subprocess", "run", ("touch", marker)),
      # The same through other opcodes: STACK_GLOBAL (protocol 4) and INST.
      "stack_global exec": op_str("builtins") + op_str("exec") + b"\x93" + op_obj((touch_py,)) + b"R",
      "inst os.system": b"(" + op_str(f"touch '{marker}'") + b"ios\nsystem\n",
  }


PAYLOAD_NAMES = list(payloads("m"))


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_payloads_are_live(tmp_path, name):
  """Control: each payload really does run under plain pickle.loads, so refusing it means something."""
  marker = tmp_path / "pwned"
  body = payloads(str(marker))[name]
  obj = pickle.loads(b"\x80\x04" + body + b".")
  if hasattr(obj, "wait"):
    obj.wait()
  assert marker.exists()


def _refuses(path, marker):
  with pytest.raises(tio.UnsafeCheckpointError, match="refusing") as info:
    tio.load_torch_state_dict(path)
  assert not marker.exists(), "the payload ran"
  return str(info.value)


@FORMATS
@pytest.mark.parametrize("name", PAYLOAD_NAMES)
@pytest.mark.parametrize("where", ["top", "value", "storage_id"])
def test_hostile_main_pickle_is_refused(tmp_path, legacy, name, where):
  marker = tmp_path / "pwned"
  payload = payloads(str(marker))[name]
  c, main, _ = mixed_checkpoint(legacy)
  if where == "top":
    body = payload
  elif where == "value":  # hidden among real tensors
    body = op_dict([("a", c.tensor("0", 0, (4,), (1,), legacy)), ("evil", payload)])
  else:  # inside the storage persistent id, where a storage class belongs
    body = op_dict([("a", op_tensor(b"(" + op_str("storage") + payload + op_str("0") + op_str("cpu") +
                                    op_int(24) + b"t" + b"Q", 0, (4,), (1,)))])
  path = c.write(tmp_path / "evil.pth", pickled(body), legacy)
  message = _refuses(path, marker)
  assert "never runs code" in message or "never" in message


@pytest.mark.parametrize("name", ["os.system", "exec", "subprocess.Popen"])
def test_hostile_legacy_header_is_refused(tmp_path, name):
  """The sys_info record of the legacy format is unpickled too: same restrictions."""
  marker = tmp_path / "pwned"
  c, main, _ = mixed_checkpoint(True)
  path = c.write(tmp_path / "evil.pth", pickled(main), True,
                 sys_info=pickled(payloads(str(marker))[name]))
  _refuses(path, marker)


@pytest.mark.parametrize("module,name", [("torch.nn.modules.linear", "Linear"),
                                         ("numpy.core.multiarray", "_reconstruct"),
                                         ("builtins", "getattr"), ("torch", "load")])
def test_other_globals_are_refused(tmp_path, module, name):
  path = Checkpoint().write(tmp_path / "x.pt", pickled(op_call(module, name)), False)
  with pytest.raises(tio.UnsafeCheckpointError, match=f"'{module}.{name}'"):
    tio.load_torch_state_dict(path)


@pytest.mark.parametrize("target,state,as_slots", [
    (op_global("torch", "FloatStorage"), {"name": "DoubleStorage"}, False),  # __dict__.update
    (op_global("torch", "Tensor"), {"name": "x"}, False),
    (op_global("torch._utils", "_rebuild_tensor_v2"), {"__kwdefaults__": None}, True),  # setattr
], ids=["storage-dict", "tensor-dict", "function-setattr"])
def test_build_cannot_tamper_with_later_loads(tmp_path, target, state, as_slots):
  """BUILD (setstate/setattr) on an admitted global alters at most that load's own copy."""
  state_ops = op_dict(list(state.items()), ordered=False)
  if as_slots:
    state_ops = b"N" + state_ops + b"\x86"  # (None, slotstate): setattr for each item
  evil = Checkpoint().write(tmp_path / "evil.pt", pickled(target + state_ops + b"b"), False)
  try:
    tio.load_torch_checkpoint(evil)
  except tio.CheckpointError:
    pass
  expected = np.load(os.path.join(FIXTURES, "torch_small_expected.npz"))
  sd = tio.load_torch_state_dict(os.path.join(FIXTURES, "torch_small_zip.pt"))
  assert_state_dict_equal(sd, {k: expected[k] for k in expected.files})
  torch_v3 = tio._SAFE_GLOBALS[("torch", "float32")]
  assert tio._SAFE_GLOBALS[("torch", "FloatStorage")].name == "FloatStorage" and torch_v3.storage == "FloatStorage"


def test_pickled_module_persistent_id_is_refused(tmp_path):
  """torch.save(model) in the legacy format refers to module source through ('module', ...) ids."""
  body = b"(" + op_str("module") + op_str("Net") + op_str("net.py") + op_str("class Net: ...") + b"tQ"
  path = Checkpoint().write(tmp_path / "m.pth", pickled(body), True)
  with pytest.raises(tio.UnsafeCheckpointError, match="persistent id of kind 'module'"):
    tio.load_torch_state_dict(path)


def test_reader_does_not_need_torch(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` would now fail
  sd = tio.load_torch_state_dict(os.path.join(FIXTURES, "torch_small_zip.pt"))
  assert sd["param"].shape == (2, 2)


# ---------------------------------------------------------------------------------------------
# Fuzzing: files torch wrote, damaged byte by byte (as tests/test_data_fuzz.py does for the data
# readers), load or raise CheckpointError naming the file, quickly; nothing else escapes.

sys.path.insert(0, os.path.dirname(__file__))
from fuzz_tools import byte_op, mutate_bytes  # noqa: E402


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(st.sampled_from(["torch_small_zip.pt", "torch_small_legacy.pt"]),
                  st.lists(byte_op, min_size=1, max_size=4))
def test_damaged_files_raise_checkpoint_errors_naming_them(tmp_path_factory, name, ops):
  import time
  path = tmp_path_factory.mktemp("fuzz") / name
  path.write_bytes(mutate_bytes(open(os.path.join(FIXTURES, name), "rb").read(), ops))
  start = time.perf_counter()
  try:
    got = tio.load_torch_state_dict(path)
    assert all(isinstance(v, np.ndarray) for v in got.values())
  except tio.CheckpointError as e:
    assert str(path) in str(e), e
  assert time.perf_counter() - start < 3.0
