"""Image decoding and geometry on the host (Pillow), with errors that name the file.

Decoding (`read_image` for files, `decode` for encoded bytes) always gives uint8 RGB (H, W, 3):
- Formats: JPEG (cameras' multi-picture JPEGs included), PNG, GIF, BMP, PPM/PGM/PBM, WebP, TIFF.
  Anything else, an empty, truncated or corrupt file raises `BadImage` (a ValueError) naming it.
- Size: an image with more than `max_pixels()` pixels (width x height, read from the header before
  any decoding) is refused as a possible decompression bomb. The limit is 80 megapixels (above
  every common camera sensor; 240 MB decoded) unless the environment variable
  PERSISTENT_MAX_PIXELS sets another; raising it above Pillow's own guard (89.5 megapixels)
  raises that guard to match.
- Modes: grey (L, 1) is replicated to three channels; palette (P) images take their palette's
  colours; 16-bit grey (I;16, and I, whose samples are taken to be 16-bit) keeps the high byte,
  v >> 8, as Pillow does for 16-bit colour PNGs (samples outside 0..65535 are clipped; Pillow's own
  conversion would clip every value above 255 to white); CMYK uses Pillow's conversion
  R = (255 - K) (1 - C / 255) (likewise G, B; no ICC colour management); float images (F) are
  refused. Transparency (RGBA, LA, PA, or a transparent palette index or colour key) is
  composited over white, the background such images are shown on, so that the colours under
  transparent pixels, which are arbitrary, never reach the features.
- Animated GIF/WebP and multi-page TIFF: the first frame.
- EXIF orientation: with `exif=True` (image-only sources such as imagefolder and attribute
  tables) the image is turned as the camera meant it. Sources whose annotations are pixel
  coordinates (faces, keypoints, segmentation, TFDS) read the stored pixel grid (`exif=False`):
  their annotations were made on it (300-W with Matlab's imread, COCO and VOC with web tools of
  their time; neither applied the orientation), so turning the image would break them.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from persistent.data.errors import BadImage, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp", ".tif", ".tiff")
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "PPM", "WEBP", "TIFF")
DEFAULT_MAX_PIXELS = 80_000_000
MAX_PIXELS_ENV = "PERSISTENT_MAX_PIXELS"
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited over
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = 0x0112


def max_pixels() -> int:
  """The largest image (width x height) decoded: PERSISTENT_MAX_PIXELS or 80 megapixels."""
  value = os.environ.get(MAX_PIXELS_ENV, "").strip()
  if not value:
    return DEFAULT_MAX_PIXELS
  try:
    limit = int(value)
  except ValueError:
    limit = 0
  if limit <= 0:
    raise ValueError(f"{MAX_PIXELS_ENV}={value!r} must be a positive integer (pixels)")
  return limit


def to_rgb(im: Image.Image) -> np.ndarray:
  """A loaded Pillow image in any supported mode -> uint8 RGB (H, W, 3), by the rules above."""
  if im.mode in _GREY16:
    grey = (np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
  if im.mode == "F":
    raise ValueError("floating-point images (mode F) have no defined 8-bit range")
  if im.mode in _ALPHA or (im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
    background = Image.new("RGBA", im.size, BACKGROUND + (255,))
    return np.asarray(Image.alpha_composite(background, im.convert("RGBA")).convert("RGB"))
  return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def oriented(im: Image.Image, where: str) -> Image.Image:
  """The image turned as its EXIF orientation says; an unreadable EXIF block is logged, not used."""
  try:
    orientation = im.getexif().get(_ORIENTATION, 1)
  except Exception as e:  # noqa: BLE001 -- camera EXIF is often malformed; the pixels are fine
    logging.warning("%s: unreadable EXIF block ignored (%s: %s)", where, type(e).__name__, e)
    return im
  if orientation in (2, 3, 4, 5, 6, 7, 8):
    return ImageOps.exif_transpose(im)
  return im


def _check_size(im: Image.Image, limit: int) -> None:
  w, h = im.size
  if w <= 0 or h <= 0:
    raise ValueError(f"empty image size {w}x{h}")
  if w * h > limit:
    raise ValueError(f"{w}x{h} = {w * h:,} pixels is above the limit of {limit:,} "
                     f"(a possible decompression bomb; set {MAX_PIXELS_ENV} to allow larger images)")


def load(source: str | bytes, convert: Callable[[Image.Image], np.ndarray], *, where: str = "",
         what: str = "image", header_only: bool = False) -> np.ndarray:
  """Opens a file path or encoded bytes, checks format and size, loads and applies `convert`.

  Every failure of the decoder or of `convert` becomes BadImage naming `where` (default: the
  path), except the DataErrors `convert` raises itself; a missing file raises FileNotFoundError.
  Only the first frame is loaded; with `header_only` nothing is decoded (`convert` sees the
  opened image).
  """
  where = where or (source if isinstance(source, str) else "<bytes>")
  limit = max_pixels()
  if limit > (Image.MAX_IMAGE_PIXELS or limit):
    Image.MAX_IMAGE_PIXELS = limit  # Pillow's own bomb guard must not undercut ours
  try:
    fp = source if isinstance(source, str) else io.BytesIO(source)
    with Image.open(fp, formats=FORMATS) as im:
      _check_size(im, limit)
      if not header_only:
        im.load()
      return convert(im)
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} file not found: {where}") from None
  except DataError:
    raise
  except Image.DecompressionBombError as e:
    raise BadImage(f"cannot decode {what} {where}: {e} (refused as a possible decompression bomb; "
                   f"set {MAX_PIXELS_ENV} to allow larger images)") from None
  except Image.UnidentifiedImageError:
    raise BadImage(f"cannot decode {what} {where}: not an image of the formats read "
                   f"({', '.join(FORMATS)})") from None
  except MemoryError:
    raise
  except Exception as e:  # noqa: BLE001 -- decoders of untrusted bytes raise anything
    reason = str(e) if isinstance(e, (OSError, ValueError)) else f"{type(e).__name__}: {e}"
    raise BadImage(f"cannot decode {what} {where}: {reason}") from None


def read_image(path: str, *, exif: bool = True) -> np.ndarray:
  """Decodes a file to uint8 RGB (H, W, 3); `exif` turns it as its EXIF orientation says."""
  return load(path, lambda im: to_rgb(oriented(im, path) if exif else im))


def decode(encoded: bytes, where: str, *, exif: bool = False) -> np.ndarray:
  """Decodes encoded image bytes (e.g. a dataset record's) to uint8 RGB; `where` names them."""
  return load(bytes(encoded), lambda im: to_rgb(oriented(im, where) if exif else im), where=where,
              what="the image of")


def image_size(path: str) -> tuple[int, int]:
  """(width, height) of the stored pixel grid, from the header only (size limit checked)."""
  w, h = load(path, lambda im: np.asarray(im.size), header_only=True).tolist()
  return w, h


def resize(image: np.ndarray, size: tuple[int, int], resample: int = Image.BILINEAR) -> np.ndarray:
  """Resizes uint8 (H, W[, C]) to size=(height, width); Pillow antialiases when shrinking."""
  if image.shape[:2] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample))


def crop_resize(image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int],
                resample: int = Image.BILINEAR) -> np.ndarray:
  """Crops box=(x0, y0, x1, y1) in pixel coordinates (may leave the image: zero fill) to size.

  Coordinates follow the pixel-corner convention: pixel (i, j) covers [j, j+1) x [i, i+1).
  """
  x0, y0, x1, y1 = map(float, box)
  if not (x1 > x0 and y1 > y0):
    raise ValueError(f"empty crop box {box}")
  im = Image.fromarray(image)
  # An affine map from output pixels to input pixels; transform() samples with zero fill outside.
  sx, sy = (x1 - x0) / size[1], (y1 - y0) / size[0]
  shrink = max(sx, sy)
  if shrink > 2:  # prefilter by an integer reduction so that big shrinks do not alias
    f = int(shrink // 2)
    im = im.reduce(f)
    x0, y0, sx, sy = x0 / f, y0 / f, sx / f, sy / f
  out = im.transform((size[1], size[0]), Image.AFFINE, (sx, 0, x0, 0, sy, y0), resample=resample)
  return np.asarray(out)
