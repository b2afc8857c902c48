"""Segmentation sources (tiny PNG fixtures), targets, augmentation, resizing and a tiny run."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from persistent import data, metrics
from persistent.data import segmentation as seg_data
from persistent.data import synthetic
from persistent.tasks import segmentation as seg



def _write_rgb(path, h, w, seed=0):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _camvid(tmp_path, labels, image_size=None):
  img_dir, ann_dir = tmp_path / "train", tmp_path / "trainannot"
  img_dir.mkdir()
  ann_dir.mkdir()
  for i, lab in enumerate(labels):
    h, w = image_size or lab.shape
    _write_rgb(img_dir / f"f{i}.png", h, w, i)
    Image.fromarray(lab.astype(np.uint8), "L").save(ann_dir / f"f{i}.png")
  return str(img_dir)


def test_camvid_source_maps_void(tmp_path):
  lab = np.array([[0, 1, 11], [10, 3, 11]], np.uint8)
  src = data.open_source("camvid:" + _camvid(tmp_path, [lab, lab]))
  ex = src[1]
  assert len(src) == 2 and ex["image"].shape == (2, 3, 3)
  np.testing.assert_array_equal(ex["label"], [[0, 1, 255], [10, 3, 255]])
  assert ex["classes"] == seg_data.CAMVID_CLASSES and ex["id"] == "camvid:f1.png"


def test_camvid_bad_labels_name_the_file(tmp_path):
  src = data.open_source("camvid:" + _camvid(tmp_path, [np.full((4, 5), 12, np.uint8)]))
  with pytest.raises(ValueError, match=r"trainannot/f0.png.*outside"):
    src[0]


def test_camvid_size_mismatch_names_the_file(tmp_path):
  src = data.open_source("camvid:" + _camvid(tmp_path, [np.zeros((4, 5), np.uint8)], image_size=(4, 6)))
  with pytest.raises(ValueError, match=r"trainannot/f0.png has size 5x4"):
    src[0]


def test_camvid_missing_label_folder(tmp_path):
  (tmp_path / "imgs").mkdir()
  with pytest.raises(FileNotFoundError, match="imgsannot"):
    data.open_source(f"camvid:{tmp_path}/imgs")


def _voc(tmp_path, labels, split="val"):
  root = tmp_path / "VOC2012"
  for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    (root / d).mkdir(parents=True)
  palette = list(np.random.default_rng(0).integers(0, 255, 768))
  ids = []
  for i, lab in enumerate(labels):
    stem = f"2007_00000{i}"
    ids.append(stem)
    _write_rgb(root / "JPEGImages" / f"{stem}.jpg", *lab.shape, seed=i)
    im = Image.fromarray(lab.astype(np.uint8), "P")
    im.putpalette(palette)
    im.save(root / "SegmentationClass" / f"{stem}.png")
  (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
  return str(root)


def test_voc_seg_reads_palette_indices(tmp_path):
  lab = np.array([[0, 15, 255], [20, 1, 0]], np.uint8)
  root = _voc(tmp_path, [lab])
  src = data.open_source(f"voc_seg:{root}:val")
  np.testing.assert_array_equal(src[0]["label"], lab)
  assert src[0]["classes"][15] == "person" and len(src[0]["classes"]) == 21
  with pytest.raises(FileNotFoundError, match="train.txt"):
    data.open_source(f"voc_seg:{root}")  # default split 'train' does not exist here


def test_voc_seg_bad_labels(tmp_path):
  root = _voc(tmp_path, [np.array([[0, 21]], np.uint8)])
  with pytest.raises(ValueError, match=r"SegmentationClass/2007_000000.png holds ids \[21\]"):
    data.open_source(f"voc_seg:{root}:val")[0]
  rgb = tmp_path / "VOC2012" / "SegmentationClass" / "2007_000000.png"
  Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(rgb)
  with pytest.raises(ValueError, match=r"2007_000000.png has image mode 'RGB'"):
    data.open_source(f"voc_seg:{root}:val")[0]


def test_cell_targets_by_hand():
  lab = np.array([[1, 1, 2, 2],
                  [1, 0, 2, 255],
                  [255, 255, 3, 3],
                  [255, 255, 3, 0]], np.uint8)
  counts = seg.cell_counts(lab, 2, 4)
  np.testing.assert_array_equal(counts, [[1, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0], [1, 0, 0, 3]])
  cells = seg.cell_labels(lab, 2, 4)
  np.testing.assert_array_equal(cells, [1, 2, -1, 3])
  t = seg.one_hot(cells[None], 4).reshape(4, 4)
  np.testing.assert_array_equal(t, [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
  with pytest.raises(ValueError, match="outside"):
    seg.cell_counts(lab, 2, 3)
  # non-divisible sizes: every pixel lands in exactly one cell
  lab = np.random.default_rng(0).integers(0, 5, (37, 53)).astype(np.uint8)
  assert seg.cell_counts(lab, 30, 5).sum() == lab.size


def test_augmentation_is_seeded_and_labels_follow_the_image(tmp_path):
  rng = np.random.default_rng(0)
  label = np.kron(rng.integers(0, 4, (3, 4)), np.ones((8, 8), int)).astype(np.uint8)  # 8x8 blocks
  image = np.repeat(label[..., None] * 60, 3, -1).astype(np.uint8)  # the image encodes its label
  base = data.Source("fixture", ["a"], lambda i: {"image": image, "label": label, "id": "a"})
  aug = seg.augmented(base, 4, seed=3, min_scale=0.6)
  assert len(aug) == 4 and aug.ids == ["a"] + [f"a#aug{v}" for v in range(1, 4)]
  assert [aug[v]["id"] for v in range(4)] == aug.ids
  np.testing.assert_array_equal(aug[0]["label"], label)
  for v in range(1, 4):
    a, b = aug[v], aug[v]
    np.testing.assert_array_equal(a["label"], b["label"])
    assert a["label"].shape == label.shape and set(np.unique(a["label"])) <= set(range(4))
    # nearest labels stay consistent with the (bilinear) image away from class edges
    agree = np.abs(a["image"][..., 0].astype(int) - a["label"].astype(int) * 60) < 2
    assert agree.mean() > 0.6
  assert not np.array_equal(aug[1]["label"], seg.augmented(base, 4, seed=4, min_scale=0.6)[1]["label"])
  assert aug.spec != seg.augmented(base, 4, seed=4, min_scale=0.6).spec
  assert "seed=3" in aug.spec and "copies=4" in aug.spec


def test_upsample_and_nearest_cells():
  s = np.random.default_rng(0).normal(size=(3, 4, 2)).astype(np.float32)
  const = np.ones((5, 5, 3), np.float32) * 2
  np.testing.assert_allclose(metrics.upsample(const, (17, 9)), 2, rtol=1e-6)
  np.testing.assert_allclose(metrics.upsample(s, (3, 4)), s, rtol=1e-6)  # same size: identity
  up = metrics.upsample(s, (6, 8))  # x2: pixel centres at 0.25, 0.75 of a cell
  np.testing.assert_allclose(up[1, 1], 0.75 * 0.75 * s[0, 0] + 0.75 * 0.25 * (s[0, 1] + s[1, 0])
                             + 0.0625 * s[1, 1], rtol=1e-5)
  np.testing.assert_allclose(up[0, 0], s[0, 0], rtol=1e-5)  # clamped at the border
  cells = np.arange(4).reshape(2, 2)
  np.testing.assert_array_equal(metrics.nearest_cells(cells, (3, 4)), [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]])


def test_tiny_run_and_restore(tmp_path):
  from configs import segmentation as cfg
  from persistent import experiment
  c = cfg.get_config()
  c.backbone.weights = "random"
  c.data.train, c.data.test = "synthetic:n=12,seed=0,size=32", "synthetic:n=4,seed=1,size=32"
  c.segmentation.size, c.segmentation.augment = 6, 2
  c.segmentation.logistic.steps = 5
  c.features.cache_dir = str(tmp_path / "cache")  # the restore run reads cached features
  c.batch_size = 8
  c.num_figure_examples = 2
  m = experiment.run(c, str(tmp_path / "a"))
  for key in ("mean_ap", "miou", "pixel_acc", "miou_prior", "logistic"):
    assert key in m
  assert m["num_targets"] == 6 * 6 * 5 and m["n_train_augmented"] == 24
  assert set(m["ap_per_class"]) == set(synthetic.CLASSES)
  assert os.path.exists(tmp_path / "a" / "segmentation_probabilities.png")
  c.restore = str(tmp_path / "a" / "checkpoint")
  m2 = experiment.run(c, str(tmp_path / "b"))
  assert m2["miou"] == pytest.approx(m["miou"]) and m2["mean_ap"] == pytest.approx(m["mean_ap"])
  json.dumps(m)


def test_real_camvid_labels():
  from conftest import shared_path
  src = data.open_source("camvid:" + shared_path("data", "camvid", "val"))
  assert len(src) == 101
  for i in (0, 50):
    ex = src[i]
    assert ex["image"].shape == (360, 480, 3) and ex["label"].shape == (360, 480)
    vals = set(np.unique(ex["label"]).tolist())
    assert vals <= set(range(11)) | {255}
