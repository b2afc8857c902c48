"""Keypoint sources (tiny XML / JSON fixtures), the per-class probe's algebra and a tiny run."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from persistent import data
from persistent.data import keypoints as kp_data
from persistent.tasks import keypoints as kp_task

XML = """<?xml version="1.0" encoding="utf-8"?>
<annotation>
  <image>{image}</image>
  <voc_id>1</voc_id>
  <category>{cls}</category>
  <visible_bounds height="20.00" width="30.00" xmin="5.00" ymin="4.00"/>
  <keypoints>
{points}
  </keypoints>
</annotation>
"""


def _point(name, x, y, visible=1):
  return f'    <keypoint name="{name}" visible="{visible}" x="{x}" y="{y}" z="0.00"/>'


def _voc_fixture(tmp_path):
  ann, jpg = tmp_path / "annotations", tmp_path / "JPEGImages"
  (ann / "cat").mkdir(parents=True)
  (ann / "bottle").mkdir()
  jpg.mkdir()
  for stem in ("2008_000001", "2008_000002"):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(jpg / f"{stem}.jpg")
  (ann / "cat" / "2008_000001_1.xml").write_text(XML.format(
      image="2008_000001", cls="cat", points="\n".join([_point("Nose", 10, 12), _point("L_Eye", 8, 9, 0)])))
  (ann / "cat" / "2008_000002_1.xml").write_text(XML.format(
      image="2008_000002", cls="cat", points=_point("R_Eye", 20.5, 9.25)))
  (ann / "bottle" / "2008_000002_2.xml").write_text(XML.format(
      image="2008_000002", cls="bottle", points=_point("L_Base", 1, 2)))
  return ann, jpg


def test_voc_keypoints_source(tmp_path):
  ann, jpg = _voc_fixture(tmp_path)
  src = data.open_source(f"voc_keypoints:{ann},{jpg}")
  assert src.ids == ["bottle/2008_000002_2", "cat/2008_000001_1", "cat/2008_000002_1"]
  ex = src[1]
  assert ex["class"] == "cat" and ex["keypoint_names"] == ("L_Eye", "Nose", "R_Eye")  # union, sorted
  np.testing.assert_allclose(ex["box"], [5, 4, 35, 24])
  np.testing.assert_allclose(ex["keypoints"][1], [10, 12])
  np.testing.assert_array_equal(ex["visible"], [False, True, False])  # visible=0, present, absent
  assert ex["image"].shape == (40, 50, 3)
  np.testing.assert_array_equal(src[2]["visible"], [False, False, True])
  assert kp_data.class_of(src.ids[2]) == "cat"
  (tmp_path / "list.txt").write_text("2008_000001\n")
  assert len(data.open_source(f"voc_keypoints:{ann},{jpg},list={tmp_path}/list.txt")) == 1
  assert len(data.open_source(f"voc_keypoints:{ann},{jpg},classes=bottle")) == 1


@pytest.mark.parametrize("text,message", [
    ("<annotation><category>cat</category></annotation>", "lacks the <image> field"),
    ("<annotation><image>x</image><category>cat</category><keypoints/></annotation>", "<visible_bounds>"),
    ('<annotation><image>x</image><category>cat</category><visible_bounds xmin="1" ymin="1" width="2"/>'
     "<keypoints/></annotation>", "lacks the attribute 'height'"),
    ('<annotation><image>x</image><category>cat</category><visible_bounds xmin="1" ymin="1" width="2" '
     'height="2"/><keypoints><keypoint name="a" visible="1" x="q" y="1"/></keypoints></annotation>',
     "is not a number"),
    ("<annotation><image>", "not valid XML"),
])
def test_voc_keypoints_bad_xml_names_the_file(tmp_path, text, message):
  ann, jpg = _voc_fixture(tmp_path)
  (ann / "cat" / "2009_bad_1.xml").write_text(text)
  with pytest.raises(ValueError, match=message) as e:
    data.open_source(f"voc_keypoints:{ann},{jpg}")
  assert "2009_bad_1.xml" in str(e.value)


def _coco(tmp_path, annotations):
  doc = {"images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40}],
         "categories": [{"id": 1, "name": "person", "keypoints": ["nose", "eye", "ear"]}],
         "annotations": annotations}
  (tmp_path / "img").mkdir(exist_ok=True)
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img" / "a.jpg")
  path = tmp_path / "kp.json"
  path.write_text(json.dumps(doc))
  return f"{path},{tmp_path / 'img'}"


def test_coco_keypoints_source(tmp_path):
  anns = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0,
           "keypoints": [4, 5, 2, 6, 7, 1, 0, 0, 0]},
          {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1,
           "keypoints": [1, 1, 2, 0, 0, 0, 0, 0, 0]},
          {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0,
           "keypoints": [0, 0, 0, 0, 0, 0, 0, 0, 0]}]
  spec = _coco(tmp_path, anns)
  src = data.open_source(f"coco_keypoints:{spec}")
  assert src.ids == ["person/7_1"]  # crowd and unlabelled objects skipped
  ex = src[0]
  np.testing.assert_allclose(ex["box"], [2, 3, 12, 23])
  np.testing.assert_allclose(ex["keypoints"], [[4, 5], [6, 7], [0, 0]])
  np.testing.assert_array_equal(ex["visible"], [True, True, False])
  assert ex["keypoint_names"] == ("nose", "eye", "ear") and ex["image"].shape == (40, 50, 3)
  np.testing.assert_array_equal(data.open_source(f"coco_keypoints:{spec},min_v=2")[0]["visible"],
                                [True, False, False])


def test_coco_keypoints_bad_files(tmp_path):
  good = {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 20], "keypoints": [4, 5, 2] * 3}
  with pytest.raises(ValueError, match=r"kp.json: annotation 1 has 6 keypoint values"):
    data.open_source("coco_keypoints:" + _coco(tmp_path, [{**good, "keypoints": [1, 2, 2, 3, 4, 2]}]))
  with pytest.raises(ValueError, match=r"kp.json: annotation 1 lacks the field 'keypoints'"):
    data.open_source("coco_keypoints:" + _coco(tmp_path, [{k: v for k, v in good.items() if k != "keypoints"}]))
  with pytest.raises(ValueError, match=r"kp.json: annotation 1 has unknown image_id 8"):
    data.open_source("coco_keypoints:" + _coco(tmp_path, [{**good, "image_id": 8}]))
  (tmp_path / "kp.json").write_text("{")
  with pytest.raises(ValueError, match="kp.json are not valid JSON"):
    data.open_source(f"coco_keypoints:{tmp_path / 'kp.json'},{tmp_path}")


def test_synthetic_keypoints_canonical_order():
  src = data.open_source("synthetic_keypoints:n=20,seed=0")
  assert len(src) > 20
  for i in range(len(src)):
    ex = src[i]
    assert ex["id"].split("/")[0] == ex["class"]
    if ex["class"] in ("square", "cross"):
      centre = (ex["box"][:2] + ex["box"][2:]) / 2
      d = ex["keypoints"] - centre
      up = np.arctan2(d[:, 1], d[:, 0])
      gap = np.abs(np.mod(up + np.pi / 2 + np.pi, 2 * np.pi) - np.pi)  # angular distance from 'up'
      assert gap[0] <= gap.min() + 1e-4  # keypoint 0 is the one nearest straight up
  assert src.spec != data.open_source("synthetic_keypoints:n=20,seed=1").spec


def test_context_boxes_and_relative_coordinates():
  from persistent import geometry
  boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
  np.testing.assert_allclose(geometry.context_boxes(boxes, 0.1), [[8, 16, 32, 64]])
  ex = {"keypoints": np.array([[9.5, 19.5], [29.5, 59.5], [0.0, 0.0]]), "visible": np.array([True, True, False]),
        "crop_box": boxes[0]}
  rel = kp_task.relative(ex).reshape(3, 2)  # 0-based pixel centres: p + 0.5 in box coordinates
  np.testing.assert_allclose(rel[:2], [[0, 0], [1, 1]])
  assert np.isnan(rel[2]).all()  # invisible: no target


def test_tiny_run_and_restore(tmp_path):
  from configs import keypoints as cfg
  from persistent import experiment
  c = cfg.get_config()
  c.backbone.weights = "random"
  c.data.train, c.data.test = "synthetic_keypoints:n=40,seed=0,size=32", "synthetic_keypoints:n=10,seed=1,size=32"
  c.features.cache_dir = str(tmp_path / "cache")  # the restore run reads cached features
  c.batch_size = 16
  m = experiment.run(c, str(tmp_path / "a"))
  assert 0 <= m["pck@0.1"] <= 1 and set(m["pck@0.1_per_class"]) <= {"disk", "square", "triangle", "cross"}
  assert len(m["pck_curve"]["alpha"]) == 101 and m["pck_curve"]["mean"][-1] >= m["pck@0.1"]
  assert os.path.exists(tmp_path / "a" / "pck_curves.png")
  c.restore = str(tmp_path / "a" / "checkpoint")
  m2 = experiment.run(c, str(tmp_path / "b"))
  assert m2["pck@0.1"] == pytest.approx(m["pck@0.1"])


# --- horizontal flips, hold-out splits, people ------------------------------------------------

def test_flip_example_moves_pixels_and_swaps_left_and_right():
  """Hand-made: a red left eye at pixel (row 1, col 2), a green right eye at (1, 6) of a 10x4
  image; after the flip 'left_eye' is the mirrored right eye (green, col 3), 'right_eye' the
  mirrored left eye (red, col 7), and visibility travels with the eye."""
  image = np.zeros((4, 10, 3), np.uint8)
  image[1, 2] = (255, 0, 0)
  image[1, 6] = (0, 255, 0)
  ex = {"image": image, "id": "person/7_1", "class": "person", "keypoint_names": ("nose", "left_eye", "right_eye"),
        "keypoints": np.array([[0.0, 0.0], [2.5, 1.5], [6.5, 1.5]], np.float32),
        "visible": np.array([False, True, False]), "box": np.array([1, 0, 8, 4], np.float32)}
  f = kp_data.flip_example(ex)
  np.testing.assert_allclose(f["keypoints"][1:], [[3.5, 1.5], [7.5, 1.5]])
  np.testing.assert_array_equal(f["visible"], [False, False, True])
  np.testing.assert_allclose(f["box"], [2, 0, 9, 4])
  for j, colour in ((1, (0, 255, 0)), (2, (255, 0, 0))):  # each keypoint still sits on its pixel
    x, y = np.floor(f["keypoints"][j]).astype(int)
    np.testing.assert_array_equal(f["image"][y, x], colour)
  assert f["id"] == "person/7_1/flip" and kp_data.class_of(f["id"]) == "person"
  back = kp_data.flip_example(f)
  np.testing.assert_array_equal(back["image"], image)
  np.testing.assert_allclose(back["keypoints"], ex["keypoints"])
  np.testing.assert_array_equal(back["visible"], ex["visible"])
  np.testing.assert_allclose(back["box"], ex["box"])


def test_image_of_keypoint_ids():
  assert kp_data.image_of("person/7_12") == "7"
  assert kp_data.image_of("cat/2008_000001_2") == kp_data.image_of("dog/2008_000001_1") == "2008_000001"
  src = kp_task.with_flips(data.Source("s", ["person/1_1", "person/2_2"], lambda i: {"id": i}))
  assert src.ids == ["person/1_1", "person/2_2", "person/1_1/flip", "person/2_2/flip"]


def _visible_joints(doc, image_ids, min_v=1):
  keep = [a for a in doc["annotations"] if a["image_id"] in image_ids and not a.get("iscrowd")]
  return sum(int((np.array(a["keypoints"]).reshape(-1, 3)[:, 2] >= min_v).sum()) for a in keep)


def test_lspet_variant_on_a_slice(tmp_path):
  """configs/keypoints.py:lspet=DIR on 100 LSPET people: 20 held out, the training people and
  their mirror images fitted, and exactly the labelled joints of the held-out people scored."""
  from conftest import shared_path
  from configs import keypoints as cfg
  from persistent import experiment
  root = shared_path("data", "lspet")
  c = cfg.get_config(f"lspet={root}")
  assert c.data.test == ""
  c.data.train += "[:100]"
  c.keypoints.flip = True
  c.features.cache_dir = str(tmp_path / "cache")
  c.num_figure_examples = 2
  m = experiment.run(c, str(tmp_path / "run"))
  assert (m["n_train"], m["n_train_flipped"], m["n_test"]) == (160, 80, 20)
  joints = m["pck@0.1_per_keypoint"]["person"]
  assert list(joints) == list(kp_data.LSP_JOINTS)
  assert all(v is None or 0 <= v <= 1 for v in joints.values()) and 0 <= m["pck@0.1"] <= 1
  # the held-out people, independently: their labelled joints are exactly the ones scored
  src = data.open_source(c.data.train)
  from persistent.data import holdout
  _, test = holdout.split(src, 0.2, c.seed, [kp_data.image_of(e) for e in src.ids])
  with open(f"{root}/person_keypoints.json") as f:
    doc = json.load(f)
  assert m["n_test_keypoints"] == _visible_joints(doc, {int(kp_data.image_of(e)) for e in test.ids})
  assert len(m["pck_curve_mean_shape"]) == 101
  assert os.path.getsize(tmp_path / "run" / "keypoint_examples.png") > 1000
