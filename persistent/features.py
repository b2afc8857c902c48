"""Batched, jitted extraction of one backbone layer, l2-normalised, with an on-disk cache.

`iterate` streams (examples, features) batch by batch so that downstream statistics never need
all features in memory; `extract` collects them into one array. The cache key covers the
backbone, its weights, the layer, the preprocessing and the data (the source's spec, which
encodes its files and any per-example transform), and files are written atomically, so a rerun
of the same experiment skips extraction and an interrupted one leaves nothing behind.
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
from persistent.data import images as image_lib

CACHE_VERSION = 1


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit l2 norm; an all-zero row stays zero (finite)."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


@functools.lru_cache(maxsize=16)  # one compilation per (backbone, layer) for every pass
def _flat_tap(backbone: Backbone, layer: str, normalize: bool):
  tap = backbone.tap(layer)  # jitted with the parameters as arguments: wrapping it in another jit
                             # would bake them in as constants (slow to compile, twice the memory)

  @jax.jit
  def post(f):
    f = f.reshape(f.shape[0], -1).astype(jnp.float32)
    return l2_normalize(f) if normalize else f
  return lambda images: post(tap(images))


@functools.lru_cache(maxsize=64)
def feature_dim(backbone: Backbone, layer: str) -> int:
  """Width of a layer's flattened feature, from shapes alone (nothing is computed)."""
  shape = jax.eval_shape(backbone.tap(layer), jax.ShapeDtypeStruct((1, *backbone.input_size, 3), jnp.uint8))
  return int(np.prod(shape.shape[1:]))


def cache_key(backbone: Backbone, layer: str, source: data_lib.Source, normalize: bool) -> str:
  desc = {"version": CACHE_VERSION, "backbone": backbone.name, "weights": backbone.weights_id,
          "dtype": str(getattr(backbone.module, "dtype", "float32")),
          "layer": layer, "input_size": list(backbone.input_size), "resize": "pil-bilinear",
          "normalize": normalize, "data": source.spec, "n": len(source),
          "ids": hashlib.sha1("\n".join(source.ids).encode()).hexdigest()}
  return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()


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


def iterate(backbone: Backbone, layer: str, source: data_lib.Source, *, batch_size: int = 64,
            cache_dir: str | None = None, normalize: bool = True, progress: bool = True,
            workers: int | None = None, indices: Sequence[int] | None = None,
            sharding: jax.sharding.Sharding | None = None,
            ) -> Iterator[tuple[list[data_lib.Example], np.ndarray]]:
  """Yields (examples, features (B, D) float32) in source order.

  With `cache_dir`, features come from the cache when present and are written to it (atomically,
  at the end of a full pass) when not. `indices` restricts the pass to some examples (no cache).
  `sharding` (e.g. a batch split over local devices; batch_size must suit it) places each image
  batch before the jitted forward pass, so that extraction runs data-parallel.
  """
  path = None
  if cache_dir and indices is None:
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, cache_key(backbone, layer, source, normalize) + ".npy")
  cached = np.load(path, mmap_mode="r") if path and os.path.exists(path) else None
  if cached is not None and cached.shape[0] != len(source):
    raise ValueError(f"feature cache {path} holds {cached.shape[0]} rows for {len(source)} examples; "
                     "delete it")
  fn = None if cached is not None else _flat_tap(backbone, layer, normalize)
  bar = _Progress(len(source) if indices is None else len(indices),
                  f"{backbone.name}/{layer}" + (" (cached)" if cached is not None else ""), progress)
  out = None
  start = 0
  try:
    for examples in data_lib.iterate(source, batch_size, workers=workers, indices=indices):
      b = len(examples)
      if cached is not None:
        feats = np.asarray(cached[start:start + b])
      else:
        batch = prepare(examples, backbone.input_size)
        if b < batch_size:  # pad so that one compilation serves every batch
          batch = np.concatenate([batch, np.zeros((batch_size - b, *batch.shape[1:]), batch.dtype)])
        feats = np.asarray(fn(batch if sharding is None else jax.device_put(batch, sharding)))[:b]
        if path is not None:
          if out is None:
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            out = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(source), feats.shape[1]))
          out[start:start + b] = feats
      start += b
      bar.update(b)
      yield examples, feats
    if out is not None:
      out.flush()
      del out
      os.replace(tmp, path)
      out = None
  finally:
    bar.close()
    if out is not None:  # interrupted: drop the partial cache file
      del out
      if os.path.exists(tmp):
        os.remove(tmp)


def extract(backbone: Backbone, layer: str, source: data_lib.Source, **kwargs) -> np.ndarray:
  """All features (N, D) of a source; see `iterate` for the options."""
  feats = [f for _, f in iterate(backbone, layer, source, **kwargs)]
  if not feats:
    raise ValueError(f"data source {source.spec!r} is empty")
  return np.concatenate(feats)
