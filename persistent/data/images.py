"""Image decoding and geometry on the host (Pillow), with errors that name the file."""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp", ".tif", ".tiff")


def read_image(path: str) -> np.ndarray:
  """Decodes a file to uint8 RGB (H, W, 3); unreadable or corrupt files raise ValueError."""
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    raise FileNotFoundError(f"image file not found: {path}") from None
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot decode image {path}: {e}") from None


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
