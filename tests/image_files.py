"""Image files made by hand for the data tests: a PNG writer independent of Pillow's (any bit
depth and colour type, extra chunks, a header that claims any size) and small encoders."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

GREY, RGB, PALETTE, GREY_ALPHA, RGBA = 0, 2, 3, 4, 6  # PNG colour types


def chunk(kind: bytes, payload: bytes) -> bytes:
  return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(pixels: np.ndarray, colour_type: int, *, bit_depth: int = 8, extra: tuple[bytes, ...] = (),
        size: tuple[int, int] | None = None) -> bytes:
  """A PNG of `pixels` (H, W[, C]; uint8 or uint16 for 16-bit) with filter 0 on every row.

  `extra` chunks go before the image data (PLTE, tRNS, eXIf ...); `size` = (width, height)
  overrides the header's size (the data then no longer matches it).
  """
  h, w = pixels.shape[:2]
  width, height = size or (w, h)
  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
  samples = pixels.astype(">u2" if bit_depth == 16 else np.uint8).reshape(h, -1)
  raw = b"".join(b"\x00" + row.tobytes() for row in samples)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(extra)
          + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
  buf = io.BytesIO()
  image.save(buf, fmt, **options)
  return buf.getvalue()


def exif_orientation(orientation: int) -> bytes:
  """An EXIF block holding only the orientation tag."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  return exif.tobytes()


def tiny_png(value: int = 0) -> bytes:
  """A valid 2x3 RGB PNG, for folders of many files."""
  return png(np.full((2, 3, 3), value, np.uint8), RGB)
