"""Face landmark sources: .pts / Helen parsing, pairing, bad input, synthetic faces."""
import os

import numpy as np
import pytest
from PIL import Image

from persistent import data
from persistent.data import faces, synthetic_faces

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "faces300w")


def write_pts(path, pts, header=True, n_points=None):
  lines = []
  if header:
    lines += ["version: 1", f"n_points: {len(pts) if n_points is None else n_points}", "{"]
  lines += [f"{x} {y}" for x, y in pts]
  if header:
    lines.append("}")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def write_image(path, w=40, h=30):
  Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def face_pts(n=68, cx=20.0, cy=15.0, r=8.0):
  t = np.linspace(0, 2 * np.pi, n, endpoint=False)
  return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def test_parse_pts_header_is_one_based(tmp_path):
  p = tmp_path / "a.pts"
  write_pts(p, [(1, 1), (10.5, 20.25), (3, 4)])
  np.testing.assert_allclose(faces.parse_pts(str(p)), [[0, 0], [9.5, 19.25], [2, 3]])


def test_parse_pts_without_header(tmp_path):
  p = tmp_path / "a.pts"
  write_pts(p, [(2, 3), (4, 5)], header=False)
  np.testing.assert_allclose(faces.parse_pts(str(p), 2), [[1, 2], [3, 4]])


@pytest.mark.parametrize("content, message", [
    ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", "header says n_points 3"),
    ("version: 1\nn_points: 2\n{\n1 2\nnan 4\n}\n", "non-finite"),
    ("1 2\n3\n", "not 'x y'"),
    ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", "without closing"),
    ("", "no points"),
])
def test_parse_pts_bad_files_name_the_file(tmp_path, content, message):
  p = tmp_path / "bad.pts"
  p.write_text(content)
  with pytest.raises(ValueError, match=message) as e:
    faces.parse_pts(str(p))
  assert str(p) in str(e.value)


def test_parse_pts_wrong_count(tmp_path):
  p = tmp_path / "few.pts"
  write_pts(p, face_pts(67))
  with pytest.raises(ValueError, match="expected 68 points, found 67") as e:
    faces.parse_pts(str(p), 68)
  assert "few.pts" in str(e.value)


def make_300w(root, names=("a", "b", "c")):
  os.makedirs(root, exist_ok=True)
  for k, name in enumerate(names):
    write_image(os.path.join(root, f"{name}.jpg"))
    write_pts(os.path.join(root, f"{name}.pts"), face_pts(cx=20 + k))
  return root


def test_300w_source(tmp_path):
  d1 = make_300w(str(tmp_path / "one"))
  d2 = make_300w(str(tmp_path / "two"), names=("x",))
  src = data.open_source(f"300w:{d1},{d2}")
  assert len(src) == 4 and src.skipped == []
  ex = src[1]
  assert ex["image"].shape == (30, 40, 3) and ex["id"].endswith("b.jpg")
  np.testing.assert_allclose(ex["landmarks"], face_pts(cx=21) - 1, atol=1e-5)
  assert data.open_source(f"300w:{d1}[1:]").ids == src.ids[1:3]


@pytest.mark.parametrize("remove, message", [("b.pts", "image without annotation"),
                                             ("b.jpg", "annotation without image")])
def test_300w_unpaired_files_name_the_file(tmp_path, remove, message):
  d = make_300w(str(tmp_path / "d"))
  os.remove(os.path.join(d, remove))
  with pytest.raises(ValueError, match=message) as e:
    data.open_source(f"300w:{d}")
  assert os.path.join(d, "b.") in str(e.value)
  src = data.open_source(f"300w:{d},on_bad=skip")  # the documented, counted alternative
  assert len(src) == 2 and len(src.skipped) == 1 and message in src.skipped[0]


def test_300w_bad_annotations(tmp_path):
  d = make_300w(str(tmp_path / "d"))
  write_pts(os.path.join(d, "c.pts"), face_pts(cx=200))  # face box centred outside the 40x30 image
  with pytest.raises(ValueError, match="outside the 40x30 image") as e:
    data.open_source(f"300w:{d}")
  assert "c.pts" in str(e.value)
  write_pts(os.path.join(d, "c.pts"), face_pts(n=5))
  with pytest.raises(ValueError, match="expected 68 points") as e:
    data.open_source(f"300w:{d}")
  assert "c.pts" in str(e.value)
  src = data.open_source(f"300w:{d}", on_bad="skip")
  assert len(src) == 2 and "c.pts" in src.skipped[0]
  mixed = data.open_source(f"300w:{d},points=0,on_bad=skip")  # the odd count out is bad
  assert len(mixed) == 2 and "c.pts: 5 points where the other faces have 68" in mixed.skipped[0]
  with pytest.raises(ValueError, match="bad option"):
    data.open_source(f"300w:{d},colour=red")


def test_helen_source(tmp_path):
  img_dir, ann_dir = tmp_path / "images", tmp_path / "annotation"
  img_dir.mkdir(), ann_dir.mkdir()
  pts = face_pts(194)
  for k, name in enumerate(["100_1", "200_1"]):
    write_image(str(img_dir / f"{name}.jpg"))
    (ann_dir / f"{k + 1}.txt").write_text(name + "\n" + "\n".join(f"{x} , {y}" for x, y in pts) + "\n")
  src = data.open_source(f"helen:{img_dir},{ann_dir}")
  assert len(src) == 2
  np.testing.assert_allclose(src[0]["landmarks"], pts, atol=1e-5)  # Helen is 0-based already
  (ann_dir / "3.txt").write_text("300_1\n" + "\n".join(f"{x} , {y}" for x, y in pts) + "\n")
  with pytest.raises(ValueError, match="without image") as e:
    data.open_source(f"helen:{img_dir},{ann_dir}")
  assert "3.txt" in str(e.value)
  (ann_dir / "3.txt").unlink()
  (ann_dir / "2.txt").write_text("200_1\n1 , 2\n")
  with pytest.raises(ValueError, match="expected 194 points, found 1") as e:
    data.open_source(f"helen:{img_dir},{ann_dir}")
  assert "2.txt" in str(e.value)


def test_synthetic_faces_are_seeded_and_consistent():
  a = data.open_source("synthetic_faces:n=5,seed=3,size=96")
  b = data.open_source("synthetic_faces:n=2,seed=3,size=96")
  np.testing.assert_array_equal(a[1]["image"], b[1]["image"])
  ex = a[0]
  assert ex["image"].shape == (96, 96, 3) and ex["image"].dtype == np.uint8
  lm = ex["landmarks"]
  assert lm.shape == (68, 2) and np.isfinite(lm).all()
  for e in a:  # outer eye corners: 36 at image left of 45; the chin below the eyes
    l = e["landmarks"]
    assert l[36, 0] < l[39, 0] < l[42, 0] < l[45, 0]
    assert l[8, 1] > l[36, 1]
  assert not np.array_equal(a[0]["landmarks"], a[1]["landmarks"])
  # The face is drawn where the landmarks say: skin differs from the background around the nose.
  assert a.spec != data.open_source("synthetic_faces:n=5,seed=4,size=96").spec


@pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"shared 300-W data absent ({SHARED})")
def test_shared_300w_parses():
  src = data.open_source(f"300w:{SHARED}/helen_train,{SHARED}/afw")
  assert len(src) == 1207 and not src.skipped
  ex = src[0]
  h, w = ex["image"].shape[:2]
  lm = ex["landmarks"]
  assert lm.shape == (68, 2)
  assert (lm.min(0) > -0.25 * w).all() and lm[:, 0].max() < 1.25 * w and lm[:, 1].max() < 1.25 * h
