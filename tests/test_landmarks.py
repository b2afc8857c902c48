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


def check_metrics(metrics, workdir, stages, crops_per_face=2):
  assert set(metrics["nme"]) == {"dataset_bias", "rgb_ridge", "convnet_ridge", "lookback"}
  assert all(np.isfinite(v) and v > 0 for v in metrics["nme"].values())
  assert len(metrics["nme_per_stage"]) == stages + 1
  assert metrics["nme_per_stage"][-1] == metrics["nme"]["lookback"]
  assert set(metrics["nme_per_group"]["lookback"]) == set(geo.GROUPS_68)
  assert set(metrics["nme_per_part"]["lookback"]) == set(geo.PARTS_68)
  assert metrics["n_train"] == 16 and metrics["n_test"] == 4
  assert metrics["n_train_crops"] == 16 * crops_per_face
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["nme"] == metrics["nme"]
  for name in ("ced.png", "errors_per_group.png", "lookback_examples.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 1000


@pytest.mark.parametrize("flips,lookback_size", [(False, 0), (True, 16)])
def test_end_to_end_cascade(tmp_path, monkeypatch, flips, lookback_size):
  """A seconds-long cascade run; with flips (twice the face crops) and look-back crops fed to the
  network at 16 px instead of its 32 px."""
  from persistent import experiment
  monkeypatch.setattr(probe, "backbone_from_config", tiny_backbone)
  c = tiny_config(tmp_path, stages=2)
  c.backbone.layer = "flat"
  c.landmarks.flips = flips
  c.landmarks.lookback_size = lookback_size
  metrics = experiment.run(c, str(tmp_path / "run"))
  with open(tmp_path / "run" / "nme_per_stage_so_far.json") as f:  # written after stage 1, then stage 2
    assert json.load(f) == pytest.approx(metrics["nme_per_stage"], rel=1e-6)
  if lookback_size:
    cached = os.listdir(tmp_path / "cache")
    assert len(cached) >= 2 + 2 * 2  # face crops, test crops, and each stage's train and test crops
  check_metrics(metrics, str(tmp_path / "run"), 2, crops_per_face=4 if flips else 2)
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


# ----------------------------------------------------------------------------------------------
# Horizontal flips: the mirror permutations of the 68- and 194-point layouts.

HELEN194 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "helen194", "annotation")
# The standard 300-W / iBUG mirror pairs, 1-based as the 300-W documentation numbers the points.
PAIRS_300W_1BASED = [(1, 17), (2, 16), (3, 15), (4, 14), (5, 13), (6, 12), (7, 11), (8, 10),
                     (18, 27), (19, 26), (20, 25), (21, 24), (22, 23),
                     (32, 36), (33, 35),
                     (37, 46), (38, 45), (39, 44), (40, 43), (41, 48), (42, 47),
                     (49, 55), (50, 54), (51, 53), (56, 60), (57, 59),
                     (61, 65), (62, 64), (66, 68)]
SELF_300W_1BASED = [9, 28, 29, 30, 31, 34, 52, 58, 63, 67]


def test_mirror_68_is_the_300w_pairs():
  perm = geo.mirror_permutation(68)
  expected = np.arange(68)
  for a, b in PAIRS_300W_1BASED:
    expected[a - 1], expected[b - 1] = b - 1, a - 1
  assert sorted([i for p in PAIRS_300W_1BASED for i in p] + SELF_300W_1BASED) == list(range(1, 69))
  np.testing.assert_array_equal(perm, expected)
  with pytest.raises(ValueError, match="flip permutation"):
    geo.mirror_permutation(21)


@pytest.mark.parametrize("index", range(4))
def test_flip_synthetic_faces_68(index):
  """A flipped cartoon face: flipping twice is the identity, every flipped point sits on the
  mirrored position of its partner, the drawn pixels move with it, and the flipped face keeps the
  layout's left/right convention (outer eye corner 36 and jaw start 0 at image left)."""
  from persistent.data import synthetic_faces
  face = synthetic_faces.render(3, index, 96)
  image, pts = face["image"], face["landmarks"].astype(np.float64)
  width = image.shape[1]
  perm = geo.mirror_permutation(68)
  flipped, fimage = geo.flip_points(pts, width, perm), image[:, ::-1]
  np.testing.assert_allclose(geo.flip_points(flipped, width, perm), pts, atol=1e-12)
  for j in range(68):
    np.testing.assert_allclose(flipped[j], [width - 1 - pts[perm[j], 0], pts[perm[j], 1]])
  src = np.round(pts[perm]).astype(int).clip(0, width - 1)  # the pixel under landmark perm[j]
  dst = np.round(flipped).astype(int).clip(0, width - 1)  # the pixel under flipped landmark j
  assert (np.abs(dst[:, 0] - (width - 1 - src[:, 0])) <= 1).all()
  moved = fimage[src[:, 1], width - 1 - src[:, 0]]
  np.testing.assert_array_equal(moved, image[src[:, 1], src[:, 0]])
  for left, right in ((36, 45), (0, 16), (17, 26), (48, 54), (31, 35), (39, 42)):
    assert flipped[left, 0] < flipped[right, 0] and pts[left, 0] < pts[right, 0]
  assert flipped[36:42].mean(0)[0] < flipped[42:48].mean(0)[0]


def test_flipped_crop_targets_match_a_crop_of_the_flipped_image():
  """crops.crop_source(flips=...) and task.crop_targets against an independent route: crop the
  flipped image at the mirrored box and take the flipped points' crop coordinates there."""
  from persistent.data import crops
  src = data.open_source("synthetic_faces:n=3,seed=2,size=96")
  truth = np.stack([e["landmarks"] for e in src]).astype(np.float64)
  boxes = geo.face_boxes(truth, 0.15)
  flipped = crops.crop_source(src, [0, 1, 2, 0], np.concatenate([boxes, boxes[:1]]), (48, 48), "t",
                              flips=[True, True, True, False])
  plain = crops.crop_source(src, [0, 1, 2], boxes, (48, 48), "t")
  assert flipped.spec != plain.spec
  perm = geo.mirror_permutation(68)
  for i in range(3):
    ex, ref = flipped[i], plain[i]
    assert ex["flip"] and not ref["flip"]
    np.testing.assert_array_equal(ex["image"], ref["image"][:, ::-1])
    width = src[i]["image"].shape[1]
    box = ex["box"]
    mirrored_box = np.array([width - box[2], box[1], width - box[0], box[3]])
    expected = geo.to_crop(geo.flip_points(truth[i], width, perm)[None], mirrored_box[None])[0]
    np.testing.assert_allclose(task.crop_targets(ex, perm=perm), expected, atol=1e-12)
    recrop = image_lib.crop_resize(np.ascontiguousarray(src[i]["image"][:, ::-1]), mirrored_box, (48, 48))
    assert np.abs(recrop.astype(int) - ex["image"].astype(int)).mean() < 2.0
  np.testing.assert_allclose(task.crop_targets(flipped[3]), geo.to_crop(truth[:1], flipped[3]["box"][None])[0])
  with pytest.raises(ValueError, match="mirror permutation"):
    task.crop_targets(flipped[0])


def symmetric_helen194(c=100.0):
  """A face symmetric about x = c in Helen's 194-point contour order, built from the order alone:
  jaw left -> chin -> right, nose left -> tip -> right, upper outer lip left -> right, lower outer
  lip right -> left, inner lips a closed contour from the left corner over the upper lip, eyes and
  brows closed contours from their inner end over the top (first eye and first brow on the image
  right, each left one the mirror image of its right one, point by point)."""
  ellipse = lambda t, cx, cy, rx, ry: np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
  jaw = ellipse(np.linspace(np.pi, 0, 41), c, 100, 80, 90)  # sin > 0: below, the chin at t = pi/2
  nose = ellipse(np.linspace(np.pi, 0, 17), c, 120, 12, 20)
  upper = ellipse(np.linspace(np.pi, 2 * np.pi, 14), c, 160, 30, 8)  # sin < 0: above
  lower = ellipse(np.linspace(0, np.pi, 14), c, 160, 30, 12)
  inner = ellipse(np.pi + 2 * np.pi * np.arange(28) / 28, c, 161, 22, 4)  # left corner, then above
  loop = 2 * np.pi * np.arange(20) / 20
  right_eye = np.stack([c + 35 - 14 * np.cos(loop), 80 - 5 * np.sin(loop)], 1)  # inner corner, upper lid
  right_brow = np.stack([c + 40 - 22 * np.cos(loop), 60 - 4 * np.sin(loop)], 1)
  mirror = lambda q: q * [-1, 1] + [2 * c, 0]
  return np.concatenate([jaw, nose, upper, lower, inner, right_eye, mirror(right_eye), right_brow,
                         mirror(right_brow)])


def test_flip_symmetric_face_194():
  """A symmetric face in Helen's documented contour order is its own mirror image after the
  194-point permutation; flipping twice is the identity."""
  face = symmetric_helen194(100.0)
  assert face.shape == (194, 2)
  perm = geo.mirror_permutation(194)
  flipped = geo.flip_points(face, 201.0, perm)  # x -> 200 - x: the mirror about x = 100
  np.testing.assert_allclose(flipped, face, atol=1e-9)
  np.testing.assert_allclose(geo.flip_points(flipped, 201.0, perm), face, atol=1e-9)
  np.testing.assert_array_equal(perm[perm], np.arange(194))
  # the two eyes (and brows) trade places, the midline contours stay in place
  assert set(perm[114:134]) == set(range(134, 154)) and set(perm[154:174]) == set(range(174, 194))
  assert set(perm[0:41]) == set(range(41)) and set(perm[58:72]) == set(range(58, 72))


@pytest.mark.skipif(not os.path.isdir(HELEN194), reason=f"shared Helen 194-point data absent ({HELEN194})")
def test_mirror_194_fits_the_real_annotation():
  """On the 870 development faces (eye-centred, inter-ocular units), the mirrored mean shape with
  the 194-point permutation lies on the mean shape: every contour's error is well under its point
  spacing, and far under what the reversed (wrong) order of each contour gives."""
  from persistent.data import faces
  names = sorted(os.listdir(HELEN194))
  pts = np.stack([faces.parse_helen(os.path.join(HELEN194, n))[1] for n in names]).astype(np.float64)
  centre = pts[:, 114:154].mean(1, keepdims=True)
  io = np.linalg.norm(pts[:, 114:134].mean(1) - pts[:, 134:154].mean(1), axis=1)[:, None, None]
  mean = ((pts - centre) / io).mean(0)
  mirrored = mean * [-1, 1]
  perm = geo.mirror_permutation(194)
  for part, idx in geo.PARTS_194.items():
    idx = np.asarray(idx)
    err = np.linalg.norm(mean[perm[idx]] - mirrored[idx], axis=1).mean()
    spacing = np.linalg.norm(np.diff(mean[idx], axis=0), axis=1).mean()
    assert err < 0.8 * spacing, (part, err, spacing)
  eye = np.arange(114, 134)
  wrong = 134 + (-(eye - 114)) % 20  # the other eye walked the other way round
  assert np.linalg.norm(mean[wrong] - mirrored[eye], axis=1).mean() > 2 * np.linalg.norm(
      mean[perm[eye]] - mirrored[eye], axis=1).mean()


@pytest.mark.skipif(not os.path.isdir(HELEN194), reason=f"shared Helen 194-point data absent ({HELEN194})")
def test_helen194_variant_splits_the_870_faces():
  """configs/landmarks.py:helen194=IMAGES,ANNOTATIONS: Helen's 194 points, a seeded 20% held out."""
  from configs import landmarks as cfg_mod
  images = os.path.join(SHARED, "helen_train")
  c = cfg_mod.get_config(f"helen194={images},{HELEN194}")
  assert c.data.train == f"helen:{images},{HELEN194}" and c.data.test == ""
  pipe = probe.Pipeline(c, tiny_backbone(c))
  train, test = task.open_split(pipe)
  assert (len(train), len(test)) == (696, 174) and not set(train.ids) & set(test.ids)
  assert test[0]["landmarks"].shape == (194, 2)
  with pytest.raises(ValueError, match="helen194"):
    cfg_mod.get_config("helen194=onlyone")


class _TwoTaps(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    g = nn.relu(nn.Conv(6, (3, 3), strides=2)(h))
    return {"early": h, "late": g}


def test_concatenated_layers_stream_their_parts(tmp_path):
  """Layer 'early+late': each part reduced by its own rule and l2-normalised, side by side over
  sqrt(2); the width is the sum, and a probe on it is a probe on those columns."""
  from configs import landmarks as cfg_mod
  c = cfg_mod.get_config("tiny")
  c.features.cache_dir = str(tmp_path / "cache")
  c.features.reduce = "grid:2,late=pool"
  module = _TwoTaps()
  net = backbones.Backbone(name="two", module=module, params=backbones.random_params(module, (32, 32), 0),
                           input_size=(32, 32), preprocess=lambda x: x.astype(jnp.float32) / 255.0,
                           layers=("early", "late"), weights_id="random:0")
  src = data.open_source("synthetic_faces:n=5,seed=0,size=32")
  c.backbone.layer = "early+late"
  pipe = probe.Pipeline(c, net)
  assert pipe.feature_dim == 4 * 4 + 6
  both = np.concatenate([f["early+late"] for _, f, _ in pipe.stream(src)])
  parts = {}
  for layer in ("early", "late"):
    c.backbone.layer = layer
    parts[layer] = np.concatenate([f[layer] for _, f, _ in probe.Pipeline(c, net).stream(src)])
  np.testing.assert_allclose(both, np.concatenate([parts["early"], parts["late"]], 1) / np.sqrt(2), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="distinct"):
    probe.components("early+early")
