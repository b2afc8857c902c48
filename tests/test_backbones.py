"""The Backbone contract for every registered backbone: taps in network order, one-pass `taps`,
JSON-able preprocessing that says what `preprocess` does, weights ids; hostile pickles in place of
any weights file refused without running; `convert_weights` folders that load back identically."""
from __future__ import annotations

import hashlib
import json
import re

import jax
import numpy as np
import pytest

from persistent import backbones
from persistent.backbones import resnet
from persistent.backbones import state_dict as sd_lib
from persistent.backbones import torch_checkpoint
from test_torch_checkpoint import Checkpoint, payloads, pickled

# Every backbone but the generic 'caffe' (which needs a net definition; see test_caffe.py).
NAMES = [n for n in backbones.names() if n != "caffe"]
# Backbones that read users' PyTorch-ecosystem weights files.
FILE_BACKBONES = ["resnet18", "resnet50", "vgg16", "vit_small_patch16_224", "vit_base_patch16_224",
                  "dinov2_vits14", "dinov2_vitb14", "clip_vit_b16", "open_clip_vit_b16",
                  "efficientnet_lite0"]


def test_every_file_backbone_is_listed():
  assert set(FILE_BACKBONES) | {"alexnet", "caffenet"} == set(NAMES)


@pytest.fixture(scope="module")
def random_backbones():
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = backbones.create(name, "random", seed=0)
    return cache[name]
  return get


@pytest.mark.parametrize("name", NAMES)
def test_layers_are_every_tap_in_network_order(random_backbones, name):
  """`layers` equals the order in which the module computes its taps (traced, not run)."""
  bb = random_backbones(name)
  order = []

  def forward(params, images):
    out = bb.module.apply({"params": params}, bb.preprocess(images))
    order.extend(out)
    return out
  shapes = jax.eval_shape(forward, bb.params, jax.ShapeDtypeStruct((2, *bb.input_size, 3), np.uint8))
  assert order == list(bb.layers) and len(set(order)) == len(order)
  for layer, s in shapes.items():
    assert s.shape[0] == 2 and s.ndim in (2, 4), (layer, s.shape)
  assert bb.weights_id == "random:0"


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_describes_preprocess(random_backbones, name):
  bb = random_backbones(name)
  desc = json.loads(json.dumps(bb.preprocessing))
  assert desc["input_size"] == list(bb.input_size) and desc["pixel_range"] == [0, 255]
  images = np.random.default_rng(0).integers(0, 256, (2, *bb.input_size, 3), dtype=np.uint8)
  x = images.astype(np.float64)
  x = x[..., ::-1] if desc["channels"] == "BGR" else x
  want = (x - np.asarray(desc["mean"])) / np.asarray(desc["std"])
  np.testing.assert_allclose(np.asarray(bb.preprocess(images)), want, rtol=1e-5, atol=1e-4)


def test_preprocessing_of_the_references(random_backbones):
  """Spot checks against the references' own published numbers."""
  def desc(name):
    return random_backbones(name).preprocessing
  r = desc("resnet50")
  np.testing.assert_allclose(r["mean"], [0.485 * 255, 0.456 * 255, 0.406 * 255])
  np.testing.assert_allclose(r["std"], [0.229 * 255, 0.224 * 255, 0.225 * 255])
  assert (r["resize"], r["resize_to"], r["crop"]) == ("bilinear", 256, "center")
  v = desc("vit_small_patch16_224")
  assert v["mean"] == [127.5] * 3 and v["resize"] == "bicubic" and v["resize_to"] == 248
  c = desc("clip_vit_b16")
  np.testing.assert_allclose(c["std"], np.array([0.26862954, 0.26130258, 0.27577711]) * 255)
  assert desc("alexnet")["channels"] == "BGR"


def test_taps_run_one_forward_pass_for_several_layers(random_backbones):
  bb = random_backbones("resnet18")
  images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  full = bb(images)
  layers = ["layer2", "head", "logits"]
  fn = bb.taps(layers)
  out = fn(images)
  assert list(out) == sorted(layers)
  for layer in layers:
    np.testing.assert_allclose(out[layer], full[layer], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bb.tap("layer3")(images), full["layer3"], rtol=1e-5, atol=1e-6)
  # One compiled program holding the network once (resnet18: 20 convolutions), pruned to what
  # the layers need (layer2: the stem, layer1 and layer2's 10 convolutions).
  def convolutions(f):
    text = jax.jit(f).lower(jax.ShapeDtypeStruct(images.shape, np.uint8)).compile().as_text()
    return len(re.findall(r"= \S+ convolution\(", text))
  assert convolutions(fn) == 20 and convolutions(bb.taps(["layer2"])) == 10
  with pytest.raises(KeyError, match="no layer 'fc7'.*layers: stem, layer1"):
    bb.taps(["head", "fc7"])


def test_weights_ids(tmp_path):
  path = _resnet18_file(tmp_path)
  digest = hashlib.sha1(open(path, "rb").read()).hexdigest()
  assert backbones.create("resnet18", path).weights_id == f"sha1:{digest}"
  assert backbones.create("resnet18", "random", seed=7).weights_id == "random:7"


def _resnet18_file(tmp_path) -> str:
  """A resnet18 state dict as .safetensors, written without torch."""
  from safetensors.numpy import save_file
  params = sd_lib.random_params(resnet.expected_shapes("resnet18"), 3)
  path = str(tmp_path / "resnet18.safetensors")
  save_file(sd_lib.disassemble(params, resnet.entries("resnet18")), path)
  return path


@pytest.mark.parametrize("name", FILE_BACKBONES)
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_hostile_pickle_weights_are_refused(tmp_path, name, legacy):
  marker = tmp_path / "pwned"
  body = payloads(str(marker))["os.system"]
  path = Checkpoint().write(tmp_path / f"{name}.pth", pickled(body), legacy)
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match="refusing"):
    backbones.create(name, weights=path)
  assert not marker.exists(), "the payload ran"


def test_pickle_posing_as_safetensors_is_not_run(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "model.safetensors"
  path.write_bytes(b"\x80\x02" + payloads(str(marker))["exec"] + b".")
  with pytest.raises(torch_checkpoint.CheckpointError, match="model.safetensors"):
    backbones.create("vit_small_patch16_224", weights=str(path))
  assert not marker.exists()


def test_convert_weights_round_trip(tmp_path, capsys):
  from persistent.tools import convert_weights
  path = _resnet18_file(tmp_path)
  out = str(tmp_path / "converted")
  assert convert_weights.main(["--name", "resnet18", "--weights", path, "--out", out]) == 0
  report = json.loads(capsys.readouterr().out)
  direct, converted = backbones.create("resnet18", path), backbones.create("resnet18", out)
  assert report["weights_id"] == direct.weights_id == converted.weights_id
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, direct.params, converted.params)))
  assert convert_weights.main(["--name", "resnet18", "--weights", path, "--out", out]) == 1
  assert "--force" in capsys.readouterr().err
  # A file of another network: the error names the first tensor vgg16 lacks.
  assert convert_weights.main(["--name", "vgg16", "--weights", path, "--out", str(tmp_path / "v")]) == 1
  assert "classifier.0.bias' is missing" in capsys.readouterr().err
  with pytest.raises(sd_lib.StateDictError, match="converted for the 'resnet18' backbone"):
    backbones.create("resnet50", out)
