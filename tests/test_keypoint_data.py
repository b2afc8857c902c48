"""Keypoint readers (persistent/data/keypoints.py): COCO/LSPET people, the box rule, visibility,
and the left/right permutation for horizontal flips."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from persistent import data
from persistent.data import keypoints as kp

NAMES = ["nose", "left_eye", "right_eye"]


def _coco(tmp_path, annotations, images=None):
  """A COCO source spec over one 50x40 image (id 7) and the given annotations."""
  folder = tmp_path / "img"
  folder.mkdir(exist_ok=True)
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(folder / "a.jpg")
  default = [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40}]
  categories = [{"id": 1, "name": "person", "keypoints": NAMES}]
  (tmp_path / "kp.json").write_text(json.dumps({"images": images or default, "categories": categories,
                                                "annotations": annotations}))
  return f"coco_keypoints:{tmp_path / 'kp.json'},{folder}"


def _ann(aid, keypoints, **fields):
  return {"id": aid, "image_id": 7, "category_id": 1, "keypoints": keypoints, **fields}


def test_box_from_the_annotation_or_from_the_visible_keypoints(tmp_path, caplog):
  anns = [_ann(1, [4, 5, 2, 6, 7, 1, 0, 0, 0], bbox=[2, 3, 10, 20]),
          _ann(2, [10, 20, 2, 30, 25, 2, 99, 99, 0]),  # no bbox: from the two labelled points
          _ann(3, [10, 20, 2, 30, 25, 1, 0, 0, 0], bbox=[5, 5, 0, 8]),  # no area: from the points
          _ann(4, [10, 20, 2, 0, 0, 0, 0, 0, 0]),  # one point: no box, left out
          _ann(5, [1, 1, 2, 0, 0, 0, 0, 0, 0], bbox=[0, 0, 5, 5], iscrowd=1),
          _ann(6, [0, 0, 0, 0, 0, 0, 0, 0, 0], bbox=[0, 0, 5, 5])]
  with caplog.at_level(logging.INFO):
    src = data.open_source(_coco(tmp_path, anns))
  assert src.ids == ["person/7_1", "person/7_2", "person/7_3"]
  assert "3 objects read; left out: 1 crowd, 1 no visible keypoints, 1 no box" in caplog.text
  np.testing.assert_allclose(src[0]["box"], [2, 3, 12, 23])
  # Extent x 10..30, y 20..25; the longer side is 20, so 2 pixels on every side.
  np.testing.assert_allclose(src[1]["box"], [8, 18, 32, 27])
  np.testing.assert_allclose(src[2]["box"], [8, 18, 32, 27])
  # v=0 comes through as not visible; its coordinates as given.
  np.testing.assert_array_equal(src[1]["visible"], [True, True, False])
  np.testing.assert_allclose(src[1]["keypoints"], [[10, 20], [30, 25], [99, 99]])
  records, left_out = kp.read_coco_keypoints(str(tmp_path / "kp.json"), min_v=2)
  assert [r["id"] for r in records] == ["person/7_1", "person/7_2"]  # 3 has one v=2 point: no box
  assert left_out == {"crowd": 1, "no_visible_keypoints": 1, "no_box": 2, "other_class": 0}
  np.testing.assert_array_equal(records[0]["visible"], [True, False, False])
  with pytest.raises(ValueError, match="min_v must be 1 .* or 2"):
    data.open_source(_coco(tmp_path, anns) + ",min_v=0")


def test_image_size_must_match_the_annotation(tmp_path):
  spec = _coco(tmp_path, [_ann(1, [4, 5, 2, 6, 7, 2, 0, 0, 0])],
               images=[{"id": 7, "file_name": "a.jpg", "width": 40, "height": 50}])
  with pytest.raises(data.BadAnnotation, match=r"example 0 .*kp.json.*a.jpg is 50x40 \(WxH\) but its annotation says 40x50"):
    data.open_source(spec)[0]


def test_duplicates_are_refused(tmp_path):
  a = _ann(1, [4, 5, 2, 6, 7, 2, 0, 0, 0])
  with pytest.raises(data.BadAnnotation, match="kp.json: annotation 1 of image 7 appears twice"):
    data.open_source(_coco(tmp_path, [a, a]))
  with pytest.raises(data.BadAnnotation, match="two images have id 7"):
    data.open_source(_coco(tmp_path, [a], images=[{"id": 7, "file_name": "a.jpg"}] * 2))


def test_coco_mini_people(caplog):
  path = shared_path("data", "coco_mini", "person_keypoints_val2017.json")
  with open(path) as f:
    doc = json.load(f)
  with caplog.at_level(logging.INFO):
    src = data.open_source(f"coco_keypoints:{path},{shared_path('data', 'coco_mini', 'val2017')}")
  labelled = [a for a in doc["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
  assert len(src) == len(labelled) == 68
  assert "68 objects read; left out: 1 crowd, 49 no visible keypoints" in caplog.text
  assert src[0]["keypoint_names"] == kp.COCO_PERSON_KEYPOINTS
  # Visibility and boxes as in the file, for every person (independent reading of the JSON).
  by_id = {f"person/{a['image_id']}_{a['id']}": a for a in labelled}
  for r in kp.read_coco_keypoints(path)[0]:
    a = by_id[r["id"]]
    v = np.array(a["keypoints"]).reshape(-1, 3)[:, 2]
    np.testing.assert_array_equal(r["visible"], v > 0)
    assert r["visible"].sum() == a["num_keypoints"]
    x, y, w, h = a["bbox"]
    np.testing.assert_allclose(r["box"], [x, y, x + w, y + h], rtol=1e-6)
  sizes = {im["id"]: (im["height"], im["width"], 3) for im in doc["images"]}
  ex = src[5]
  assert ex["image"].shape == sizes[by_id[ex["id"]]["image_id"]]


def test_lspet_people():
  folder = shared_path("data", "lspet")
  src = data.open_source(f"coco_keypoints:{folder}/person_keypoints.json,{folder}/images")
  assert len(src) == 2500
  records, left_out = kp.read_coco_keypoints(f"{folder}/person_keypoints.json")
  assert sum(left_out.values()) == 0 and records[0]["keypoint_names"] == kp.LSP_JOINTS
  with open(f"{folder}/person_keypoints.json") as f:
    doc = json.load(f)
  v = np.array([a["keypoints"] for a in doc["annotations"]]).reshape(2500, 14, 3)[..., 2]
  assert (v == 0).sum() > 0  # LSPET has unlabelled joints; they come through as not visible
  np.testing.assert_array_equal(np.stack([r["visible"] for r in records]), v > 0)
  ex = src[0]
  assert ex["image"].shape == (105, 157, 3) and ex["keypoints"].shape == (14, 2)


# --- left/right under horizontal flips -------------------------------------------------------

def test_flip_permutations_of_coco_and_lsp():
  # Hand-written: COCO's pairs (1,2), (3,4), ..., (15,16); nose alone.
  np.testing.assert_array_equal(kp.flip_permutation(kp.COCO_PERSON_KEYPOINTS),
                                [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])
  # LSP: ankle/knee/hip right 0-2 and left 5-3, wrist/elbow/shoulder right 6-8 and left 11-9.
  np.testing.assert_array_equal(kp.flip_permutation(kp.LSP_JOINTS),
                                [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13])


def test_flip_permutation_reads_other_naming_styles():
  voc = ["L_Eye", "R_Eye", "Nose", "L_F_Paw", "R_F_Paw", "TailBase"]
  np.testing.assert_array_equal(kp.flip_permutation(voc), [1, 0, 2, 4, 3, 5])
  celeba = ["lefteye", "righteye", "nose", "leftmouth", "rightmouth"]
  np.testing.assert_array_equal(kp.flip_permutation(celeba), [1, 0, 2, 4, 3])
  assert kp.mirror_name("Left Shoulder") == "Right Shoulder" and kp.mirror_name("head_top") == "head_top"
  assert kp.mirror_name("wrist_l") == "wrist_r" and kp.mirror_name("LEFT-KNEE") == "RIGHT-KNEE"
  with pytest.raises(ValueError, match="'left_eye' has a side but its mirror 'right_eye' is not among"):
    kp.flip_permutation(["left_eye", "nose"])
  with pytest.raises(ValueError, match="distinct"):
    kp.flip_permutation(["nose", "nose"])


def test_flipping_an_annotated_person_twice_is_the_identity():
  """After a flip, 'left_wrist' sits where the mirrored right wrist was (the flip's meaning)."""
  rng = np.random.default_rng(0)
  width = 100.0
  points = rng.uniform(0, width, (14, 2))
  visible = rng.random(14) > 0.3
  perm = kp.flip_permutation(kp.LSP_JOINTS)

  def flip(p, v):
    q = p.copy()
    q[:, 0] = width - q[:, 0]
    return q[perm], v[perm]
  fp, fv = flip(points, visible)
  left, right = kp.LSP_JOINTS.index("left_wrist"), kp.LSP_JOINTS.index("right_wrist")
  np.testing.assert_allclose(fp[left], [width - points[right, 0], points[right, 1]])
  assert fv[left] == visible[right]
  back = flip(fp, fv)
  np.testing.assert_allclose(back[0], points)
  np.testing.assert_array_equal(back[1], visible)
