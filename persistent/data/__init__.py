"""Data sources: strings `FORMAT:PATH[,PATH...]` resolved through a registry.

A source is a sized, indexable sequence of examples. Each example is a dict with at least
`image` (uint8 RGB, HxWx3) and `id` (a string unique within the source, e.g. the file path);
formats add their annotations (`landmarks`, `label`, `keypoints`, `attributes`, ...). Examples
are loaded lazily, so a source over 50,000 files costs nothing until it is read.

Bad input raises the data layer's own errors (`DataError`, a ValueError, or FileNotFoundError),
naming the file and the problem; an example that fails to load also names its index in the
source. `open_source(spec, on_bad="skip")` instead drops bad examples when the source is opened:
bad annotations (where the format checks them at opening) and every example that fails to load
(its image is decoded once, in a thread pool), listing them in `source.skipped` and the log, so
that nothing is dropped unnoticed or part-way through a run.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from persistent.data.errors import BadAnnotation, BadImage, DataError  # noqa: F401 (re-exported)
from persistent.registry import Registry

Example = dict[str, Any]
ON_BAD = ("raise", "skip")
_SHOW_SKIPPED = 20  # how many skipped examples the log lists


class Source(Sequence[Example]):
  """A lazily loaded list of examples; `spec` identifies its content for caching.

  `skipped` lists the bad examples left out when the source was opened (messages naming each
  file, empty unless on_bad='skip'); `on_bad` is 'skip' when the source's own options asked for
  that, so that `open_source` also drops the examples that fail to load.
  """

  def __init__(self, spec: str, ids: Sequence[str], load: Callable[[int], Example], *,
               skipped: Sequence[str] = (), on_bad: str = "raise"):
    self.spec = spec
    self.ids = list(ids)
    self._load = load
    self.skipped = list(skipped)
    self.on_bad = on_bad

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, i):  # type: ignore[override]
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if not -len(self) <= i < len(self):
      raise IndexError(f"index {i} out of range for source {self.spec!r} of {len(self)} examples")
    i %= len(self)
    try:
      return self._load(i)
    except (DataError, FileNotFoundError) as e:
      if getattr(e, "example_index", None) is not None:  # a wrapped source already said where
        raise
      raise self._where(i, e) from None

  def _where(self, i: int, e: Exception) -> Exception:
    """e, its message prefixed with the example's index and id (same type)."""
    ident = "" if self.ids[i] in str(e) else f" ({self.ids[i]})"
    out = type(e)(f"example {i}{ident} of {self.spec.split('@')[0]}: {e}")
    out.example_index = i  # type: ignore[attr-defined]
    return out

  def map(self, fn: Callable[[Example], Example], tag: str) -> "Source":
    """A source whose examples are fn(example); `tag` names fn for cache keys."""
    return Source(f"{self.spec}|{tag}", self.ids, lambda i: fn(self._load(i)), skipped=self.skipped,
                  on_bad=self.on_bad)

  def subset(self, indices: Sequence[int]) -> "Source":
    idx = [int(i) for i in indices]
    return Source(f"{self.spec}|subset:{digest(idx)}", [self.ids[i] for i in idx],
                  lambda i: self._load(idx[i]), skipped=self.skipped, on_bad=self.on_bad)


def digest(obj: Any) -> str:
  """A short stable hash of repr(obj), for cache keys."""
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


def open_source(spec: str, *, on_bad: str = "raise", workers: int | None = None,
                **options: Any) -> Source:
  """Opens a data source string, e.g. 'imagefolder:/data/val' or 'synthetic:n=500,seed=1'.

  A trailing Python slice selects examples: 'imagefolder:/data/val[:49000]', '...[49000:]'.
  on_bad='raise' (default): a bad example raises when it is read, naming its file and index.
  on_bad='skip' (or a source option on_bad=skip): bad annotations are left out by the format and
  every remaining example is loaded once now (`workers` threads; after slicing, so only the
  selected examples), those that fail are left out too; `source.skipped` lists them all.
  """
  if on_bad not in ON_BAD:
    raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
  source = _open(spec, on_bad, options)
  if "skip" in (on_bad, source.on_bad):
    source = drop_bad(source, workers=workers)
  return source


def _open(spec: str, on_bad: str, options: dict[str, Any]) -> Source:
  m = _SLICE.match(spec) if isinstance(spec, str) else None
  if m:
    source = _open(m["spec"], on_bad, options)
    sl = slice(int(m["start"]) if m["start"] else None, int(m["stop"]) if m["stop"] else None)
    picked = range(len(source))[sl]
    if not picked:
      raise ValueError(f"slice [{m['start']}:{m['stop']}] of {m['spec']!r} ({len(source)} examples) is empty")
    return source.subset(picked)
  fmt, paths = parse_spec(spec)
  if fmt not in SOURCES:
    raise ValueError(f"unknown data source format {fmt!r} in {spec!r}; "
                     f"known formats: {', '.join(SOURCES.names())}")
  if on_bad == "skip":  # formats that check annotations at opening skip the bad ones
    options = {**options, "on_bad": on_bad}
  return SOURCES.get(fmt)(paths, **options)


def drop_bad(source: Source, *, workers: int | None = None) -> Source:
  """The examples of `source` that load, after loading each once in a thread pool.

  Those that raise DataError or FileNotFoundError are left out, logged and listed in
  `skipped` (with their index in `source`); the result's spec records which were left out.
  """
  def problem(i: int) -> str | None:
    try:
      source._load(i)
      return None
    except (DataError, FileNotFoundError) as e:
      return str(source._where(i, e))

  with concurrent.futures.ThreadPoolExecutor(workers or default_workers()) as pool:
    problems = list(pool.map(problem, range(len(source))))
  bad = [p for p in problems if p is not None]
  if not bad:
    return source
  keep = [i for i, p in enumerate(problems) if p is None]
  logging.warning("%s: skipped %d of %d examples that fail to load: %s", source.spec.split("@")[0],
                  len(bad), len(source), "; ".join(bad[:_SHOW_SKIPPED]))
  if not keep:
    raise DataError(f"{source.spec.split('@')[0]}: no usable examples, all {len(source)} fail to load; "
                    f"the first: {bad[0]}")
  out = source.subset(keep)
  out.skipped = source.skipped + bad
  return out


def default_workers() -> int:
  """Threads for loading: a few more than the CPUs (image decoding releases the GIL)."""
  return min(32, (os.cpu_count() or 1) + 2)


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
  workers = workers or default_workers()
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
