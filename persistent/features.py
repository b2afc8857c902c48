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
transform); files are written atomically, so a rerun of the same experiment skips extraction
and an interrupted one leaves nothing behind.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from persistent import data as data_lib
from persistent.backbones import Backbone
from persistent.backbones.layers import adaptive_avg_pool
from persistent.data import images as image_lib

CACHE_VERSION = 2
DEFAULT_GRID = 3


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


class _CacheFile:
  """One layer's cache entry: read when complete, else written row block by row block to a
  temporary file that replaces the entry only when every row is in."""

  def __init__(self, path: str | None, rows: int):
    self.path, self.rows, self.tmp, self.out = path, rows, None, None
    self.cached = np.load(path, mmap_mode="r") if path and os.path.exists(path) else None
    if self.cached is not None and self.cached.shape[0] != rows:
      raise ValueError(f"feature cache {path} holds {self.cached.shape[0]} rows for {rows} examples; delete it")

  def write(self, start: int, feats: np.ndarray) -> None:
    if self.path is None:
      return
    if self.out is None:
      self.tmp = f"{self.path}.{os.getpid()}.tmp.npy"
      self.out = np.lib.format.open_memmap(self.tmp, "w+", np.float32, (self.rows, feats.shape[1]))
    self.out[start:start + len(feats)] = feats

  def commit(self) -> None:
    if self.out is not None:
      self.out.flush()
      self.out = None
      os.replace(self.tmp, self.path)

  def abort(self) -> None:
    if self.out is not None:
      self.out = None
      if os.path.exists(self.tmp):
        os.remove(self.tmp)


def iterate_layers(backbone: Backbone, layers: Sequence[str], source: data_lib.Source, *, batch_size: int = 64,
                   cache_dir: str | None = None, normalize: bool = True, reduce: str = "", progress: bool = True,
                   workers: int | None = None, indices: Sequence[int] | None = None,
                   sharding: jax.sharding.Sharding | None = None,
                   ) -> Iterator[tuple[list[data_lib.Example], dict[str, np.ndarray]]]:
  """Yields (examples, {layer: features (B, D_layer) float32}) in source order.

  With `cache_dir`, each layer's features come from its cache entry when present and are written
  to it (atomically, at the end of a full pass) when not; one forward pass computes every layer
  that is not cached. `indices` restricts the pass to some examples (no cache). `sharding` (e.g.
  a batch split over local devices; batch_size must suit it) places each image batch before the
  jitted forward pass, so that extraction runs data-parallel.
  """
  layers = list(dict.fromkeys(layers))
  if cache_dir and indices is None:
    os.makedirs(cache_dir, exist_ok=True)
  files = {l: _CacheFile(os.path.join(cache_dir, cache_key(backbone, l, source, normalize, reduce) + ".npy")
                         if cache_dir and indices is None else None, len(source)) for l in layers}
  missing = tuple(l for l in layers if files[l].cached is None)
  fn = _taps(backbone, missing, tuple(reduction(reduce, l) for l in missing), normalize) if missing else None
  names = ",".join(layers) if len(layers) <= 3 else f"{len(layers)} layers"
  bar = _Progress(len(source) if indices is None else len(indices),
                  f"{backbone.name}/{names}" + ("" if missing else " (cached)"), progress)
  start = 0
  try:
    for examples in data_lib.iterate(source, batch_size, workers=workers, indices=indices):
      b = len(examples)
      feats = {l: np.asarray(files[l].cached[start:start + b]) for l in layers if l not in missing}
      if missing:
        batch = prepare(examples, backbone.input_size)
        if b < batch_size:  # pad so that one compilation serves every batch
          batch = np.concatenate([batch, np.zeros((batch_size - b, *batch.shape[1:]), batch.dtype)])
        out = fn(batch if sharding is None else jax.device_put(batch, sharding))
        for l in missing:
          feats[l] = np.asarray(out[l])[:b]
          files[l].write(start, feats[l])
      start += b
      bar.update(b)
      yield examples, {l: feats[l] for l in layers}
    for l in missing:
      files[l].commit()
  finally:
    bar.close()
    for f in files.values():  # interrupted: drop partial cache files
      f.abort()


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
