"""AlexNet module in Caffe layout and Caffe's layer semantics, against hand-written references."""
import jax.numpy as jnp
import numpy as np
import pytest

from persistent import backbones
from persistent.backbones import alexnet, caffe_ops


def lrn_reference(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
  out = np.empty_like(x, dtype=np.float64)
  c = x.shape[-1]
  for i in range(c):
    lo, hi = max(0, i - (n - 1) // 2), min(c, i + n // 2 + 1)
    s = (x[..., lo:hi].astype(np.float64) ** 2).sum(-1)
    out[..., i] = x[..., i] / (k + alpha / n * s) ** beta
  return out


def test_lrn_matches_reference():
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 11)).astype(np.float32) * 30
  np.testing.assert_allclose(caffe_ops.lrn_across_channels(jnp.asarray(x)), lrn_reference(x), rtol=1e-5)


@pytest.mark.parametrize("size,k,s,p,expected", [
    (55, 3, 2, 0, 27), (13, 3, 2, 0, 6), (6, 3, 2, 0, 3),  # ceil mode: (6-3)/2 -> 2.5 -> 3
    (112, 3, 2, 0, 56), (112, 3, 2, 1, 57),
    (7, 2, 2, 1, 4), (5, 3, 3, 1, 2)])  # these two: a last window starting in the padding is dropped
def test_pool_output_size(size, k, s, p, expected):
  assert caffe_ops.pool_output_size(size, k, s, p) == expected


def test_max_pool_clips_last_window():
  x = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1)
  out = np.asarray(caffe_ops.max_pool(jnp.asarray(x), (3, 3), (2, 2)))
  assert out.shape == (1, 3, 3, 1)
  # Window rows/cols {4, 5} at the end (clipped), max is the bottom-right element.
  assert out[0, 2, 2, 0] == 35 and out[0, 0, 0, 0] == 14


@pytest.mark.parametrize("name", ["alexnet", "caffenet"])
def test_layers_and_shapes(name):
  net = backbones.create(name, "random", seed=1)
  out = net(np.random.default_rng(0).integers(0, 256, (2, 227, 227, 3), dtype=np.uint8))
  assert set(out) == set(alexnet.LAYERS)
  assert out["pool5"].shape == (2, 6, 6, 256) and out["fc6"].shape == (2, 4096)
  assert float(out["fc6"].min()) >= 0 and float(out["fc7"].min()) >= 0  # post-ReLU, as Caffe's
  np.testing.assert_allclose(out["prob"].sum(-1), 1, rtol=1e-5)
  if name == "alexnet":
    np.testing.assert_allclose(out["norm1"], lrn_reference(np.asarray(out["conv1"])), rtol=1e-4, atol=1e-6)
  else:
    np.testing.assert_allclose(out["norm1"], lrn_reference(np.asarray(out["pool1"])), rtol=1e-4, atol=1e-6)


def test_fc6_flattens_in_caffe_order():
  net = backbones.create("alexnet", "random", seed=0)
  out = net(np.full((1, 227, 227, 3), 128, np.uint8))
  chw = np.transpose(np.asarray(out["pool5"]), (0, 3, 1, 2)).reshape(1, -1)
  p = net.params["fc6"]
  np.testing.assert_allclose(out["fc6"], np.maximum(chw @ np.asarray(p["kernel"]) + np.asarray(p["bias"]), 0),
                             rtol=1e-4, atol=1e-5)


def test_preprocess_is_bgr_minus_mean():
  img = np.zeros((1, 1, 1, 3), np.uint8)
  img[..., 0] = 200  # red
  np.testing.assert_allclose(alexnet.preprocess(jnp.asarray(img))[0, 0, 0],
                             [-104.007, -116.669, 200 - 122.679], rtol=1e-6)


def test_random_weights_are_seeded_and_missing_weights_explained():
  a = backbones.create("alexnet", "random", seed=3).params["conv1"]["kernel"]
  b = backbones.create("alexnet", "random", seed=3).params["conv1"]["kernel"]
  np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match="bvlc_alexnet.caffemodel"):
    backbones.create("alexnet")
  with pytest.raises(KeyError, match="unknown backbone 'vgg99'"):
    backbones.create("vgg99")
