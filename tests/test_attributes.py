"""Attribute sources (LFW with Kumar et al.'s file, a generic table) and their bad-input errors."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from persistent import data
from persistent.data import attributes

NAMES = ["Male", "Asian", "Middle Aged", "Eyeglasses"]


def write_lfw(root, rows, names=NAMES, images=None):
  lfw = root / "lfw"
  for person, num, _ in rows if images is None else images:
    folder = lfw / person.replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    colour = (40 * num % 256, 100, 200)
    Image.new("RGB", (25, 30), colour).save(folder / f"{person.replace(' ', '_')}_{num:04d}.jpg")
  lines = ["# Created by Neeraj Kumar", "\t".join(["#", "person", "imagenum", *names])]
  lines += ["\t".join([p, str(n), *(f"{v:.3f}" for v in vals)]) for p, n, vals in rows]
  attr = root / "lfw_attributes.txt"
  attr.write_text("\n".join(lines) + "\n")
  return str(lfw), str(attr)


ROWS = [("Aaron Eckhart", 1, [1.5, -0.2, 0.3, -1.0]), ("Aaron Peirsol", 1, [1.1, -0.5, -0.7, 0.4]),
        ("Aaron Peirsol", 2, [0.9, -0.4, -0.6, 1.2])]


def test_lfw_attributes_source(tmp_path):
  lfw, attr = write_lfw(tmp_path, ROWS)
  names, rows = attributes.read_lfw_attributes(attr)
  assert names == NAMES and len(rows) == 3 and rows[2][:2] == ("Aaron Peirsol", 2)
  src = data.open_source(f"lfw_attributes:{lfw},{attr}")
  assert len(src) == 3 and src.ids[2].endswith(os.path.join("Aaron_Peirsol", "Aaron_Peirsol_0002.jpg"))
  ex = src[2]
  assert ex["image"].shape == (30, 25, 3) and ex["person"] == "Aaron Peirsol" and ex["imagenum"] == 2
  assert ex["attributes"]["Eyeglasses"] == pytest.approx(1.2) and ex["attributes"]["Middle Aged"] == pytest.approx(-0.6)
  np.testing.assert_allclose(attributes.values(src[:3], ["Male", "Eyeglasses"]),
                             [[1.5, -1.0], [1.1, 0.4], [0.9, 1.2]], rtol=1e-6)
  assert len(data.open_source(f"lfw_attributes:{lfw},{attr}[1:]")) == 2


def test_lfw_bad_input_names_the_problem(tmp_path):
  lfw, attr = write_lfw(tmp_path, ROWS, images=ROWS[:2])  # the third row's image is missing
  with pytest.raises(ValueError, match="attribute rows without an image.*Aaron_Peirsol_0002.jpg"):
    data.open_source(f"lfw_attributes:{lfw},{attr}")
  with pytest.raises(ValueError, match="LFW_DIR,ATTR_FILE"):
    data.open_source(f"lfw_attributes:{lfw}")
  with pytest.raises(FileNotFoundError, match="attribute file not found"):
    data.open_source(f"lfw_attributes:{lfw},{tmp_path}/nope.txt")
  bad = tmp_path / "bad.txt"
  bad.write_text("person,imagenum,Male\nA,1,2\n")
  with pytest.raises(ValueError, match="no header line"):
    attributes.read_lfw_attributes(str(bad))
  bad.write_text("# c\n#\tperson\timagenum\tMale\nA B\t1\tyes\n")
  with pytest.raises(ValueError, match=r"bad.txt:3: attribute 'Male' is not a number: 'yes'"):
    attributes.read_lfw_attributes(str(bad))
  bad.write_text("# c\n#\tperson\timagenum\tMale\nA B\t1\t0.5\nA B\t1\t0.7\n")
  with pytest.raises(ValueError, match="bad.txt:4: duplicate row for 'A B' image 1"):
    attributes.read_lfw_attributes(str(bad))
  bad.write_text("# c\n#\tperson\timagenum\tMale\nA B\t1\n")
  with pytest.raises(ValueError, match="bad.txt:3: 2 tab-separated fields, header has 3"):
    attributes.read_lfw_attributes(str(bad))


def write_table_dataset(root, files, table_rows, header="image,red,size"):
  images = root / "imgs"
  for f in files:
    (images / f).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images / f)
  table = root / "attrs.csv"
  table.write_text("\n".join([header, *table_rows]) + "\n")
  return str(images), str(table)


def test_generic_attribute_table(tmp_path):
  images, table = write_table_dataset(tmp_path, ["a.png", "sub/b.png"], ["sub/b.png,0.5,2", "a.png,1,3"])
  src = data.open_source(f"attributes:{images},{table}")
  assert [os.path.basename(i) for i in src.ids] == ["a.png", "b.png"]
  assert src[1]["attributes"] == {"red": 0.5, "size": 2.0}


def test_generic_table_bad_input(tmp_path):
  images, table = write_table_dataset(tmp_path, ["a.png", "b.png", "c.png"], ["a.png,1,3"])
  with pytest.raises(ValueError, match=r"no attribute row for 2 images .*'b.png', 'c.png'"):
    data.open_source(f"attributes:{images},{table}")
  images, table = write_table_dataset(tmp_path / "2", ["a.png"], ["a.png,1,3", "ghost.png,0,1"])
  with pytest.raises(ValueError, match="attribute rows without an image.*'ghost.png'"):
    data.open_source(f"attributes:{images},{table}")
  images, table = write_table_dataset(tmp_path / "3", ["a.png"], ["a.png,1,nan"])
  with pytest.raises(ValueError, match="attribute 'size' is not finite"):
    data.open_source(f"attributes:{images},{table}")


def test_values_names_examples_without_attributes_and_unknown_names():
  exs = [{"id": "a", "attributes": {"Male": 1.0}}, {"id": "b.jpg", "image": None}, {"id": "c.jpg"}]
  with pytest.raises(ValueError, match=r"examples without attributes.*2 images: 'b.jpg', 'c.jpg'"):
    attributes.values(exs, ["Male"])
  with pytest.raises(ValueError, match=r"unknown attribute names \['Beard'\] for example 'a'; it has: Male"):
    attributes.values(exs[:1], ["Male", "Beard"])
  with pytest.raises(ValueError, match="non-finite attribute values"):
    attributes.values([{"id": "n", "attributes": {"yaw": math.nan}}], ["yaw"])


def test_pose_from_five_landmarks():
  frontal = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], float)
  p = attributes.pose_from_landmarks5(frontal)
  assert p["yaw"] == pytest.approx(0) and p["roll"] == pytest.approx(0) and p["pitch"] == pytest.approx(0.5)
  turned = frontal.copy()
  turned[2, 0] += 8  # nose towards the image's right
  assert attributes.pose_from_landmarks5(turned)["yaw"] == pytest.approx(0.2)
  t = 0.3  # the whole face rotated by t
  rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
  tilted = (frontal - 50) @ rot.T + 50
  q = attributes.pose_from_landmarks5(tilted)
  assert q["roll"] == pytest.approx(t) and q["yaw"] == pytest.approx(0, abs=1e-9)
  assert q["pitch"] == pytest.approx(0.5)
  assert math.isnan(attributes.pose_from_landmarks5(np.zeros((5, 2)))["yaw"])
