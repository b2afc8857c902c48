"""The data layer's own errors: bad input, with a message that names the file and the problem.

Every reader turns what it cannot use (a corrupt image, a malformed annotation, a missing field)
into one of these, never into a raw KeyError, IndexError, UnicodeDecodeError or parser error.
They subclass ValueError, so `except ValueError` keeps catching them. Missing files raise
FileNotFoundError, also with the path in the message.
"""
from __future__ import annotations


class DataError(ValueError):
  """Input data that cannot be used."""


class BadImage(DataError):
  """An image file (or encoded image) that cannot be decoded or is refused (too large, float)."""


class BadAnnotation(DataError):
  """An annotation file, table row or dataset record that cannot be used."""


def read_text(path: str, what: str) -> str:
  """A UTF-8 text file (a leading byte-order mark is dropped); `what` names it in errors.

  A missing file raises FileNotFoundError, an unreadable or non-UTF-8 one BadAnnotation.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} not found: {path}") from None
  except OSError as e:
    raise BadAnnotation(f"cannot read {what} {path}: {e.strerror or e}") from None
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise BadAnnotation(f"{path}: {what} is not UTF-8 text (byte {e.start} is "
                        f"{raw[e.start:e.start + 1]!r})") from None
