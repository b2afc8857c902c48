"""persistent.backbones.state_dict: .safetensors reading without torch, tensor <-> parameter
matching on a small torch-named module, seeded random parameters; persistent.hashing."""
from __future__ import annotations

import hashlib
import sys

import flax.linen as nn
import numpy as np
import pytest

from persistent import hashing
from persistent.backbones import state_dict as sd_lib
from persistent.backbones import torch_checkpoint
from persistent.backbones.layers import FrozenBatchNorm


class _Net(nn.Module):
  """Submodules named as a torch module's: conv1, bn1, fc."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
    x = FrozenBatchNorm(name="bn1")(x)
    return nn.Dense(5, name="fc")(x.reshape(x.shape[0], -1))


def _torch_style():
  rng = np.random.default_rng(0)
  return {"conv1.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
          "bn1.weight": rng.random(4).astype(np.float32), "bn1.bias": rng.random(4).astype(np.float32),
          "bn1.running_mean": rng.random(4).astype(np.float32),
          "bn1.running_var": rng.random(4).astype(np.float32),
          "bn1.num_batches_tracked": np.array(3, np.int64),
          "fc.weight": rng.standard_normal((5, 4 * 6 * 6)).astype(np.float32),
          "fc.bias": rng.standard_normal(5).astype(np.float32)}


def _layout():
  expected = sd_lib.param_shapes(_Net(), (1, 6, 6, 2))
  return expected, sd_lib.with_kernel_perms(sd_lib.torch_entries(expected), expected)


def test_torch_names_and_axes():
  expected, entries = _layout()
  sd = _torch_style()
  params = sd_lib.assemble(sd, entries, expected, "net", "test")
  np.testing.assert_array_equal(params["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(params["bn1"]["var"], sd["bn1.running_var"])
  back = sd_lib.disassemble(params, entries)
  assert set(back) == set(sd) - {"bn1.num_batches_tracked"}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k])


def test_bad_tensors_are_named():
  expected, entries = _layout()
  sd = _torch_style()
  with pytest.raises(sd_lib.StateDictError, match=r"'fc\.bias' has dtype int64"):
    sd_lib.assemble(dict(sd, **{"fc.bias": np.zeros(5, np.int64)}), entries, expected, "net", "f")
  with pytest.raises(sd_lib.StateDictError, match=r"unexpected tensor 'head\.weight'"):
    sd_lib.assemble(dict(sd, **{"head.weight": sd["fc.weight"]}), entries, expected, "net", "f")
  params = sd_lib.assemble(dict(sd, **{"head.weight": sd["fc.weight"]}), entries, expected, "net",
                           "f", ignore=lambda k: k.startswith("head."))
  assert set(params) == {"conv1", "bn1", "fc"}


def test_safetensors_read_without_torch(tmp_path, monkeypatch):
  from safetensors.numpy import save_file
  sd = {k: v for k, v in _torch_style().items()}
  path = str(tmp_path / "net.safetensors")
  save_file(sd, path)
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` would now fail
  got = sd_lib.load_state_dict(path)
  assert set(got) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(got[k], sd[k])
  broken = tmp_path / "broken.safetensors"
  broken.write_bytes(open(path, "rb").read()[:100])
  with pytest.raises(torch_checkpoint.CheckpointError, match="broken.safetensors"):
    sd_lib.load_state_dict(str(broken))
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    sd_lib.load_state_dict(str(tmp_path / "nope.safetensors"))


def test_random_params_are_seeded_and_scaled():
  expected = {("fc", "kernel"): (400, 300), ("fc", "bias"): (300,), ("bn", "var"): (3,),
              ("pos_embed",): (1, 5, 2)}
  a, b = sd_lib.random_params(expected, 1), sd_lib.random_params(expected, 1)
  np.testing.assert_array_equal(a["fc"]["kernel"], b["fc"]["kernel"])
  assert not np.array_equal(a["fc"]["kernel"], sd_lib.random_params(expected, 2)["fc"]["kernel"])
  k = a["fc"]["kernel"]
  assert abs(k.std() * np.sqrt(400) - 1) < 0.02 and np.abs(k).max() <= 2 / np.sqrt(400) / 0.8796 + 1e-6
  assert (a["fc"]["bias"] == 0).all() and (a["bn"]["var"] == 1).all() and (a["pos_embed"] == 0).all()
  c = sd_lib.random_params(expected, 1, normal={"pos_embed": 0.02})
  assert 0 < np.abs(c["pos_embed"]).max() < 0.1


def test_file_digest(tmp_path):
  data = np.random.default_rng(0).integers(0, 256, hashing.CHUNK * 2 + 17, np.uint8).tobytes()
  path = tmp_path / "w.bin"
  path.write_bytes(data)
  assert hashing.file_digest(path) == hashlib.sha1(data).hexdigest()
