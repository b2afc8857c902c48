"""The probing step shared by tasks: backbone from config, streamed features -> ridge fit."""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from persistent import backbones, data, distributed, features, ridge

TargetFn = Callable[[list[data.Example]], np.ndarray]


def backbone_from_config(config: ml_collections.ConfigDict) -> backbones.Backbone:
  b = config.backbone
  extra = {"prototxt": b.prototxt} if b.prototxt else {}  # the generic 'caffe' backbone's definition
  return backbones.create(b.name, b.weights, seed=config.seed, dtype=jnp.dtype(b.dtype), **extra)


def feature_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  cache = config.features.cache_dir
  return dict(batch_size=config.batch_size, normalize=config.features.normalize,
              cache_dir=os.path.expanduser(cache) if cache else None,
              workers=config.data.workers or None)


def fit(config: ml_collections.ConfigDict, backbone: backbones.Backbone, source: data.Source,
        targets: TargetFn) -> ridge.RidgeFit:
  """Streams features and targets of `source` into ridge statistics and solves them."""
  if len(source) < config.ridge.num_folds:
    raise ValueError(f"training source {source.spec!r} has {len(source)} examples; "
                     f"{config.ridge.num_folds}-fold cross-validation needs at least that many")
  mesh = distributed.mesh_from_config(config)
  if not distributed.is_single_device(mesh):
    return _fit_sharded(config, backbone, source, targets, mesh)
  fold_ids = ridge.kfold_ids(len(source), config.ridge.num_folds)
  stats, start = None, 0
  for examples, feats in features.iterate(backbone, config.backbone.layer, source,
                                          **feature_options(config)):
    y = np.asarray(targets(examples), np.float32).reshape(len(examples), -1)
    if stats is None:
      stats = ridge.init(feats.shape[1], y.shape[1], config.ridge.num_folds, config.ridge.dtype)
    stats = ridge.update(stats, feats, y, fold_ids[start:start + len(examples)])
    start += len(examples)
  return ridge.solve(stats, alphas=config.ridge.alphas, per_target=config.ridge.per_target)


def _fit_sharded(config: ml_collections.ConfigDict, backbone: backbones.Backbone, source: data.Source,
                 targets: TargetFn, mesh) -> ridge.RidgeFit:
  """`fit` over config.mesh: each process reads its share of the source, extracts features on
  its devices (batch split over them) and accumulates its rows; every process runs the same
  number of steps, padding with empty batches, then the targets are solved across all devices."""
  count, index = jax.process_count(), jax.process_index()
  if len(source) < count:
    raise ValueError(f"training source {source.spec!r} has {len(source)} examples for {count} processes")
  local, idx = distributed.shard_source(source, index, count)
  fold_ids = ridge.kfold_ids(len(source), config.ridge.num_folds)[idx]
  batch_size = -(-config.batch_size // distributed.local_data_size(mesh)) * distributed.local_data_size(mesh)
  steps = -(-distributed.share_size(len(source), count) // batch_size)
  options = dict(feature_options(config), batch_size=batch_size,
                 sharding=distributed.local_batch_sharding(mesh))
  acc, start, done = None, 0, 0
  for examples, feats in features.iterate(backbone, config.backbone.layer, local, **options):
    y = np.asarray(targets(examples), np.float32).reshape(len(examples), -1)
    if acc is None:
      acc = distributed.Accumulator(mesh, feats.shape[1], y.shape[1], config.ridge.num_folds,
                                    config.ridge.dtype)
    acc.update(feats, y, fold_ids[start:start + len(examples)])
    start += len(examples)
    done += 1
  for _ in range(done, steps):  # shorter shares: empty steps keep the processes in lockstep
    acc.update(np.zeros((0, acc.d), np.float32), np.zeros((0, acc.k), np.float32), np.zeros(0, int))
  return acc.solve(alphas=config.ridge.alphas, per_target=config.ridge.per_target)


def predict(config: ml_collections.ConfigDict, backbone: backbones.Backbone, source: data.Source,
            fit: ridge.RidgeFit, keep: Callable[[list[data.Example]], Any] | None = None):
  """Predictions (N, k) for a source, and keep(examples) for every batch when given."""
  preds, kept = [], []
  for examples, feats in features.iterate(backbone, config.backbone.layer, source,
                                          **feature_options(config)):
    preds.append(np.asarray(ridge.predict(fit, feats)))
    if keep is not None:
      kept.append(keep(examples))
  return np.concatenate(preds), kept
