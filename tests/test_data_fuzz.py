"""Fuzzing the data readers: malformed and hostile annotation files, label maps and images raise
only the data layer's own errors (`data.DataError`, or FileNotFoundError), naming the file, and
quickly (no hang, no blow-up).

Inputs are valid files of each format mutated at three levels: bytes (flips, cuts, insertions,
deletions, repeats; invalid UTF-8 included), tokens (a number or word replaced by a hostile one:
nan, inf, 1e39, -1, empty, a brace, a NUL, a non-ASCII letter; lines deleted, repeated, swapped)
and, for COCO JSON, structure (a field deleted or given a value of another type or a hostile
number). Every reader runs on each example with the checks that follow it when a source is
opened. 2,400 examples in all, sized for CI (15-50 s on two shared cores).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import struct
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from persistent import data
from persistent.data import attributes, faces, images, keypoints, segmentation

sys.path.insert(0, os.path.dirname(__file__))
import image_files as imf  # noqa: E402
from fuzz_tools import byte_op, mutate_bytes, mutate_tree  # noqa: E402

# Pillow warns about the corrupt TIFF/EXIF blocks and huge headers the mutations make; expected.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW_SECONDS = 3.0  # one example may take this long at most (a hang fails the test)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  """A folder with one small image, for the readers that also open images."""
  folder = tmp_path_factory.mktemp("fuzz")
  Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(folder / "a.jpg")
  return folder


def expect_clean(path: str, fn, *args) -> None:
  """fn(*args) returns, or raises DataError / FileNotFoundError whose message names `path`."""
  start = time.perf_counter()
  try:
    fn(*args)
  except (data.DataError, FileNotFoundError) as e:
    assert os.path.basename(path) in str(e), f"the error does not name {path}: {e}"
  elapsed = time.perf_counter() - start
  assert elapsed < SLOW_SECONDS, f"took {elapsed:.1f}s"


# --- mutations ---------------------------------------------------------------------------------

HOSTILE_TOKENS = ["", "nan", "NaN", "inf", "-inf", "1e39", "-1e39", "1e308", "-1", "0", "-0", "3.5e-300",
                  "99999999999999999999", "{", "}", ",", ";", "\t", " , ", "\x00", "é", "x", "1_0",
                  "0x10", "1,2", "\"", "'", "<", ">", "&", "#", ":", "n_points: 3", "\r", "\u2028"]
_token_op = st.tuples(st.sampled_from(["replace", "replace", "replace", "drop_line", "repeat_line",
                                       "swap_lines", "insert"]),
                      st.floats(0, 1), st.floats(0, 1), st.sampled_from(HOSTILE_TOKENS))
_TOKEN = re.compile(r"[^\s,<>=\"]+")


def mutate_tokens(text: str, ops) -> str:
  for op, at, other, token in ops:
    lines = text.split("\n")
    j, k = (min(int(f * len(lines)), len(lines) - 1) for f in (at, other))
    if op == "replace":
      spans = [m.span() for m in _TOKEN.finditer(text)]
      if spans:
        a, b = spans[min(int(at * len(spans)), len(spans) - 1)]
        text = text[:a] + token + text[b:]
      continue
    if op == "drop_line":
      del lines[j]
    elif op == "repeat_line":
      lines.insert(j, lines[j])
    elif op == "swap_lines":
      lines[j], lines[k] = lines[k], lines[j]
    else:
      lines.insert(j, token)
    text = "\n".join(lines)
  return text


def file_content(base: str):
  """Strategy: the text `base` mutated by tokens, by bytes (as UTF-8), or both; or random bytes."""
  tokens = st.lists(_token_op, min_size=1, max_size=5)
  nbytes = st.lists(byte_op, min_size=1, max_size=4)
  return st.one_of(
      tokens.map(lambda ops: mutate_tokens(base, ops).encode("utf-8", "surrogatepass")),
      nbytes.map(lambda ops: mutate_bytes(base.encode(), ops)),
      st.tuples(tokens, nbytes).map(lambda t: mutate_bytes(mutate_tokens(base, t[0]).encode(), t[1])),
      st.binary(max_size=300))


def _write(folder, name: str, content: bytes) -> str:
  path = os.path.join(folder, name)
  with open(path, "wb") as f:
    f.write(content)
  return path


# --- faces -------------------------------------------------------------------------------------

PTS = "version: 1\nn_points: 4\n{\n10.5 12\n30 12.25\n20 25\n21 33.5\n}\n"
HELEN = "a\n9.5 , 11\n29 , 11.25\n19 , 24\n20 , 32.5\n"


def _pts_pipeline(path: str) -> None:
  pts = faces.parse_pts(path)
  faces.check_face(pts, (50, 40), path)


def _helen_pipeline(path: str) -> None:
  _, pts = faces.parse_helen(path, 0)
  faces.check_face(pts, (50, 40), path)


def test_the_bases_are_valid(work):
  _pts_pipeline(_write(work, "base.pts", PTS.encode()))
  _helen_pipeline(_write(work, "base.txt", HELEN.encode()))
  keypoints.parse_voc_keypoint_xml(_write(work, "base.xml", VOC_XML.encode()))
  assert len(_coco_pipeline(_write(work, "base.json", json.dumps(COCO).encode()), work)) == 2
  attributes.read_table(_write(work, "base.csv", TABLE.encode()))
  attributes.read_table(_write(work, "base.tsv", TABLE.replace(",", "\t").encode()))
  attributes.read_lfw_attributes(_write(work, "base_lfw.txt", LFW.encode()))
  for name, content in LABELS.items():
    _label_pipeline(_write(work, "base_" + name, content))
  for name, content in IMAGES.items():
    assert images.read_image(_write(work, "base_" + name, content)).dtype == np.uint8, name
  keypoints.parse_voc_keypoint_xml(_write(work, "base2.xml", mutate_xml(VOC_XML, [])))


@settings(FUZZ, max_examples=300)
@given(file_content(PTS))
def test_pts_files(work, content):
  path = _write(work, "face.pts", content)
  expect_clean(path, _pts_pipeline, path)


@settings(FUZZ, max_examples=200)
@given(file_content(HELEN))
def test_helen_files(work, content):
  path = _write(work, "1.txt", content)
  expect_clean(path, _helen_pipeline, path)


# --- VOC keypoint XML ----------------------------------------------------------------------------

VOC_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotation>
  <image>2008_000001</image>
  <category>cat</category>
  <visible_bounds height="20.00" width="30.00" xmin="5.00" ymin="4.00"/>
  <keypoints>
    <keypoint name="Nose" visible="1" x="10" y="12" z="0"/>
    <keypoint name="L_Eye" visible="0" x="8" y="9" z="0"/>
  </keypoints>
</annotation>
"""


_xml_op = st.tuples(st.sampled_from(["attribute", "attribute", "text", "drop_attribute", "drop", "repeat"]),
                    st.integers(0, 10 ** 6), st.integers(0, 10 ** 6), st.sampled_from(HOSTILE_TOKENS))


def mutate_xml(text: str, ops) -> bytes:
  """Well-formed XML with hostile content: values replaced or dropped, elements dropped or repeated."""
  root = ET.fromstring(text)
  for op, pick, other, token in ops:
    nodes = list(root.iter())
    node = nodes[pick % len(nodes)]
    names = sorted(node.attrib)
    if op == "attribute" and names:
      node.set(names[other % len(names)], token)
    elif op == "drop_attribute" and names:
      del node.attrib[names[other % len(names)]]
    elif op == "text":
      node.text = token
    else:
      parent = next((p for p in root.iter() if node in list(p)), None)
      if parent is not None:
        (parent.remove(node) if op == "drop" else parent.append(copy.deepcopy(node)))
  return ET.tostring(root, encoding="utf-8")


@settings(FUZZ, max_examples=300)
@given(st.one_of(file_content(VOC_XML), st.lists(_xml_op, min_size=1, max_size=4).map(lambda ops: mutate_xml(VOC_XML, ops))))
def test_voc_keypoint_xml(work, content):
  path = _write(work, "2008_000001_1.xml", content)
  expect_clean(path, keypoints.parse_voc_keypoint_xml, path)


# --- COCO JSON -----------------------------------------------------------------------------------

COCO = {"images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40},
                   {"id": 8, "file_name": "b.jpg"}],
        "categories": [{"id": 1, "name": "person", "keypoints": ["nose", "left_eye", "right_eye"]}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0,
             "keypoints": [4, 5, 2, 6, 7, 1, 0, 0, 0], "num_keypoints": 2},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1,
             "keypoints": [1, 1, 2, 0, 0, 0, 0, 0, 0]},
            {"id": 3, "image_id": 7, "category_id": 1, "keypoints": [10, 11, 2, 20, 21, 2, 0, 0, 0]}]}
HOSTILE_VALUES = [None, True, False, "", "x", "../a.jpg", 0, -1, 1, 7, 2 ** 70, -2 ** 63, 0.5, 1e308,
                  math.nan, math.inf, -math.inf, [], [1], [1, 2, 3, 4], ["a", "b"], [[1, 2]], {}, {"id": 7}]


_json_op = st.tuples(st.sampled_from(["delete", "replace", "replace", "replace", "duplicate", "empty"]),
                     st.integers(0, 10 ** 6), st.sampled_from(HOSTILE_VALUES))


def mutate_json(doc, ops):
  """mutate_tree, and now and then a document that is not an object at all."""
  for op, pick, value in ops:
    if op == "empty":
      return {} if pick % 2 else value
  return mutate_tree(doc, ops)


def _coco_pipeline(path: str, image_dir) -> list:
  src = data.open_source(f"coco_keypoints:{path},{image_dir}")
  return [src[i] for i in range(len(src))]


@settings(FUZZ, max_examples=400)
@given(st.one_of(st.lists(_json_op, min_size=1, max_size=4).map(lambda ops: json.dumps(mutate_json(COCO, ops)).encode()),
                 file_content(json.dumps(COCO, indent=1))))
def test_coco_json(work, content):
  path = _write(work, "kp.json", content)
  expect_clean(path, _coco_pipeline, path, work)


# --- attribute tables ------------------------------------------------------------------------------

TABLE = "image,Male,Smiling,pose\na.jpg,1,0,3\nsub/b.jpg,0,1,5\n"
LFW = ("# created by Kumar et al.\n#\tperson\timagenum\tMale\tMiddle Aged\n"
       "Aaron Eckhart\t1\t1.568\t-0.25\nAaron Peirsol\t2\t-0.5\t0.125\n")


@settings(FUZZ, max_examples=300)
@given(file_content(TABLE), st.booleans())
def test_attribute_tables(work, content, tabs):
  path = _write(work, "attributes.tsv" if tabs else "attributes.csv", content.replace(b",", b"\t") if tabs else content)
  expect_clean(path, attributes.read_table, path)


@settings(FUZZ, max_examples=200)
@given(file_content(LFW))
def test_lfw_attribute_files(work, content):
  path = _write(work, "lfw_attributes.txt", content)
  expect_clean(path, attributes.read_lfw_attributes, path)


# --- label maps and images -----------------------------------------------------------------------

_IDS = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 0, 1, 2], [3, 3, 3, 11, 0]], np.uint8)
LABELS = {
    "camvid.png": imf.png(_IDS, imf.GREY),
    "voc.png": imf.png(np.where(_IDS == 11, 255, _IDS).astype(np.uint8), imf.PALETTE,
                       extra=(imf.chunk(b"PLTE", bytes(range(256)) * 3),)),
}


def _label_pipeline(path: str) -> None:
  label = segmentation.read_label(path)
  segmentation.check_label(label, np.zeros((4, 5, 3), np.uint8), 21, path)


def mutate_png_chunks(content: bytes, ops) -> bytes:
  """Mutates the payload of PNG chunks and writes them with a valid CRC, so that the decoder
  reads on (a header with another size, bit depth or colour type; a palette cut short ...)."""
  chunks, at = [], 8
  while at + 8 <= len(content):
    n = struct.unpack(">I", content[at:at + 4])[0]
    chunks.append([content[at + 4:at + 8], content[at + 8:at + 8 + n]])
    at += 12 + n
  for op, pick, payload in ops:
    kind_payload = chunks[pick % len(chunks)]
    kind_payload[1] = mutate_bytes(kind_payload[1], [(op, pick // len(chunks), payload)])
  return content[:8] + b"".join(imf.chunk(kind, body) for kind, body in chunks)


def png_content(base: bytes):
  """Strategy: the PNG `base` mutated as bytes or chunk by chunk."""
  ops = st.lists(byte_op, min_size=1, max_size=4)
  return st.one_of(ops.map(lambda o: mutate_bytes(base, o)), ops.map(lambda o: mutate_png_chunks(base, o)))


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(sorted(LABELS)).flatmap(lambda name: st.tuples(st.just(name), png_content(LABELS[name]))))
def test_label_maps(work, name_content):
  name, content = name_content
  path = _write(work, name, content)
  expect_clean(path, _label_pipeline, path)


def _photo(h=24, w=32):
  y, x = np.mgrid[:h, :w]
  return np.stack([x * 8, y * 10, (x + y) * 4], -1).astype(np.uint8)


IMAGES = {
    "a.png": imf.png(_photo(), imf.RGB),
    "p.png": imf.png(_IDS, imf.PALETTE, extra=(imf.chunk(b"PLTE", bytes(range(36))), imf.chunk(b"tRNS", b"\x00\x80"))),
    "g16.png": imf.png(_IDS.astype(np.uint16) * 5000, imf.GREY, bit_depth=16),
    "a.jpg": imf.encode(Image.fromarray(_photo()), "JPEG", exif=imf.exif_orientation(6)),
    "prog.jpg": imf.encode(Image.fromarray(_photo()), "JPEG", progressive=True),
    "cmyk.jpg": imf.encode(Image.fromarray(_photo()).convert("CMYK"), "JPEG"),
    "a.gif": imf.encode(Image.fromarray(_photo()).convert("P"), "GIF"),
    "a.bmp": imf.encode(Image.fromarray(_photo()), "BMP"),
    "a.tif": imf.encode(Image.fromarray(_photo()), "TIFF"),
    "a.webp": imf.encode(Image.fromarray(_photo()), "WEBP"),
}


def _image_content(name: str):
  base = IMAGES[name]
  return png_content(base) if name.endswith(".png") else st.lists(byte_op, min_size=1, max_size=4).map(
      lambda ops: mutate_bytes(base, ops))


@settings(FUZZ, max_examples=400)
@given(st.sampled_from(sorted(IMAGES)).flatmap(lambda name: st.tuples(st.just(name), _image_content(name))))
def test_images(work, name_content):
  name, content = name_content
  path = _write(work, "fuzzed_" + name, content)
  expect_clean(path, images.read_image, path)


# --- what fuzzing found (each raised a raw error, or passed bad data on, before issue 17) --------

@pytest.mark.parametrize("name,read", [
    ("face.pts", faces.parse_pts), ("1.txt", faces.parse_helen), ("t.csv", attributes.read_table),
    ("lfw.txt", attributes.read_lfw_attributes),
    ("kp.json", lambda p: keypoints.read_coco_keypoints(p)),
])
def test_text_that_is_not_utf8(tmp_path, name, read):
  """UnicodeDecodeError escaped (Helen files were read with errors replaced, silently)."""
  path = _write(tmp_path, name, b"image,Male\n\xff\xfe,1\n")
  with pytest.raises(data.BadAnnotation, match=f"{name}: .* is not UTF-8 text \\(byte 11 is b'\\\\xff'\\)"):
    read(path)


def test_xml_declaring_an_unknown_encoding(tmp_path):
  """LookupError escaped."""
  path = _write(tmp_path, "a.xml", VOC_XML.replace('encoding="utf-8"', 'encoding="utg-8"').encode())
  with pytest.raises(data.BadAnnotation, match="a.xml is not valid XML: unknown encoding"):
    keypoints.parse_voc_keypoint_xml(path)


@pytest.mark.parametrize("doc,message", [
    ({**COCO, "annotations": [7]}, "annotation 0 is a int, not an object"),  # AttributeError
    ({**COCO, "images": None}, "the file has images None, expected list"),  # TypeError
    ({**COCO, "categories": 0.5}, "the file has categories 0.5, expected list"),
    ({**COCO, "annotations": [{**COCO["annotations"][0], "image_id": [7]}]}, r"unknown image_id \[7\]"),  # unhashable
    ({**COCO, "annotations": [{**COCO["annotations"][0], "keypoints": [[4, 5], 2, 6, 7, 1, 0, 0, 0]}]},
     "keypoints .* expected a list of numbers"),  # numpy's ragged-array ValueError, without the file
    ({**COCO, "annotations": [{**COCO["annotations"][0], "keypoints": [4, 5, 3] * 3}]}, "visibility flags \\[3.0\\]"),
    ({**COCO, "annotations": [{**COCO["annotations"][0], "bbox": [0, 0, "10", 10]}]}, "bbox .* expected a list of numbers"),
])
def test_malformed_coco_structure(tmp_path, doc, message):
  path = _write(tmp_path, "kp.json", json.dumps(doc).encode())
  with pytest.raises(data.BadAnnotation, match=f"kp.json: .*{message}"):
    keypoints.read_coco_keypoints(path)


def test_label_headers_that_pillow_rejects_with_value_errors(tmp_path):
  """'Truncated IHDR chunk' and 'invalid palette size' came as bare ValueErrors without the file."""
  base = LABELS["voc.png"]
  ihdr = _write(tmp_path, "ihdr.png", base[:8] + imf.chunk(b"IHDR", base[16:24]) + base[33:])
  palette = _write(tmp_path, "plte.png", base.replace(imf.chunk(b"PLTE", bytes(range(256)) * 3),
                                                     imf.chunk(b"PLTE", bytes(800))))
  for path in (ihdr, palette):
    with pytest.raises(data.BadImage, match=f"cannot decode label map .*{os.path.basename(path)}"):
      segmentation.read_label(path)


@pytest.mark.parametrize("name,content,read", [
    ("face.pts", "1e39 2\n3 4\n", faces.parse_pts),
    ("t.csv", "image,size\na.png,1e39\n", attributes.read_table),
    ("a.xml", VOC_XML.replace('x="10"', 'x="1e39"'), keypoints.parse_voc_keypoint_xml),
    ("b.xml", VOC_XML.replace('x="10"', 'x="nan"'), keypoints.parse_voc_keypoint_xml),
])
def test_numbers_beyond_float32_are_refused(tmp_path, name, content, read):
  """They were accepted and became inf (or stayed NaN) in the float32 arrays."""
  with pytest.raises(data.BadAnnotation, match=name):
    read(_write(tmp_path, name, content.encode()))


def test_hostile_sizes_are_bounded(tmp_path):
  """Deep nesting, entity expansion, huge fields and numbers: our errors, quickly."""
  cases = [
      ("deep.json", b"[" * 100_000 + b"]" * 100_000, keypoints.read_coco_keypoints, "nested too deeply"),
      ("digits.json", b'{"images": [{"id": 1' + b"0" * 5000 + b"}]}", keypoints.read_coco_keypoints, "not valid JSON"),
      ("laughs.xml", ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 "lol">'
                      + "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10))
                      + "]><annotation><image>&l9;</image></annotation>").encode(),
       keypoints.parse_voc_keypoint_xml, "not valid XML"),
      ("field.csv", b'image,a\n"' + b"x" * 200_000 + b'",1\n', attributes.read_table, "not a CSV table"),
  ]
  for name, content, read, message in cases:
    path = _write(tmp_path, name, content)
    start = time.perf_counter()
    with pytest.raises(data.BadAnnotation, match=f"{name}.*{message}"):
      read(path)
    assert time.perf_counter() - start < SLOW_SECONDS, name
