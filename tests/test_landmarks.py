"""Landmark metrics, geometry, the cross-fitted ridge helpers and the landmarks task end to end."""
import json
import os

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from persistent import backbones, data, probe, ridge
from persistent import geometry as geo
from persistent import metrics as lm
from persistent.data import images as image_lib
from persistent.tasks import landmarks as task

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "faces300w")


def shape68(eye_dist=10.0):
  pts = np.zeros((68, 2))
  pts[:, 0] = np.linspace(0, 20, 68)
  pts[:, 1] = 5.0
  pts[36], pts[45] = (0.0, 0.0), (eye_dist, 0.0)
  return pts


def test_nme_hand_computed():
  truth = np.stack([shape68(10.0), shape68(20.0)])
  pred = truth.copy()
  pred[0] += (3.0, 4.0)  # every point 5 px off, inter-ocular 10 -> 0.5
  pred[1, :34] += (0.0, 2.0)  # half the points 2 px off, inter-ocular 20 -> 0.1 * 34 / 68 = 0.05
  np.testing.assert_allclose(lm.nme_per_face(pred, truth), [0.5, 0.05])
  assert lm.nme(pred, truth) == pytest.approx(0.275)
  groups = {"first": list(range(34)), "second": list(range(34, 68))}
  per_group = lm.nme_per_group(pred, truth, groups)
  assert per_group["first"] == pytest.approx((0.5 + 0.1) / 2)
  assert per_group["second"] == pytest.approx(0.25)


def test_interocular_194_uses_outer_corners():
  truth = np.zeros((1, 194, 2))
  e1 = np.stack([np.linspace(10, 20, 20), np.zeros(20)], 1)  # an eye from x=10 to 20
  e2 = np.stack([np.linspace(40, 50, 20), np.zeros(20)], 1)
  truth[0, 114:134], truth[0, 134:154] = e1[::-1], e2  # order inside a contour must not matter
  assert lm.interocular(truth)[0] == pytest.approx(40.0)
  with pytest.raises(ValueError, match="12 landmarks"):
    lm.interocular(np.zeros((1, 12, 2)))


def test_ced_and_auc():
  errs = np.array([0.01, 0.02, 0.05, 0.2])
  np.testing.assert_allclose(lm.ced(errs, np.array([0.0, 0.02, 0.1, 1.0])), [0, 0.5, 0.75, 1])
  assert lm.auc(np.zeros(5), 0.1) == pytest.approx(1.0)
  assert lm.auc(np.full(5, 0.2), 0.1) == 0.0


def test_default_groups_partition():
  for n in (68, 194):
    g = geo.parse_groups("", n)
    assert len(g) == 6 and sorted(i for v in g.values() for i in v) == list(range(n))
  g = geo.parse_groups("a:0-2;b:3,4", 5)
  assert g == {"a": [0, 1, 2], "b": [3, 4]}
  with pytest.raises(ValueError, match="partition"):
    geo.parse_groups("a:0-2;b:2-4", 5)
  with pytest.raises(ValueError, match="no default"):
    geo.parse_groups("", 21)


def test_boxes_and_crop_frames():
  pts = np.array([[[10.0, 20.0], [30.0, 25.0]]])  # 0-based points: extent 20 x 5
  box = geo.face_boxes(pts, 0.1)[0]
  np.testing.assert_allclose(box, [8.5, 11, 32.5, 35])  # side 20 + 2 * 2, centre (20.5, 23) corner conv.
  crop = geo.to_crop(pts, box[None])
  np.testing.assert_allclose(geo.from_crop(crop, box[None]), pts)
  np.testing.assert_allclose(crop[0, 0], [(10.5 - 8.5) / 24, (20.5 - 11) / 24])
  rng = np.random.default_rng(0)
  j = geo.jitter_boxes(np.repeat(box[None], 100, 0), rng, 0.05, 0.1)
  side = j[:, 2] - j[:, 0]
  np.testing.assert_allclose(side, j[:, 3] - j[:, 1])
  assert (side <= 24 * 1.1 + 1e-9).all() and (side >= 24 / 1.1 - 1e-9).all() and side.std() > 0
  assert (np.abs((j[:, 0] + j[:, 2]) / 2 - 20.5) <= 0.05 * 24 + 1e-9).all()


def test_crop_frame_matches_crop_pixels():
  """A pixel marked at a landmark lands where to_crop puts it in the crop_resize output."""
  image = np.zeros((100, 120, 3), np.uint8)
  image[40:44, 70:74] = 255  # a 4x4 spot centred at 0-based (71.5, 41.5)
  point = np.array([[[71.5, 41.5]]])
  box = np.array([[50.0, 20.0, 110.0, 80.0]])  # 60 px square
  crop = image_lib.crop_resize(image, box[0], (120, 120)).astype(float)[..., 0]
  yy, xx = np.mgrid[0:120, 0:120]
  centroid = np.array([(crop * xx).sum(), (crop * yy).sum()]) / crop.sum()
  np.testing.assert_allclose(geo.to_crop(point, box)[0, 0] * 120 - 0.5, centroid, atol=0.3)


class _TinyNet(nn.Module):
  """A small random conv net with a global feature: compiles and runs in seconds on a CPU."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    h = nn.relu(nn.Conv(16, (3, 3), strides=2)(h))
    return {"flat": h.reshape(h.shape[0], -1)}


def tiny_backbone(config):
  module = _TinyNet()
  params = backbones.random_params(module, (32, 32), config.seed)
  return backbones.Backbone(name="tiny", module=module, params=params, input_size=(32, 32),
                            preprocess=lambda x: x.astype(jnp.float32) / 255.0, layers=("flat",),
                            weights_id=f"random:{config.seed}")


def test_holdout_split_is_seeded_and_disjoint():
  from configs import landmarks as cfg_mod
  c = cfg_mod.get_config()
  c.data.train, c.data.test = "synthetic_faces:n=20,seed=0,size=32", ""
  pipe = probe.Pipeline(c, tiny_backbone(c))
  train, test = task.open_split(pipe)
  assert len(test) == 4 and len(train) == 16 and not set(train.ids) & set(test.ids)
  assert task.open_split(pipe)[1].ids == test.ids


def tiny_config(tmp_path, stages):
  from configs import landmarks as cfg_mod
  c = cfg_mod.get_config("tiny")
  c.data.train = "synthetic_faces:n=16,seed=0,size=64"
  c.data.test = "synthetic_faces:n=4,seed=1,size=64"
  c.landmarks.lookback_stages = stages
  c.features.cache_dir = str(tmp_path / "cache")
  return c


def test_cascade_stages_never_see_their_own_faces(tmp_path):
  """A stage's estimates of training faces come from models fitted without their fold: moving the
  targets of one fold's faces leaves those faces' estimates after stage 1 exactly as they were,
  and moves everyone else's."""
  from persistent import lookback
  c = tiny_config(tmp_path, stages=2)
  c.backbone.layer = "flat"
  pipe = probe.Pipeline(c, tiny_backbone(c))
  faces = data.open_source("synthetic_faces:n=16,seed=0,size=64")
  truth = np.stack([f["landmarks"] for f in faces])
  boxes = geo.face_boxes(truth, 0.15)
  first = truth + np.random.default_rng(0).normal(0, 2, truth.shape)
  groups = geo.parse_groups("", 68)
  fold = probe.assign_folds(16, 3, seed=c.seed)
  moved = truth + np.where(fold == 0, 5.0, 0.0)[:, None, None]  # crops name their face as `parent`
  runs = [lookback.fit(pipe, faces, truth, first, boxes, groups, points, stages=2, quantile=0.9,
                       min_pad=0.02, fold_seed=c.seed)[2] for points in
          (lambda e: e["landmarks"], lambda e: moved[e["parent"]])]
  np.testing.assert_array_equal(runs[0][0], first)  # the first estimates enter stage 1 as given
  np.testing.assert_allclose(runs[1][1][fold == 0], runs[0][1][fold == 0], atol=1e-9)
  assert np.abs(runs[1][1][fold != 0] - runs[0][1][fold != 0]).max() > 0.5


def check_metrics(metrics, workdir, stages):
  assert set(metrics["nme"]) == {"dataset_bias", "rgb_ridge", "convnet_ridge", "lookback"}
  assert all(np.isfinite(v) and v > 0 for v in metrics["nme"].values())
  assert len(metrics["nme_per_stage"]) == stages + 1
  assert metrics["nme_per_stage"][-1] == metrics["nme"]["lookback"]
  assert set(metrics["nme_per_group"]["lookback"]) == set(geo.GROUPS_68)
  assert metrics["n_train"] == 16 and metrics["n_test"] == 4 and metrics["n_train_crops"] == 32
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["nme"] == metrics["nme"]
  for name in ("ced.png", "errors_per_group.png", "lookback_examples.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 1000


def test_end_to_end_cascade(tmp_path, monkeypatch):
  from persistent import experiment
  monkeypatch.setattr(probe, "backbone_from_config", tiny_backbone)
  c = tiny_config(tmp_path, stages=2)
  c.backbone.layer = "flat"
  metrics = experiment.run(c, str(tmp_path / "run"))
  check_metrics(metrics, str(tmp_path / "run"), 2)
  assert len(metrics["train_crossfit_nme_per_stage"]) == 2  # restoring: tests/test_restore.py


@pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"shared 300-W data absent ({SHARED})")
def test_shared_300w_geometry_and_bias_baseline():
  """60 real faces: boxes hold the faces, crops are sane, and the mean shape is a weak baseline."""
  src = data.open_source(f"300w:{SHARED}/helen_train[:60]")
  truth = np.stack([e["landmarks"] for e in src])
  assert truth.shape == (60, 68, 2)
  io = lm.interocular(truth)
  boxes = geo.face_boxes(truth, 0.15)
  inside = geo.to_crop(truth, boxes)
  assert (inside > 0.1).all() and (inside < 0.9).all()
  side = boxes[:, 2] - boxes[:, 0]
  assert (io / side > 0.3).all() and (io / side < 0.8).all()  # eyes span a plausible part of the box
  train, test = inside[:45].reshape(45, -1), inside[45:]
  mean = geo.from_crop(np.broadcast_to(train.mean(0).reshape(68, 2), test.shape), boxes[45:])
  bias = lm.nme(mean, truth[45:])
  assert 0.03 < bias < 0.3
  crop = image_lib.crop_resize(src[0]["image"], boxes[0], (64, 64))
  assert crop.shape == (64, 64, 3) and crop.std() > 5
