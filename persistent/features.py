"""Batched, jitted extraction of backbone layers, reduced, l2-normalised, with an on-disk cache.

`iterate_layers` streams (examples, {layer: features}) batch by batch: ONE forward pass per batch
taps every layer asked for (and only those not yet cached), so that downstream statistics never
need all features in memory and a sweep over depth costs one decode and one forward pass.
Spatial maps (N, H, W, C) are reduced by a rule (`reduce`): 'flatten' (the whole map),
'grid:G' (averaged to G x G cells with adaptive-pooling bins, layout kept, flattened as
(row, column, channel)), 'pool' (global average); the default '' is grid:3 for maps and
nothing for vectors. A rule string may name rules per layer: 'grid:3,head_map=flatten'.

The cache key covers the backbone, its weights, the layer, its reduction, the normalisation,
the preprocessing and the data (the source's spec, which encodes its files and any per-example
transform). Entries are written in atomic chunks under a per-entry lock: a rerun of the same
experiment skips extraction, a rerun after a kill resumes after the last complete chunk, and two
processes extracting the same features share one entry (`_CacheEntry`).
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from persistent import data as data_lib
from persistent import locking
from persistent.backbones import Backbone
from persistent.backbones.layers import adaptive_avg_pool
from persistent.data import images as image_lib

CACHE_VERSION = 2
DEFAULT_GRID = 3
CHUNK_BYTES = 64 << 20  # rows of a pass's cache entries written (and kept after a kill) at a time
MIN_LAYER_CHUNK_BYTES = 4 << 20  # a layer's chunks when a pass writes many layers


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit l2 norm; an all-zero row stays zero (finite)."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def reduction(rule: str, layer: str) -> str:
  """The rule for one layer from a rule string ('grid:3', 'pool,head_map=flatten', '')."""
  default, per_layer = "", {}
  for part in (p.strip() for p in (rule or "").split(",") if p.strip()):
    name, eq, value = part.partition("=")
    if eq:
      per_layer[name.strip()] = value.strip()
    else:
      default = part
  chosen = per_layer.get(layer, default)
  if chosen not in ("", "flatten", "pool") and not _grid_size(chosen):
    raise ValueError(f"features.reduce: unknown rule {chosen!r} for layer {layer!r}; rules: flatten, pool, "
                     "grid:G (G >= 1), '' (grid:3 for maps, nothing for vectors), optionally as LAYER=RULE")
  return chosen


def _grid_size(rule: str) -> int:
  kind, _, g = rule.partition(":")
  return int(g) if kind == "grid" and g.isdigit() and int(g) >= 1 else 0


def reduce_map(x: jax.Array, rule: str) -> jax.Array:
  """One layer's activations (N, ...) -> (N, D) by its rule (maps are NHWC)."""
  if x.ndim == 4:
    if rule == "" or _grid_size(rule):
      x = adaptive_avg_pool(x, _grid_size(rule) or DEFAULT_GRID)
    elif rule == "pool":
      x = jnp.mean(x, axis=(1, 2))
  return x.reshape(x.shape[0], -1)


@functools.lru_cache(maxsize=32)  # one compilation per (backbone, layers, rules) for every pass
def _taps(backbone: Backbone, layers: tuple[str, ...], rules: tuple[str, ...], normalize: bool):
  taps = backbone.taps(layers)  # jitted with the parameters as arguments (not baked in as constants)

  @jax.jit
  def post(out):
    flat = {l: reduce_map(out[l], r).astype(jnp.float32) for l, r in zip(layers, rules)}
    return {l: l2_normalize(f) if normalize else f for l, f in flat.items()}
  return lambda images: post(taps(images))


@functools.lru_cache(maxsize=256)
def feature_dim(backbone: Backbone, layer: str, reduce: str = "") -> int:
  """Width of a layer's reduced feature, from shapes alone (nothing is computed)."""
  rule = reduction(reduce, layer)
  shape = jax.eval_shape(lambda x: reduce_map(backbone.taps([layer])(x)[layer], rule),
                         jax.ShapeDtypeStruct((1, *backbone.input_size, 3), jnp.uint8))
  return int(np.prod(shape.shape[1:]))


def cache_key(backbone: Backbone, layer: str, source: data_lib.Source, normalize: bool, reduce: str = "") -> str:
  desc = {"version": CACHE_VERSION, "backbone": backbone.name, "weights": backbone.weights_id,
          "dtype": str(getattr(backbone.module, "dtype", "float32")), "preprocessing": backbone.preprocessing,
          "layer": layer, "reduce": reduction(reduce, layer) or "auto", "input_size": list(backbone.input_size),
          "resize": "pil-bilinear", "normalize": normalize, "data": source.spec, "n": len(source),
          "ids": hashlib.sha1("\n".join(source.ids).encode()).hexdigest()}
  return hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def prepare(examples: list[data_lib.Example], size: tuple[int, int]) -> np.ndarray:
  """uint8 batch (B, H, W, 3) at the backbone's input size."""
  return np.stack([image_lib.resize(ex["image"], size) for ex in examples])


class _Progress:
  """Logs images/s every few seconds on long extractions (and uses tqdm on a terminal)."""

  def __init__(self, total: int, desc: str, enabled: bool):
    self.total, self.desc, self.done, self.t0, self.last = total, desc, 0, time.time(), time.time()
    self.bar = None
    if enabled and os.isatty(2):
      import tqdm
      self.bar = tqdm.tqdm(total=total, desc=desc, unit="img", smoothing=0.1)
    self.enabled = enabled

  def update(self, n: int) -> None:
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    elif self.enabled and (time.time() - self.last > 10 or self.done == self.total):
      self.last = time.time()
      rate = self.done / max(self.last - self.t0, 1e-9)
      logging.info("%s: %d/%d images, %.1f images/s", self.desc, self.done, self.total, rate)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _CacheEntry:
  """One layer's cache entry `KEY.npy`, read when complete. Otherwise written in chunks of rows,
  each an atomic, write-once file `KEY.partial/rows_START-END.npy`, while holding the entry's lock
  (`KEY.lock`; another process extracting the same entry waits for it, then reads the entry). A
  rerun after a kill resumes after the last complete chunk (logged); the chunks become `KEY.npy`
  (atomically) when every row is in. Temporary files of a dead writer are removed under the lock.
  """

  _held: set[str] = set()  # entries this process is writing (a second pass over one computes uncached)

  def __init__(self, path: str | None, rows: int, layer: str, chunk_bytes: int = CHUNK_BYTES):
    self.path, self.rows, self.layer, self.chunk_bytes = path, rows, layer, chunk_bytes
    self.cached, self.lock, self.chunks = None, None, []  # chunks: (start, end, file) read back
    self.resume = self.flushed = self.next = 0  # rows on disk at open / written / handed to write
    self.buffer: list[np.ndarray] = []
    if path is None:
      return
    if not self._load():
      if path in self._held:
        self.path = None
        return
      self.lock = locking.FileLock(path[:-len(".npy")] + ".lock")
      if not self.lock.acquire(blocking=False):
        logging.info("feature cache %s (layer %s): waiting for process %s, which is writing it", path, layer,
                     self.lock.owner() or "?")
        self.lock.acquire()
      try:
        if self._load():  # the other process finished it
          self.lock.release()
          self.lock = None
          return
        self._held.add(path)
        self._clean()
        self._find_chunks()
      except BaseException:
        self._held.discard(path)
        if self.lock is not None:
          self.lock.release()
          self.lock = None
        raise

  @property
  def parts(self) -> str:
    return self.path[:-len(".npy")] + ".partial"

  def _load(self) -> bool:
    if not os.path.exists(self.path):
      return False
    self.cached = np.load(self.path, mmap_mode="r")
    if self.cached.shape[0] != self.rows:
      raise ValueError(f"feature cache {self.path} holds {self.cached.shape[0]} rows for {self.rows} examples; "
                       "delete it")
    return True

  def _clean(self) -> None:
    """Removes this entry's temporary files whose writers are dead (under the entry's lock no live
    writer can be at work; the pid check also spares writers that take no lock, older versions)."""
    stale = [f for f in glob.glob(glob.escape(self.path) + ".*.tmp.npy")
             + glob.glob(os.path.join(glob.escape(self.parts), "*.tmp.npy")) if not _alive(f)]
    for f in stale:
      os.remove(f)
    if stale:
      logging.info("feature cache %s: removed %d temporary files of an interrupted run", self.path, len(stale))

  def _find_chunks(self) -> None:
    """The complete chunks from row 0 on, in order; anything after a gap is dropped."""
    names = sorted(os.listdir(self.parts)) if os.path.isdir(self.parts) else []
    spans = {}
    for name in names:
      m = re.fullmatch(r"rows_(\d+)-(\d+)\.npy", name)
      if m:
        spans[int(m.group(1))] = (int(m.group(2)), os.path.join(self.parts, name))
    while self.resume in spans:
      end, file = spans.pop(self.resume)
      block = np.load(file, mmap_mode="r")
      if block.ndim != 2 or block.shape[0] != end - self.resume or end > self.rows:
        raise ValueError(f"feature cache chunk {file} does not hold rows {self.resume}..{end}; delete {self.parts}")
      self.chunks.append((self.resume, end, block))
      self.resume = end
    for _, file in spans.values():  # beyond a gap (never written so by this module): recomputed
      os.remove(file)
    self.flushed = self.next = self.resume
    if self.resume:
      logging.info("feature cache %s (layer %s): resuming at row %d of %d (%d complete chunks in %s)",
                   self.path, self.layer, self.resume, self.rows, len(self.chunks), self.parts)

  def read(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) from the complete entry or, below `resume`, from its chunks."""
    if self.cached is not None:
      return np.asarray(self.cached[start:stop])
    return np.concatenate([np.asarray(b[max(start, s) - s:min(stop, e) - s])
                           for s, e, b in self.chunks if s < stop and e > start])

  def fill(self, start: int, computed: np.ndarray) -> np.ndarray:
    """Rows [start, start + len(computed)): those on disk from disk, the rest `computed` (and written)."""
    cut = min(max(self.resume - start, 0), len(computed))
    if self.path is None or self.cached is not None:
      return computed
    if cut < len(computed):
      self._write(start + cut, computed[cut:])
    return np.concatenate([self.read(start, start + cut), computed[cut:]]) if cut else computed

  def _write(self, start: int, rows: np.ndarray) -> None:
    assert start == self.next, (start, self.next)
    self.buffer.append(rows)
    self.next += len(rows)
    per_chunk = max(1, self.chunk_bytes // (4 * max(rows.shape[1], 1)))
    if self.next - self.flushed >= per_chunk or self.next == self.rows:
      self._flush()

  def _flush(self) -> None:
    if not self.buffer:
      return
    block = np.concatenate(self.buffer).astype(np.float32, copy=False)
    os.makedirs(self.parts, exist_ok=True)
    name = os.path.join(self.parts, f"rows_{self.flushed:09d}-{self.next:09d}.npy")
    _save_atomic(name, lambda f: np.save(f, block))
    self.chunks.append((self.flushed, self.next, np.load(name, mmap_mode="r")))
    self.buffer, self.flushed = [], self.next

  def commit(self) -> None:
    """Every row written: the chunks become the entry."""
    if self.lock is None:
      return
    self._flush()
    if self.flushed == self.rows and self.chunks:
      width = self.chunks[0][2].shape[1]
      def assemble(f):
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                 "fortran_order": False, "shape": (self.rows, width)})
        for _, _, block in self.chunks:
          f.write(np.ascontiguousarray(block).tobytes())
      _save_atomic(self.path, assemble)
      self.chunks = []
      shutil.rmtree(self.parts, ignore_errors=True)
    self.close()

  def close(self) -> None:
    """Keeps the complete chunks (and rows computed since, as a last chunk) for a rerun; lets go."""
    if self.lock is None:
      return
    try:
      self._flush()
    except OSError as e:  # e.g. the disk is full: the rows since the last chunk are lost, nothing else
      logging.warning("feature cache %s: could not keep the last rows: %s", self.path, e)
    finally:
      with contextlib.suppress(OSError):
        os.rmdir(self.parts)  # only if empty
      self._held.discard(self.path)
      self.lock.release()
      self.lock = None


def _alive(tmp: str) -> bool:
  """Whether the process that names temporary file `tmp` (PATH.PID.tmp.npy) runs on this host."""
  m = re.search(r"\.(\d+)\.tmp\.npy$", tmp)
  if not m:
    return False
  pid = int(m.group(1))
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)  # no signal sent: only whether the process exists
  except PermissionError:  # it exists, another user's
    return True
  except (ProcessLookupError, OverflowError):
    return False
  return True


def _save_atomic(path: str, write: Callable[[Any], None]) -> None:
  """write(file) to a temporary file, synced, then renamed to `path`: a reader (or a rerun after a
  kill) sees the whole file or none. A failure (a full disk) removes the temporary file and names
  `path`."""
  tmp = f"{path}.{os.getpid()}.tmp.npy"
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise OSError(e.errno, f"cannot write the feature cache ({e.strerror or e})", path) from e


def iterate_layers(backbone: Backbone, layers: Sequence[str], source: data_lib.Source, *, batch_size: int = 64,
                   cache_dir: str | None = None, normalize: bool = True, reduce: str = "", progress: bool = True,
                   workers: int | None = None, indices: Sequence[int] | None = None,
                   sharding: jax.sharding.Sharding | None = None, chunk_bytes: int = CHUNK_BYTES,
                   ) -> Iterator[tuple[list[data_lib.Example], dict[str, np.ndarray]]]:
  """Yields (examples, {layer: features (B, D_layer) float32}) in source order.

  With `cache_dir`, each layer's features come from its cache entry when present and are written
  to it when not, in atomic chunks (about `chunk_bytes` for all layers together, at least 4 MB a
  layer), so that a rerun after a kill resumes after the last complete chunk (see `_CacheEntry`);
  one forward pass computes every layer that is not on disk. `indices` restricts the pass to some
  examples (no cache). `sharding` (e.g. a batch split over local devices; batch_size must suit it)
  places each image batch before the jitted forward pass, so that extraction runs data-parallel.
  """
  layers = list(dict.fromkeys(layers))
  use_cache = bool(cache_dir) and indices is None
  if use_cache:
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
      raise OSError(e.errno, f"cannot create the feature cache directory ({e.strerror}; features.cache_dir= "
                             "disables the cache)", cache_dir) from e
  files: dict[str, _CacheEntry] = {}
  try:
    keys = {l: cache_key(backbone, l, source, normalize, reduce) for l in layers}
    for l in sorted(layers, key=keys.get):  # lock order
      path = os.path.join(cache_dir, keys[l] + ".npy") if use_cache else None
      files[l] = _CacheEntry(path, len(source), l, chunk_bytes)
    missing = tuple(l for l in layers if files[l].cached is None)
    for l in missing:  # rows wait in memory until their chunk is full: about chunk_bytes in all
      files[l].chunk_bytes = max(chunk_bytes // len(missing), min(chunk_bytes, MIN_LAYER_CHUNK_BYTES))
    fn = _taps(backbone, missing, tuple(reduction(reduce, l) for l in missing), normalize) if missing else None
    names = ",".join(layers) if len(layers) <= 3 else f"{len(layers)} layers"
    bar = _Progress(len(source) if indices is None else len(indices),
                    f"{backbone.name}/{names}" + ("" if missing else " (cached)"), progress)
  except BaseException:
    for f in files.values():
      f.close()
    raise
  start = 0
  try:
    for examples in data_lib.iterate(source, batch_size, workers=workers, indices=indices):
      b = len(examples)
      feats = {l: files[l].read(start, start + b) for l in layers if l not in missing}
      if any(files[l].resume < start + b for l in missing):
        batch = prepare(examples, backbone.input_size)
        if b < batch_size:  # pad so that one compilation serves every batch
          batch = np.concatenate([batch, np.zeros((batch_size - b, *batch.shape[1:]), batch.dtype)])
        out = fn(batch if sharding is None else jax.device_put(batch, sharding))
        for l in missing:
          feats[l] = files[l].fill(start, np.asarray(out[l])[:b])
      else:  # resumed: these rows are on disk for every layer
        feats.update({l: files[l].read(start, start + b) for l in missing})
      start += b
      bar.update(b)
      yield examples, {l: feats[l] for l in layers}
    for l in missing:
      files[l].commit()
  finally:
    bar.close()
    for f in files.values():  # interrupted: complete chunks stay for a rerun
      f.close()


def iterate(backbone: Backbone, layer: str, source: data_lib.Source, **kwargs
            ) -> Iterator[tuple[list[data_lib.Example], np.ndarray]]:
  """`iterate_layers` for one layer: yields (examples, features (B, D))."""
  for examples, feats in iterate_layers(backbone, [layer], source, **kwargs):
    yield examples, feats[layer]


def extract(backbone: Backbone, layer: str, source: data_lib.Source, **kwargs) -> np.ndarray:
  """All features (N, D) of a source; see `iterate_layers` for the options."""
  feats = [f for _, f in iterate(backbone, layer, source, **kwargs)]
  if not feats:
    raise ValueError(f"data source {source.spec!r} is empty")
  return np.concatenate(feats)
