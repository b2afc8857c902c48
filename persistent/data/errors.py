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
