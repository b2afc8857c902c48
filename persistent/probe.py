"""The probing step shared by tasks: backbone from config, streamed features -> ridge fit."""
from __future__ import annotations

import os
from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

from persistent import backbones, data, features, ridge

TargetFn = Callable[[list[data.Example]], np.ndarray]


def backbone_from_config(config: ml_collections.ConfigDict) -> backbones.Backbone:
  b = config.backbone
  return backbones.create(b.name, b.weights, seed=config.seed, dtype=jnp.dtype(b.dtype))


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
