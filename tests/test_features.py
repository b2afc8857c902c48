"""Feature extraction: normalisation, batching, cache hits and atomic cache writes."""
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from persistent import backbones, data, features


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), (2, 2))(x))
    return {"map": h, "pooled": h.mean((1, 2)), "zero": h.mean((1, 2)) * 0}


def tiny_backbone(seed=0):
  module = _Tiny()
  return backbones.Backbone(name="tiny", module=module,
                            params=backbones.random_params(module, (16, 16), seed),
                            input_size=(16, 16), preprocess=lambda x: x.astype(jnp.float32) / 255,
                            layers=("map", "pooled", "zero"), weights_id=f"random:{seed}")


def test_l2_normalize_keeps_zero_rows_finite():
  x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(features.l2_normalize(x), [[0.6, 0.8], [0, 0]])


def test_extract_matches_direct_application():
  src = data.open_source("synthetic:n=7,size=32")
  net = tiny_backbone()
  f = features.extract(net, "map", src, batch_size=3, progress=False, reduce="flatten")  # last batch padded
  assert f.shape == (7, 8 * 8 * 4)
  imgs = features.prepare([src[i] for i in range(7)], (16, 16))
  ref = np.asarray(net(imgs)["map"]).reshape(7, -1)
  np.testing.assert_allclose(f, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, rtol=1e-5)
  assert np.all(features.extract(net, "zero", src, batch_size=4, progress=False) == 0)
  with pytest.raises(KeyError, match="no layer 'fc6'"):
    features.extract(net, "fc6", src)


def test_cache_hit_and_key(tmp_path):
  src = data.open_source("synthetic:n=5,size=32")
  net = tiny_backbone()
  a = features.extract(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].endswith(".npy")
  np.save(tmp_path / files[0], np.full_like(a, 7.0))  # a hit must read the file, not recompute
  b = features.extract(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  assert np.all(b == 7.0)
  # Another layer, other weights or other data: different keys.
  keys = {features.cache_key(net, "pooled", src, True), features.cache_key(net, "map", src, True),
          features.cache_key(tiny_backbone(1), "pooled", src, True),
          features.cache_key(net, "pooled", data.open_source("synthetic:n=5,size=32,seed=1"), True),
          features.cache_key(net, "pooled", src.map(lambda e: e, "flip"), True)}
  assert len(keys) == 5


def test_interrupted_pass_leaves_no_cache(tmp_path):
  src = data.open_source("synthetic:n=6,size=32")
  it = features.iterate(tiny_backbone(), "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  next(it)
  it.close()  # consumer stops early
  assert os.listdir(tmp_path) == []
