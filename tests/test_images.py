"""Image decoding (persistent/data/images.py): every mode, EXIF orientation, animations, bombs,
corrupt files; and where a bad image is reported (file and index) or skipped (on_bad=skip)."""
import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image

from persistent import data
from persistent.data import images, tfds_source

sys.path.insert(0, os.path.dirname(__file__))
import image_files as imf  # noqa: E402


def _write(tmp_path, name, content: bytes) -> str:
  path = tmp_path / name
  path.write_bytes(content)
  return str(path)


def _pattern(h=6, w=5, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _over_white(rgb, alpha):
  """Float64 reference of compositing over white, rounded."""
  a = alpha.astype(np.float64)[..., None] / 255
  return np.round(rgb.astype(np.float64) * a + 255 * (1 - a))


# --- modes -------------------------------------------------------------------------------------

def test_rgb_and_grey_modes(tmp_path):
  rgb = _pattern()
  np.testing.assert_array_equal(images.read_image(_write(tmp_path, "a.png", imf.png(rgb, imf.RGB))), rgb)
  grey = rgb[..., 0]
  out = images.read_image(_write(tmp_path, "g.png", imf.png(grey, imf.GREY)))
  np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, 2))
  bits = np.array([[1, 0, 1], [0, 0, 1]], bool)
  out = images.read_image(_write(tmp_path, "b.bmp", imf.encode(Image.fromarray(bits), "BMP")))
  np.testing.assert_array_equal(out[..., 1], bits * 255)
  assert out.dtype == np.uint8 and out.shape == (2, 3, 3)


def test_16_bit_grey_keeps_the_high_byte(tmp_path):
  values = np.array([[0, 255, 256, 511, 32768], [40000, 65280, 65535, 1000, 12345]], np.uint16)
  out = images.read_image(_write(tmp_path, "g16.png", imf.png(values, imf.GREY, bit_depth=16)))
  np.testing.assert_array_equal(out[..., 0], values // 256)  # Pillow's convert() gives 255 for all >= 255
  np.testing.assert_array_equal(out[..., 2], values // 256)
  # 16-bit colour PNGs: Pillow keeps the high byte itself; the same rule, so one photo stored as
  # 16-bit grey or 16-bit RGB gives the same 8 bits.
  rgb16 = np.stack([values, values, values], -1)
  out_rgb = images.read_image(_write(tmp_path, "c16.png", imf.png(rgb16, imf.RGB, bit_depth=16)))
  np.testing.assert_array_equal(out_rgb, out)
  # Mode I (32-bit integers, e.g. TIFF): taken as 16-bit samples, clipped to 0..65535.
  wide = np.array([[-5, 0, 70000, 65535, 4096]], np.int32)
  path = _write(tmp_path, "i.tif", imf.encode(Image.fromarray(wide, "I"), "TIFF"))
  with Image.open(path) as im:
    assert im.mode == "I"
  np.testing.assert_array_equal(images.read_image(path)[0, :, 0], [0, 0, 255, 255, 16])


def test_float_images_are_refused(tmp_path):
  path = _write(tmp_path, "f.tif", imf.encode(Image.fromarray(np.ones((3, 3), np.float32)), "TIFF"))
  with pytest.raises(data.BadImage, match=r"f.tif: floating-point images \(mode F\)"):
    images.read_image(path)


def test_cmyk_uses_the_standard_formula(tmp_path):
  cmyk = np.array([[[10, 20, 30, 40], [200, 0, 0, 255], [0, 0, 0, 0], [255, 128, 64, 10]]], np.uint8)
  k = cmyk[..., 3:].astype(np.float64)
  expected = np.round((255 - k) * (1 - cmyk[..., :3] / 255))
  im = Image.fromarray(cmyk, "CMYK")
  got = images.read_image(_write(tmp_path, "c.tif", imf.encode(im, "TIFF")))
  np.testing.assert_allclose(got, expected, atol=1)
  # A CMYK JPEG (Adobe's inverted storage): flat blocks, so JPEG loss stays small.
  block = np.repeat(np.repeat(cmyk, 16, 0), 16, 1)
  got = images.read_image(_write(tmp_path, "c.jpg", imf.encode(Image.fromarray(block, "CMYK"), "JPEG",
                                                               quality=100)))
  np.testing.assert_allclose(got[8, 8::16].astype(float), expected[0], atol=4)


def test_transparency_is_composited_over_white(tmp_path):
  rgb, alpha = _pattern(), _pattern(seed=1)[..., 0]
  alpha[0, :3] = (0, 255, 128)
  rgba = np.concatenate([rgb, alpha[..., None]], -1)
  got = images.read_image(_write(tmp_path, "rgba.png", imf.png(rgba, imf.RGBA)))
  np.testing.assert_allclose(got, _over_white(rgb, alpha), atol=1)
  np.testing.assert_array_equal(got[0, 0], [255, 255, 255])  # transparent: the background
  np.testing.assert_array_equal(got[0, 1], rgb[0, 1])  # opaque: unchanged
  grey = rgb[..., 1]
  got = images.read_image(_write(tmp_path, "la.png", imf.png(np.stack([grey, alpha], -1), imf.GREY_ALPHA)))
  np.testing.assert_allclose(got, _over_white(np.repeat(grey[..., None], 3, 2), alpha), atol=1)


def test_palette_with_transparency(tmp_path):
  palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200]], np.uint8)
  index = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
  trns = bytes([255, 0, 100])  # index 1 fully transparent, index 2 partly
  content = imf.png(index, imf.PALETTE, extra=(imf.chunk(b"PLTE", palette.tobytes()), imf.chunk(b"tRNS", trns)))
  got = images.read_image(_write(tmp_path, "p.png", content))
  alpha = np.frombuffer(trns, np.uint8)[index]
  np.testing.assert_allclose(got, _over_white(palette[index], alpha), atol=1)
  no_trns = imf.png(index, imf.PALETTE, extra=(imf.chunk(b"PLTE", palette.tobytes()),))
  np.testing.assert_array_equal(images.read_image(_write(tmp_path, "q.png", no_trns)), palette[index])
  # A grey PNG with a transparent grey level (a tRNS colour key).
  grey = np.array([[0, 7, 9]], np.uint8)
  keyed = imf.png(grey, imf.GREY, extra=(imf.chunk(b"tRNS", b"\x00\x07"),))
  np.testing.assert_array_equal(images.read_image(_write(tmp_path, "k.png", keyed))[0, :, 0], [0, 255, 9])


def test_animated_gif_gives_the_first_frame(tmp_path):
  red, blue = (np.zeros((4, 5, 3), np.uint8) for _ in range(2))
  red[..., 0], blue[..., 2] = 255, 255
  frames = [Image.fromarray(red), Image.fromarray(blue)]
  path = tmp_path / "anim.gif"
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
  with Image.open(path) as im:
    assert im.n_frames == 2
  np.testing.assert_array_equal(images.read_image(str(path)), red)


# --- EXIF orientation --------------------------------------------------------------------------

# The EXIF specification's meaning of each orientation: the displayed image from the stored one.
AS_MEANT = {1: lambda s: s, 2: np.fliplr, 3: lambda s: np.rot90(s, 2), 4: np.flipud,
            5: lambda s: s.swapaxes(0, 1), 6: lambda s: np.rot90(s, -1),
            7: lambda s: s.swapaxes(0, 1)[::-1, ::-1], 8: lambda s: np.rot90(s, 1)}


@pytest.mark.parametrize("orientation", sorted(AS_MEANT))
def test_exif_orientation_turns_the_image_as_the_camera_meant(tmp_path, orientation):
  stored = _pattern(4, 7)
  path = _write(tmp_path, "o.png", imf.encode(Image.fromarray(stored), "PNG",
                                              exif=imf.exif_orientation(orientation)))
  np.testing.assert_array_equal(images.read_image(path), AS_MEANT[orientation](stored))
  np.testing.assert_array_equal(images.read_image(path, exif=False), stored)


def _rotated_jpeg(tmp_path, name="im.jpg"):
  """A JPEG stored 30 wide x 20 high with orientation 6 (shown 20 wide x 30 high) and a white
  8x8 block at stored x 4..12, y 6..14 (the rest black)."""
  stored = np.zeros((20, 30, 3), np.uint8)
  stored[6:14, 4:12] = 255
  return _write(tmp_path, name, imf.encode(Image.fromarray(stored), "JPEG", quality=95,
                                           exif=imf.exif_orientation(6))), stored


def test_image_only_sources_turn_annotated_sources_keep_the_stored_grid(tmp_path):
  folder = tmp_path / "photos"
  folder.mkdir()
  path, stored = _rotated_jpeg(folder)
  assert data.open_source(f"imagefolder:{folder}")[0]["image"].shape == (30, 20, 3)
  # A 300-W face annotated on the stored grid (a 1-based .pts around the white block): the source
  # reads the stored grid, so the block lies where the landmarks say.
  pts = [(5, 7), (12, 7), (12, 14), (5, 14), (8, 10)]
  (folder / "im.pts").write_text("version: 1\nn_points: 5\n{\n" + "\n".join(f"{x} {y}" for x, y in pts) + "\n}\n")
  ex = data.open_source(f"300w:{folder},points=5")[0]
  assert ex["image"].shape == (20, 30, 3)
  for x, y in ex["landmarks"]:
    assert ex["image"][int(round(y)), int(round(x))].min() > 200
  # COCO: the JSON gives the stored size; keypoints on the block are on white pixels.
  import json
  doc = {"images": [{"id": 1, "file_name": "im.jpg", "width": 30, "height": 20}],
         "categories": [{"id": 1, "name": "person", "keypoints": ["a", "b"]}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 6, 8, 8],
                          "keypoints": [5, 7, 2, 10, 12, 2]}]}
  (tmp_path / "kp.json").write_text(json.dumps(doc))
  ex = data.open_source(f"coco_keypoints:{tmp_path / 'kp.json'},{folder}")[0]
  assert ex["image"].shape == (20, 30, 3)
  assert all(ex["image"][int(y), int(x)].min() > 200 for x, y in ex["keypoints"])


# --- bad files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content", [
    ("empty.jpg", b""),
    ("text.png", b"this is not an image at all"),
    ("trunc.png", imf.png(_pattern(64, 64), imf.RGB)[:300]),
    ("trunc.jpg", imf.encode(Image.fromarray(_pattern(64, 64)), "JPEG")[:400]),
    ("head.jpg", imf.encode(Image.fromarray(_pattern(64, 64)), "JPEG")[:2]),
    ("crc.png", imf.png(_pattern(), imf.RGB).replace(b"IDAT", b"IDAX")),
    ("icon.ico", imf.encode(Image.fromarray(_pattern(16, 16)), "ICO")),  # a format not accepted
])
def test_corrupt_and_unaccepted_files_name_the_file(tmp_path, name, content):
  path = _write(tmp_path, name, content)
  with pytest.raises(data.BadImage, match=f"cannot decode image .*{name}"):
    images.read_image(path)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.png"):
    images.read_image(str(tmp_path / "nowhere.png"))


def test_decompression_bombs_are_refused_from_the_header(tmp_path, monkeypatch):
  tiny = np.zeros((1, 1), np.uint8)
  # The header claims 9000 x 9000 (81 megapixels, above the 80 megapixel limit); no decoding.
  path = _write(tmp_path, "bomb.png", imf.png(tiny, imf.GREY, size=(9000, 9000)))
  with pytest.raises(data.BadImage, match=r"bomb.png: 9000x9000 = 81,000,000 pixels is above the limit of 80,000,000"):
    images.read_image(path)
  with pytest.raises(data.BadImage, match="bomb.png"):
    images.image_size(path)
  # Far above Pillow's own guard: still our error.
  huge = _write(tmp_path, "huge.png", imf.png(tiny, imf.GREY, size=(100000, 100000)))
  with pytest.raises(data.BadImage, match="huge.png.*decompression bomb.*PERSISTENT_MAX_PIXELS"):
    images.read_image(huge)
  # The limit is configurable.
  small = _write(tmp_path, "small.png", imf.png(_pattern(20, 20), imf.RGB))
  monkeypatch.setenv(images.MAX_PIXELS_ENV, "399")
  with pytest.raises(data.BadImage, match="20x20 = 400 pixels is above the limit of 399"):
    images.read_image(small)
  monkeypatch.setenv(images.MAX_PIXELS_ENV, "400")
  assert images.read_image(small).shape == (20, 20, 3)
  monkeypatch.setenv(images.MAX_PIXELS_ENV, "lots")
  with pytest.raises(ValueError, match="PERSISTENT_MAX_PIXELS='lots' must be a positive integer"):
    images.read_image(small)
  # Raising it above Pillow's guard raises that too: the huge header passes (header only, so
  # nothing is allocated).
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
  monkeypatch.setenv(images.MAX_PIXELS_ENV, str(10 ** 11))
  assert images.image_size(huge) == (100000, 100000)


def test_encoded_bytes_follow_the_same_rules():
  rgb, alpha = _pattern(), _pattern(seed=2)[..., 0]
  rgba = np.concatenate([rgb, alpha[..., None]], -1)
  np.testing.assert_allclose(tfds_source.decode_image(imf.png(rgba, imf.RGBA), "x"), _over_white(rgb, alpha), atol=1)
  np.testing.assert_allclose(tfds_source.decode_image(rgba, "x"), _over_white(rgb, alpha), atol=1)
  np.testing.assert_array_equal(tfds_source.decode_image(rgb[..., :1], "x"), np.repeat(rgb[..., :1], 3, 2))
  with pytest.raises(data.BadImage, match="record 7"):
    tfds_source.decode_image(np.zeros((2, 2, 5), np.uint8), "record 7")
  with pytest.raises(data.BadImage, match="record 8"):
    tfds_source.decode_image(imf.png(rgb, imf.RGB)[:-30], "record 8")


# --- where bad images are reported -------------------------------------------------------------

N_FOLDER, BAD_AT = 10_000, 7311


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("big")
  good = imf.tiny_png(9)
  for i in range(N_FOLDER):
    (folder / f"{i:05d}.png").write_bytes(good if i != BAD_AT else good[:40])
  return folder


def test_a_corrupt_image_among_ten_thousand_names_file_and_index(big_folder):
  src = data.open_source(f"imagefolder:{big_folder}")
  assert len(src) == N_FOLDER
  with pytest.raises(data.BadImage) as e:
    for _ in data.iterate(src, 500):
      pass
  message = str(e.value)
  assert f"example {BAD_AT} of imagefolder:{big_folder}" in message and f"{BAD_AT:05d}.png" in message
  # In a slice, the index within the slice.
  with pytest.raises(data.BadImage, match=f"example {BAD_AT - 7000} of .*{BAD_AT:05d}.png"):
    data.open_source(f"imagefolder:{big_folder}[7000:7400]")[BAD_AT - 7000]


def test_on_bad_skip_lists_what_it_leaves_out(big_folder, caplog):
  with caplog.at_level(logging.WARNING):
    src = data.open_source(f"imagefolder:{big_folder}", on_bad="skip")
  assert len(src) == N_FOLDER - 1 and f"{BAD_AT:05d}.png" not in " ".join(src.ids)
  assert len(src.skipped) == 1 and f"example {BAD_AT} " in src.skipped[0] and f"{BAD_AT:05d}.png" in src.skipped[0]
  assert "skipped 1 of 10000 examples" in caplog.text and f"{BAD_AT:05d}.png" in caplog.text
  plain = data.open_source(f"imagefolder:{big_folder}")
  assert src.spec != plain.spec  # a different set of examples, a different cache key
  assert src[BAD_AT]["id"] == plain.ids[BAD_AT + 1]
  # Slicing first: only the slice is checked, and the index is within it.
  part = data.open_source(f"imagefolder:{big_folder}[7300:7320]", on_bad="skip")
  assert len(part) == 19 and "example 11 " in part.skipped[0]
  assert data.open_source(f"imagefolder:{big_folder}[:50]", on_bad="skip").skipped == []


def test_on_bad_values_and_nothing_usable(tmp_path):
  with pytest.raises(ValueError, match="on_bad must be one of"):
    data.open_source("synthetic:n=2", on_bad="ignore")
  _write(tmp_path, "a.png", b"")
  _write(tmp_path, "b.png", b"junk")
  with pytest.raises(data.DataError, match="no usable examples, all 2 fail to load"):
    data.open_source(f"imagefolder:{tmp_path}", on_bad="skip")


def test_faces_on_bad_skips_bad_images_too(tmp_path):
  """The faces sources' own on_bad option and the open_source argument are one mechanism."""
  for stem in ("a", "b", "c"):
    _write(tmp_path, f"{stem}.png", imf.png(_pattern(20, 20), imf.RGB))
    (tmp_path / f"{stem}.pts").write_text("2 2\n10 3\n9 12\n")
  (tmp_path / "b.png").write_bytes((tmp_path / "b.png").read_bytes()[:-40])  # header fine, data cut
  (tmp_path / "c.pts").write_text("2 2\n")  # a bad annotation
  for src in (data.open_source(f"300w:{tmp_path},points=3,on_bad=skip"),
              data.open_source(f"300w:{tmp_path},points=3", on_bad="skip")):
    assert [os.path.basename(i) for i in src.ids] == ["a.png"]
    assert len(src.skipped) == 2 and "c.pts" in src.skipped[0] and "b.png" in src.skipped[1]
  with pytest.raises(data.BadAnnotation, match="c.pts"):
    data.open_source(f"300w:{tmp_path},points=3")


def test_wrapped_sources_name_the_index_once():
  def load(i):
    if i == 2:
      raise data.BadImage("cannot decode image /x/2.png: broken")
    return {"id": f"id{i}"}
  base = data.Source("base", ["id0", "id1", "id2"], load)
  outer = data.Source("outer", ["a", "b", "c", "d"], lambda j: base[j // 2 + 1])  # as tasks wrap
  with pytest.raises(data.BadImage) as e:
    outer[2]
  assert str(e.value) == "example 2 (id2) of base: cannot decode image /x/2.png: broken"
  with pytest.raises(data.BadImage, match=r"^example 1 \(id2\) of base\|m\|subset:\w+: cannot"):
    base.map(lambda ex: ex, "m").subset([0, 2])[1]
