"""Semantic directions (Section 4): decomposition, the synthetic end to end run, bad input."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import directions as directions_config
from persistent import experiment
from persistent.tasks import directions


def test_decompose_and_alter():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(5, 7))
  f /= np.linalg.norm(f, axis=1, keepdims=True)
  w = rng.normal(size=7)
  w /= np.linalg.norm(w)
  p, rest = directions.decompose(f, w)
  np.testing.assert_allclose(rest @ w, 0, atol=1e-12)
  np.testing.assert_allclose(p[:, None] * w + rest, f, atol=1e-12)
  out = directions.alter(f, w, np.array([-1.0, 0.0, 2.0]))
  assert out.shape == (5, 3, 7)
  np.testing.assert_allclose(out @ w, np.broadcast_to([-1.0, 0.0, 2.0], (5, 3)), atol=1e-12)
  np.testing.assert_allclose(out[:, 1], rest, atol=1e-12)  # lambda = 0 leaves the orthogonal part
  unit = directions.alter(f, w, np.array([-1.0, 0.5]), renormalize=True)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1, atol=1e-12)


def small_config(tmp_path, **overrides):
  c = directions_config.get_config()
  c.data.train = "synthetic:n=160,size=48,max_objects=1"
  c.data.test = "synthetic:n=6,size=48,seed=1,max_objects=1"
  c.directions.attributes = ("red", "green")
  c.directions.size, c.directions.readout_size, c.directions.num_examples = 8, 6, 6
  c.features.cache_dir = str(tmp_path / "cache")
  c.batch_size = 32
  for k, v in overrides.items():
    c[k] = v
  return c


def test_moving_along_a_direction_changes_the_decoded_attribute(tmp_path):
  work = tmp_path / "run"
  m = experiment.run(small_config(tmp_path), str(work))
  assert json.loads((work / "metrics.json").read_text())["attributes"] == m["attributes"]
  assert os.path.getsize(work / "directions.png") > 1000
  red, green = m["attributes"]["red"], m["attributes"]["green"]
  # The directions are learned (CV r^2 above zero on 160 scenes) and moving along them moves the
  # attribute that a pixel-space readout measures on the decoded images, in the expected direction.
  assert red["direction_cv_r2"] > 0 and green["direction_cv_r2"] > 0.1
  for a in (red, green):
    assert a["decoded_change"] > 0 and a["decoded_readout_lambda_corr"] > 0.9
  # Along 'red' the decoded images gain more red than green or blue; along 'green', more green.
  dr, dg, db = red["decoded_mean_rgb_change"]
  assert dr > 0 and dr > dg and dr > db
  dr, dg, db = green["decoded_mean_rgb_change"]
  assert dg > 0 and dg > dr and dg > db
  assert red["lambda_min"] < red["projection_mean"] < red["lambda_max"]
  lo, hi = m["altered_feature_norm_range"]
  assert 0.8 < lo <= hi < 1.2  # f' stays near the unit sphere without renormalising


def test_bad_attribute_input_names_the_problem(tmp_path):
  c = small_config(tmp_path)
  c.directions.attributes = ("red", "beard")
  with pytest.raises(ValueError, match=r"unknown attribute names \['beard'\].*it has: blue, green, radius, red"):
    experiment.run(c, str(tmp_path / "a"))
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(4):
    Image.new("RGB", (10, 10)).save(folder / f"face{i}.png")
  c = small_config(tmp_path)
  c.data.train = f"imagefolder:{folder}"
  with pytest.raises(ValueError, match="examples without attributes.*face0.png"):
    experiment.run(c, str(tmp_path / "b"))
  c = small_config(tmp_path)
  c.directions.steps = (1.0, 0.0)
  with pytest.raises(ValueError, match="increasing"):
    experiment.run(c, str(tmp_path / "c"))


def test_attribute_table_variant_on_mtfl_faces(tmp_path):
  """configs/directions.py:attributes=DIR on 200 MTFL-LFW faces, a seeded 20% held out: gender
  is read out on held-out faces and every direction moves the decoded faces' readout."""
  from conftest import shared_path
  root = shared_path("data", "mtfl_lfw")
  c = directions_config.get_config(f"attributes={root}")
  assert c.data.test == "" and c.directions.attributes == ("Male", "Smiling", "Eyeglasses", "pose")
  c.data.train += "[:200]"
  c.directions.size, c.directions.readout_size, c.directions.num_examples = 12, 8, 8
  c.num_figure_examples = 1
  c.features.cache_dir = str(tmp_path / "cache")
  m = experiment.run(c, str(tmp_path / "run"))
  assert (m["n_train"], m["n_test"]) == (160, 40)
  attrs = m["attributes"]
  assert set(attrs["Male"]) >= {"test_auc"} and "test_corr" in attrs["pose"]  # pose is ordinal (1..5)
  assert attrs["Male"]["test_auc"] > 0.75
  for a in attrs.values():
    assert a["decoded_readout_lambda_corr"] > 0
  assert os.path.getsize(tmp_path / "run" / "directions.png") > 1000
