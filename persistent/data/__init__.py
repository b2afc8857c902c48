"""Data sources: strings `FORMAT:PATH[,PATH...]` resolved through a registry.

A source is a sized, indexable sequence of examples. Each example is a dict with at least
`image` (uint8 RGB, HxWx3) and `id` (a string unique within the source, e.g. the file path);
formats add their annotations (`landmarks`, `label`, `keypoints`, `attributes`, ...). Examples
are loaded lazily, so a source over 50,000 files costs nothing until it is read.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from persistent.registry import Registry

Example = dict[str, Any]


class Source(Sequence[Example]):
  """A lazily loaded list of examples; `spec` identifies its content for caching."""

  def __init__(self, spec: str, ids: Sequence[str], load: Callable[[int], Example]):
    self.spec = spec
    self.ids = list(ids)
    self._load = load

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, i):  # type: ignore[override]
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if not -len(self) <= i < len(self):
      raise IndexError(f"index {i} out of range for source {self.spec!r} of {len(self)} examples")
    return self._load(i % len(self))

  def map(self, fn: Callable[[Example], Example], tag: str) -> "Source":
    """A source whose examples are fn(example); `tag` names fn for cache keys."""
    return Source(f"{self.spec}|{tag}", self.ids, lambda i: fn(self._load(i)))

  def subset(self, indices: Sequence[int]) -> "Source":
    idx = [int(i) for i in indices]
    return Source(f"{self.spec}|subset:{_digest(idx)}", [self.ids[i] for i in idx],
                  lambda i: self._load(idx[i]))


def _digest(obj: Any) -> str:
  import hashlib
  return hashlib.sha1(repr(obj).encode()).hexdigest()[:16]


SOURCES: Registry[Callable[..., Source]] = Registry("data source format")
register = SOURCES.register


def parse_spec(spec: str) -> tuple[str, list[str]]:
  """'FORMAT:PATH[,PATH...]' -> (format, paths). A bare 'FORMAT' has no paths."""
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"data source must be a non-empty string 'FORMAT:PATH[,PATH...]', got {spec!r}")
  fmt, _, rest = spec.partition(":")
  return fmt, [p for p in rest.split(",") if p] if rest else []


_SLICE = re.compile(r"^(?P<spec>.*)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def open_source(spec: str, **options: Any) -> Source:
  """Opens a data source string, e.g. 'imagefolder:/data/val' or 'synthetic:n=500,seed=1'.

  A trailing Python slice selects examples: 'imagefolder:/data/val[:49000]', '...[49000:]'.
  """
  m = _SLICE.match(spec) if isinstance(spec, str) else None
  if m:
    source = open_source(m["spec"], **options)
    sl = slice(int(m["start"]) if m["start"] else None, int(m["stop"]) if m["stop"] else None)
    picked = range(len(source))[sl]
    if not picked:
      raise ValueError(f"slice [{m['start']}:{m['stop']}] of {m['spec']!r} ({len(source)} examples) is empty")
    return source.subset(picked)
  fmt, paths = parse_spec(spec)
  if fmt not in SOURCES:
    raise ValueError(f"unknown data source format {fmt!r} in {spec!r}; "
                     f"known formats: {', '.join(SOURCES.names())}")
  return SOURCES.get(fmt)(paths, **options)


def parse_options(paths: list[str], defaults: dict[str, Any], spec: str) -> dict[str, Any]:
  """Parses 'key=value' items (as in 'synthetic:n=100,seed=3') against typed defaults."""
  out = dict(defaults)
  for item in paths:
    key, eq, value = item.partition("=")
    if not eq or key not in defaults:
      raise ValueError(f"bad option {item!r} in data source {spec!r}; "
                       f"options: {', '.join(f'{k}=' for k in defaults)}")
    try:
      out[key] = type(defaults[key])(value)
    except ValueError:
      raise ValueError(f"option {key!r} in data source {spec!r} must be "
                       f"{type(defaults[key]).__name__}, got {value!r}") from None
  return out


def iterate(source: Sequence[Example], batch_size: int, *, workers: int | None = None,
            indices: Sequence[int] | None = None) -> Iterator[list[Example]]:
  """Batches of examples, loaded by a thread pool (image decoding releases the GIL).

  Loads one batch ahead of the consumer so that decoding overlaps the accelerator's work.
  """
  idx = list(range(len(source))) if indices is None else list(indices)
  workers = workers or min(32, (os.cpu_count() or 1) + 2)
  chunks = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    def submit(chunk):
      return [pool.submit(source.__getitem__, i) for i in chunk]
    pending = submit(chunks[0]) if chunks else None
    for c in range(len(chunks)):
      current = pending
      pending = submit(chunks[c + 1]) if c + 1 < len(chunks) else None
      yield [f.result() for f in current]


def stack_images(examples: list[Example], key: str = "image") -> np.ndarray:
  """Stacks equally sized uint8 images, naming the example whose shape differs."""
  shape = examples[0][key].shape
  for ex in examples:
    if ex[key].shape != shape:
      raise ValueError(f"{key} of {ex['id']!r} has shape {ex[key].shape}, expected {shape}")
  return np.stack([ex[key] for ex in examples])


# Importing the modules registers their formats.
from persistent.data import (  # noqa: E402,F401
    attributes, faces, imagefolder, keypoints, segmentation, synthetic, synthetic_faces, tfds_source)
