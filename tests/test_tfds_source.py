"""`tfds:` sources on TFDS's mocked datasets (tfds.testing.mock_data: random examples, no files)."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from persistent import data
from persistent.data import images as image_lib
from persistent.data import tfds_source

sys.path.insert(0, os.path.dirname(__file__))
from fuzz_tools import mutate_tree  # noqa: E402
from image_files import encode  # noqa: E402

tf = pytest.importorskip("tensorflow", reason="tfds.testing.mock_data needs TensorFlow "
                         "(pip install -r requirements-dev.txt)")
tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def mock():
  def make(n):
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)
  return make


def test_importing_the_package_imports_neither_tensorflow_nor_tfds():
  code = "import sys, persistent.data; print('tensorflow' in sys.modules, 'tensorflow_datasets' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False"]


def test_celeb_a_attributes_landmarks_and_pose(mock):
  with mock(6):
    src = data.open_source("tfds:celeb_a:train")
    assert len(src) == 6 and src.ids[2] == "tfds:celeb_a:train:2"
    ex = src[2]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (218, 178, 3)
    assert ex["id"] == "tfds:celeb_a:train:2"
    attrs = ex["attributes"]
    assert attrs["Male"] in (0.0, 1.0) and attrs["Eyeglasses"] in (0.0, 1.0) and len(attrs) == 43
    assert {"yaw", "roll", "pitch"} <= set(attrs)
    assert ex["landmarks_5"].shape == (5, 2) and ex["landmarks_5"].dtype == np.float32
    np.testing.assert_array_equal(src[2]["image"], ex["image"])  # deterministic random access
    # The generic trailing slice and batched, threaded loading.
    part = data.open_source("tfds:celeb_a:train[2:5]")
    assert part.ids == src.ids[2:5]
    batches = list(data.iterate(part, 2, workers=3))
    assert [len(b) for b in batches] == [2, 1]
    np.testing.assert_array_equal(batches[0][0]["image"], ex["image"])
  assert tf.config.get_visible_devices("GPU") == []


def test_imagenet2012_labels_file_names_and_order(mock):
  with mock(5):
    src = data.open_source("tfds:imagenet2012:validation")
    ex = src[0]
    assert ex["image"].ndim == 3 and ex["image"].shape[2] == 3 and ex["image"].dtype == np.uint8
    assert isinstance(ex["label"], int) and 0 <= ex["label"] < 1000
    assert isinstance(ex["file_name"], str)
    ordered = data.open_source("tfds:imagenet2012:validation,order=file_name")
    names = [ordered[i]["file_name"] for i in range(len(ordered))]
    assert names == sorted(names) and sorted(names) == sorted(src[i]["file_name"] for i in range(5))
    assert ordered.spec != src.spec  # different order, different feature cache
    assert len(data.open_source("tfds:imagenet2012:validation[3:]")) == 2


def test_the300w_lp_landmarks_in_pixels_and_pose(mock):
  with mock(2):
    ex = data.open_source("tfds:the300w_lp")[1]
    assert ex["image"].shape == (450, 450, 3)
    assert ex["landmarks"].shape == (68, 2) and ex["landmarks"].dtype == np.float32
    assert set(ex["attributes"]) == {"pitch", "yaw", "roll"}
    assert ex["pose_params"].shape == (7,)


def test_voc_boxes_in_pixels():
  # TFDS's mock generator cannot build voc's 'objects' sequence (sub-features of unequal lengths),
  # so the adapter gets a hand-made record in TFDS's numpy layout.
  import io
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.full((40, 60, 3), 7, np.uint8)).save(buf, "PNG")
  raw = {"image": buf.getvalue(), "image/filename": b"000005.jpg", "labels": np.array([8, 14]),
         "labels_no_difficult": np.array([8]),
         "objects": {"bbox": np.array([[0.1, 0.2, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5]], np.float32),
                     "label": np.array([8, 14]), "pose": np.array([0, 1]),
                     "is_truncated": np.array([False, True]), "is_difficult": np.array([False, False])}}
  ex = tfds_source.to_example("voc", raw, "tfds:voc/2007:train:0")
  assert ex["file_name"] == "000005.jpg" and ex["image"].shape == (40, 60, 3)
  np.testing.assert_allclose(ex["boxes"], [[12, 4, 60, 20], [0, 0, 30, 40]], atol=1e-4)
  assert ex["box_labels"].tolist() == [8, 14] and ex["labels"].tolist() == [8, 14]


def test_rgb_task_runs_on_a_tfds_source(mock, tmp_path):
  from configs import rgb as rgb_config
  from persistent import experiment
  c = rgb_config.get_config()
  c.data.train, c.data.test = "tfds:celeb_a:train[:12]", "tfds:celeb_a:train[12:]"
  c.rgb.size, c.batch_size, c.features.cache_dir, c.num_figure_examples = 6, 8, "", 2
  with mock(16):
    m = experiment.run(c, str(tmp_path / "run"))
  assert m["n_train"] == 12 and m["n_test"] == 4 and np.isfinite(m["mae"])


def test_bad_specs_name_the_problem(mock):
  with pytest.raises(ValueError, match="needs a dataset"):
    data.open_source("tfds")
  with pytest.raises(ValueError, match="bad option 'colour=red'"):
    data.open_source("tfds:celeb_a:train,colour=red")
  with pytest.raises(ValueError, match="order"):
    data.open_source("tfds:celeb_a:train,order=random")
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
    data.open_source("tfds:no_such_dataset_xyz:train")
  with pytest.raises(ValueError, match="cannot decode the image of x"):
    tfds_source.decode_image(b"not an image", "x")
  with pytest.raises(ValueError, match="no 'image' feature"):
    tfds_source.to_example("mnist_like", {"label": 3}, "x")


# --- fuzzing the mapping from TFDS records to examples ------------------------------------------

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _png(array):
  return encode(Image.fromarray(array), "PNG")


@pytest.fixture(scope="module")
def records():
  """One real record (TFDS's numpy layout, image still encoded) per mapped dataset."""
  out = {}
  with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
    for name, split in (("celeb_a", "train"), ("the300w_lp", "train"), ("imagenet2012", "validation")):
      ds = tfds.data_source(name, split=split, decoders={"image": tfds.decode.SkipDecoding()})
      out[name] = ds[0]
  out["voc"] = {"image": _png(np.full((40, 60, 3), 7, np.uint8)), "image/filename": b"000005.jpg",
                "labels": np.array([8, 14]),
                "objects": {"bbox": np.array([[0.1, 0.2, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5]], np.float32),
                            "label": np.array([8, 14]), "pose": np.array([0, 1])}}
  return out


HOSTILE = [None, 7, -1, 1e300, float("nan"), "text", b"junk", b"", {}, {"a": 1}, [[1], [1, 2]],
           np.zeros(0), np.array("s"), np.full(3, np.nan), np.zeros((68, 3), np.float32), np.zeros((2, 2), np.uint8),
           np.zeros((2, 2, 5), np.uint8), np.ones((3, 4), np.float32), np.array(2 ** 40), np.array([True]),
           _png(np.zeros((3, 3, 4), np.uint8)), _png(np.zeros((3, 3), np.uint16)), _png(np.zeros((2, 2, 3), np.uint8))[:-20]]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's overflow warnings: values gone inf
@settings(FUZZ, max_examples=400)
@given(st.sampled_from(["celeb_a", "the300w_lp", "imagenet2012", "voc"]),
       st.lists(st.tuples(st.sampled_from(["delete", "replace", "replace", "cut"]), st.integers(0, 10 ** 6),
                          st.sampled_from(HOSTILE)), min_size=1, max_size=3))
def test_fuzzed_records_give_our_errors_naming_the_example(records, name, ops):
  where = f"tfds:{name}:train:{len(ops)}"
  start = time.perf_counter()
  try:
    ex = tfds_source.to_example(name, mutate_tree(records[name], ops), where)
    assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3 and ex["image"].shape[2] == 3
  except data.DataError as e:
    assert where in str(e)
  assert time.perf_counter() - start < 3.0


def test_the_fuzz_bases_map(records):
  for name, record in records.items():
    assert tfds_source.to_example(name, record, "x")["image"].dtype == np.uint8


def test_regressions_found_by_fuzzing(records):
  """Each of these raised a raw KeyError / TypeError / ValueError before (issue 17)."""
  celeb = dict(records["celeb_a"], landmarks={"nose_x": 1})
  with pytest.raises(data.BadAnnotation, match="r: no feature 'lefteye_x'"):
    tfds_source.to_example("celeb_a", celeb, "r")
  huge = dict(records["celeb_a"], landmarks=dict(records["celeb_a"]["landmarks"], nose_x=np.float64(1e300)))
  with pytest.raises(data.BadAnnotation, match="r: feature 'landmarks/nose_x' holds non-finite or huge"):
    tfds_source.to_example("celeb_a", huge, "r")  # was inf in the float32 landmarks (a warning)
  with pytest.raises(data.BadAnnotation, match="r: feature 'landmarks_2d' has shape"):
    tfds_source.to_example("the300w_lp", dict(records["the300w_lp"], landmarks_2d=np.zeros(5)), "r")
  with pytest.raises(data.BadAnnotation, match="r: feature 'objects/bbox' has shape"):
    tfds_source.to_example("voc", dict(records["voc"], objects={"bbox": np.zeros(5), "label": np.zeros(1)}), "r")
  with pytest.raises(data.BadAnnotation, match="r: expected a dict of features"):
    tfds_source.to_example("voc", dict(records["voc"], objects=None), "r")
  with pytest.raises(data.BadImage, match="r: a decoded image must be uint8"):
    tfds_source.to_example("imagenet2012", dict(records["imagenet2012"], image=np.zeros((2, 2, 5), np.uint8)), "r")
  # An RGBA record image was repeated from its first channel; it is composited like files now.
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 255
  np.testing.assert_array_equal(tfds_source.decode_image(rgba, "r")[0, 0], [200, 0, 0])
  assert image_lib.decode(_png(rgba), "r")[0, 0].tolist() == [200, 0, 0]
