"""Data sources: synthetic determinism and ground truth, imagefolder, specs, bad input."""
import os

import numpy as np
import pytest
from PIL import Image

from persistent import data
from persistent.data import images, synthetic


def test_synthetic_is_deterministic_and_prefix_stable():
  a = data.open_source("synthetic:n=5,seed=3")
  b = data.open_source("synthetic:n=9,seed=3")
  c = data.open_source("synthetic:n=5,seed=4")
  for i in range(5):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  assert a.spec != b.spec and a.spec != c.spec


def test_synthetic_ground_truth_matches_pixels():
  src = data.open_source("synthetic:n=20,seed=0,size=64")
  for ex in src:
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    assert ex["label"].shape == (64, 64) and ex["label"].max() < len(synthetic.CLASSES)
    last = ex["objects"][-1]  # drawn on top: its centre pixel shows its class and colour
    cx, cy = (int(v) for v in last["centre"])
    assert ex["label"][cy, cx] == last["class"]
    np.testing.assert_allclose(ex["image"][cy, cx] / 255.0, last["colour"], atol=0.08)
    assert last["keypoints"].shape == (synthetic.NUM_KEYPOINTS, 2)


def test_spec_parsing_and_slices():
  assert data.parse_spec("imagefolder:/a,/b") == ("imagefolder", ["/a", "/b"])
  src = data.open_source("synthetic:n=10[7:]")
  assert len(src) == 3 and src.ids[0] == "synthetic:0:7"
  assert len(data.open_source("synthetic:n=10[:-4]")) == 6
  with pytest.raises(ValueError, match="empty"):
    data.open_source("synthetic:n=10[10:]")


def test_unknown_format_and_options():
  with pytest.raises(ValueError, match="unknown data source format 'nope'"):
    data.open_source("nope:/x")
  with pytest.raises(ValueError, match="bad option 'colour=1'"):
    data.open_source("synthetic:colour=1")
  with pytest.raises(ValueError, match="must be int"):
    data.open_source("synthetic:n=many")


def test_imagefolder(tmp_path):
  for name in ("b.png", "a.jpg", "sub/c.png"):
    os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
    Image.fromarray(np.full((5, 7, 3), 100, np.uint8)).save(tmp_path / name)
  (tmp_path / "notes.txt").write_text("not an image")
  src = data.open_source(f"imagefolder:{tmp_path}")
  assert [os.path.relpath(i, tmp_path) for i in src.ids] == ["a.jpg", "b.png", "sub/c.png"]
  assert src[1]["image"].shape == (5, 7, 3)
  batches = list(data.iterate(src, 2))
  assert [len(b) for b in batches] == [2, 1] and batches[1][0]["id"] == src.ids[2]


def test_imagefolder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.open_source(f"imagefolder:{tmp_path / 'missing'}")
  with pytest.raises(ValueError, match="no images"):
    data.open_source(f"imagefolder:{tmp_path}")
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
  src = data.open_source(f"imagefolder:{tmp_path}")
  with pytest.raises(ValueError, match="broken.jpg"):
    src[0]
  good = tmp_path / "truncated.png"
  Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(good)
  good.write_bytes(good.read_bytes()[:60])
  with pytest.raises(ValueError, match="truncated.png"):
    images.read_image(str(good))


def test_crop_resize_geometry():
  img = np.zeros((20, 20, 3), np.uint8)
  img[5:10, 10:15] = 255  # a white square at x in [10, 15), y in [5, 10)
  out = images.crop_resize(img, (10, 5, 15, 10), (5, 5), resample=Image.NEAREST)
  assert out.min() == 255
  out = images.crop_resize(img, (-20, -20, 0, 0), (4, 4))  # fully outside: zero fill
  assert out.max() == 0
  with pytest.raises(ValueError, match="empty crop"):
    images.crop_resize(img, (3, 3, 3, 8), (4, 4))
