"""Segmentation and keypoint metrics against hand-computed values and scikit-learn."""
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from persistent import metrics

from persistent.data.segmentation import VOID


def test_average_precision_by_hand():
  # ranking: +, -, +, -  -> precision at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2
  scores = np.array([0.9, 0.8, 0.7, 0.1])
  pos = np.array([1, 0, 1, 0], bool)
  assert metrics.average_precision(scores, pos) == pytest.approx((1 + 2 / 3) / 2)
  # ties enter together: all tied -> precision = base rate
  assert metrics.average_precision(np.ones(4), pos) == pytest.approx(0.5)
  assert np.isnan(metrics.average_precision(scores, np.zeros(4, bool)))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.integers(0, 10_000), st.integers(2, 200), st.integers(1, 6))
def test_average_precision_matches_sklearn(seed, n, levels):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, levels + 1, n) / levels  # few distinct values: many ties
  pos = rng.random(n) < rng.uniform(0.05, 0.9)
  hypothesis.assume(pos.any())
  assert metrics.average_precision(scores, pos) == pytest.approx(average_precision_score(pos, scores))


def test_class_average_precisions_drop_void():
  scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [5.0, -5.0]])
  labels = np.array([0, 1, 1, VOID])
  ap = metrics.class_average_precisions(scores, labels)
  assert ap[0] == pytest.approx(average_precision_score([1, 0, 0], scores[:3, 0]))
  assert ap[1] == pytest.approx(average_precision_score([0, 1, 1], scores[:3, 1]))


def test_confusion_iou_and_accuracy_by_hand():
  truth = np.array([[0, 0, 1], [1, 2, VOID]], np.uint8)
  pred = np.array([[0, 1, 1], [1, 0, 2]], np.uint8)
  conf = metrics.Confusion(3)
  conf.add(pred, truth)
  # class 0: tp 1, fp 1 (truth 2 -> 0), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0
  np.testing.assert_allclose(conf.iou(), [1 / 3, 2 / 3, 0.0])
  assert conf.pixel_accuracy() == pytest.approx(3 / 5)
  conf2 = metrics.Confusion(4)
  conf2.add(pred, truth)
  assert np.isnan(conf2.iou()[3]) and metrics.nanmean(conf2.iou()) == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="differ in size"):
    conf.add(pred[:, :2], truth)
  with pytest.raises(ValueError, match="outside"):
    conf.add(pred + 3, truth)


def test_pck_by_hand():
  truth = np.array([[[10.0, 10.0], [20.0, 20.0], [0.0, 0.0]]])
  pred = np.array([[[13.0, 14.0], [20.0, 31.0], [50.0, 50.0]]])  # errors 5, 11, far
  boxes = np.array([[0.0, 0.0, 100.0, 40.0]])  # max side 100
  err = metrics.normalised_errors(pred, truth, boxes)
  np.testing.assert_allclose(err[0, :2], [0.05, 0.11])
  visible = np.array([[True, True, False]])
  assert metrics.pck(err, visible, 0.1) == pytest.approx(0.5)
  assert metrics.pck(err, visible, 0.05) == pytest.approx(0.5)  # at most alpha counts
  assert metrics.pck(err, visible, 0.2) == pytest.approx(1.0)
  np.testing.assert_allclose(metrics.pck_curve(err, visible, [0, 0.05, 0.1, 0.11, 1]), [0, 0.5, 0.5, 1, 1])
  assert np.isnan(metrics.pck(err, np.zeros_like(visible), 0.1))
  with pytest.raises(ValueError):
    metrics.normalised_errors(pred, truth[:, :2], boxes)


def test_roc_auc_and_pearson_against_sklearn_and_numpy():
  from sklearn.metrics import roc_auc_score
  rng = np.random.default_rng(0)
  for _ in range(20):
    scores, positive = rng.integers(0, 6, 40).astype(float), rng.random(40) < 0.4  # many ties
    assert metrics.roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
  assert np.isnan(metrics.roc_auc(np.arange(3.0), np.ones(3, bool)))
  a, b = rng.normal(size=30), rng.normal(size=30)
  assert metrics.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
  assert metrics.pearson(np.ones(4), np.arange(4.0)) == 0.0


def test_segmentation_scores_merge_images():
  label = np.array([[0, 1], [1, 255]], np.uint8)
  scores = metrics.SegmentationScores(2, ap_stride=1)
  cells = np.zeros((1, 1, 2), np.float32)
  cells[..., 1] = 1.0  # everything predicted as class 1
  pred, part = scores.score(label, cells)
  np.testing.assert_array_equal(pred, [[1, 1], [1, 1]])
  scores.add(part)
  scores.add(scores.score(label, pred=np.zeros((2, 2), int))[1])
  s = scores.summary(("a", "b"))
  np.testing.assert_array_equal(scores.confusion.matrix, [[1, 1], [2, 2]])  # void ignored
  assert s["pixel_acc"] == pytest.approx(0.5) and s["iou_per_class"]["a"] == pytest.approx(1 / 4)
