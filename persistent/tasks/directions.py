"""Semantic directions in representation space (the paper's Section 4 and Fig. 6).

For each attribute a (e.g. LFW's Male / Eyeglasses, CelebA's pose, or the synthetic object's colour
and position) ridge regression from the (l2-normalised) features f to the attribute gives weights
W_a; the direction is w = W_a / ||W_a||. A feature splits into f = (w^T f) w + f~, and the altered
feature is f' = f~ + lambda w (eq. 6-7). RGB regressors (the Fig. 4 probe, one per pixel and
channel, fitted on the same training images in the same pass) decode f' back to an image, and a
strip per attribute shows the decoded images along the lambda sweep.

The sweep. `directions.steps` are in units of the training data's spread along the direction:
step s sets lambda = mean_p + s * std_p, where mean_p and std_p are the mean and standard deviation
of the projections w^T f over the training features (computed from the ridge statistics, so no
second pass), i.e. step 0 puts every image at the average position along w and +-3 moves it to
the far ends of the data. The same steps thus mean the same for every attribute and backbone.

Renormalising f'. Features are unit vectors and the RGB regressors were fitted on them; f' has
norm sqrt(||f~||^2 + lambda^2), which stays within a few percent of 1 over the sweep because the
projections w^T f are small against 1. We therefore follow eq. 7 literally and do not renormalise
by default (`directions.renormalize=False`); the decoded image is then exactly linear in lambda.
metrics.json reports the range of ||f'|| so that the choice can be checked; with
`renormalize=True` f' is scaled back to unit norm (the sweep then saturates for large |lambda|).

Measuring the change. A pixel-space "readout" ridge model (training images at readout_size,
attribute values as targets) reads each attribute off the decoded images; per attribute
metrics.json reports the direction's cross-validated r^2, the readout at the ends of the sweep and
their difference, the correlation of readout with lambda, and the change of the decoded image's
mean colour. Moving along the 'red' direction of the synthetic default should raise the decoded
red, the 'x' direction move the object right, and so on.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from persistent import data, features, figures, probe, ridge, tasks
from persistent.data import attributes as attributes_lib
from persistent.tasks import rgb


def decompose(f: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """f (n, d), unit w (d,) -> (projections w^T f (n,), orthogonal parts f~ (n, d))."""
  p = f @ w
  return p, f - p[:, None] * w[None]


def alter(f: np.ndarray, w: np.ndarray, lambdas: np.ndarray, renormalize: bool = False) -> np.ndarray:
  """f' = f~ + lambda w for every feature and lambda: (n, d) -> (n, L, d)."""
  _, rest = decompose(f, w)
  out = rest[:, None, :] + np.asarray(lambdas)[None, :, None] * w[None, None, :]
  if renormalize:
    out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
  return out


def _moments(stats: ridge.RidgeStats) -> tuple[np.ndarray, np.ndarray]:
  """Mean (d,) and covariance (d, d) of all features accumulated in ridge statistics."""
  n = float(np.asarray(stats.count).sum())
  s = np.asarray(stats.sum_x, np.float64).sum(0) / n  # mean of the shifted features
  cov = np.asarray(stats.xx, np.float64).sum(0) / n - np.outer(s, s)
  return s + np.asarray(stats.shift_x, np.float64), cov


def _r2(cv_mse: np.ndarray, variance: np.ndarray) -> np.ndarray:
  return 1.0 - cv_mse.min(0) / np.maximum(variance, 1e-12)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a - a.mean(), b - b.mean()
  den = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / den) if den > 0 else 0.0


def _strip_figure(rows: list[tuple[str, np.ndarray, list[np.ndarray]]], column_titles: list[str]):
  """One row per (label, original, decoded images along the sweep)."""
  import matplotlib.pyplot as plt
  ncols = 1 + len(column_titles)
  fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * 1.1, len(rows) * 1.2), squeeze=False)
  for r, (label, original, strip) in enumerate(rows):
    for c, img in enumerate([original, *strip]):
      ax = axes[r, c]
      ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
      ax.set_xticks([]), ax.set_yticks([])
      if r == 0:
        ax.set_title("input" if c == 0 else column_titles[c - 1], fontsize=6)
    axes[r, 0].set_ylabel(label, fontsize=6)
  fig.tight_layout(pad=0.2)
  return fig


@tasks.register("directions")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  cfg = config.directions
  names = list(cfg.attributes)
  if not names or len(set(names)) != len(names):
    raise ValueError(f"directions.attributes must be distinct attribute names, got {names}")
  steps = np.asarray(cfg.steps, np.float64)
  if steps.ndim != 1 or steps.size < 2 or not np.all(np.diff(steps) > 0):
    raise ValueError(f"directions.steps must be at least two increasing numbers, got {tuple(cfg.steps)}")
  size, rsize, k = cfg.size, cfg.readout_size, len(names)
  backbone = probe.backbone_from_config(config)
  train = data.open_source(config.data.train)
  test = data.open_source(config.data.test)

  # One streamed pass over the training images fits the attribute regressors and the RGB decoder
  # together (targets = [attributes | pixels]); the pixel-space readout statistics and the
  # attribute values (n x k, small) come from the same batches. As probe.fit, but keeping the
  # statistics: they also give the training mean and covariance of the features.
  if len(train) < config.ridge.num_folds:
    raise ValueError(f"training source {train.spec!r} has {len(train)} examples; "
                     f"{config.ridge.num_folds}-fold cross-validation needs at least that many")
  attributes_lib.values([train[0]], names)  # fail fast: no attributes, unknown names
  folds = ridge.kfold_ids(len(train), config.ridge.num_folds)
  stats = readout_stats = None
  values, start = [], 0
  for examples, feats in features.iterate(backbone, config.backbone.layer, train,
                                          **probe.feature_options(config)):
    y = attributes_lib.values(examples, names)
    small = rgb.targets(examples, rsize)
    fold = folds[start:start + len(examples)]
    if stats is None:
      stats = ridge.init(feats.shape[1], k + 3 * size * size, config.ridge.num_folds, config.ridge.dtype)
      readout_stats = ridge.init(small.shape[1], k, config.ridge.num_folds, config.ridge.dtype)
    stats = ridge.update(stats, feats, np.concatenate([y, rgb.targets(examples, size)], 1), fold)
    readout_stats = ridge.update(readout_stats, small, y, fold)
    values.append(y)
    start += len(examples)
  fit = ridge.solve(stats, alphas=config.ridge.alphas, per_target=config.ridge.per_target)
  readout = ridge.solve(readout_stats, alphas=config.ridge.alphas, per_target=True)
  values = np.concatenate(values)
  mean_a, std_a = values.mean(0), values.std(0)
  constant = [n for n, s in zip(names, std_a) if not s > 0]
  if constant:
    raise ValueError(f"attributes {constant} are constant over the training source {config.data.train!r}; "
                     "no direction can be learned for them")
  feat_mean, feat_cov = _moments(stats)

  weights = np.asarray(fit.weights, np.float64)
  bias = np.asarray(fit.bias, np.float64)
  w_attr, b_attr = weights[:, :k], bias[:k]
  w_rgb, b_rgb = weights[:, k:], bias[k:]
  norms = np.linalg.norm(w_attr, axis=0)
  if not np.all(norms > 0):
    raise ValueError(f"the ridge weights of {[n for n, v in zip(names, norms) if not v > 0]} are zero")
  cv_r2 = _r2(np.asarray(fit.cv_mse)[:, :k], std_a ** 2)
  readout_r2 = _r2(np.asarray(readout.cv_mse), std_a ** 2)

  # Test features (the images to alter).
  num = min(cfg.num_examples, len(test))
  test = test.subset(range(num))
  feats, originals = [], []
  for examples, f in features.iterate(backbone, config.backbone.layer, test,
                                          **probe.feature_options(config)):
    feats.append(f)
    originals += [t.reshape(size, size, 3) for t in rgb.targets(examples, size)]
  f = np.concatenate(feats).astype(np.float64)

  shape = (size, size, 3)
  per_attr: dict[str, Any] = {}
  rows = []
  norm_range = [np.inf, -np.inf]
  for a, name in enumerate(names):
    w = w_attr[:, a] / norms[a]
    proj_mean, proj_std = float(feat_mean @ w), float(np.sqrt(max(w @ feat_cov @ w, 0.0)))
    lambdas = proj_mean + steps * proj_std
    altered = alter(f, w, lambdas, cfg.renormalize)  # (n, L, d)
    nrm = np.linalg.norm(altered, axis=-1)
    norm_range = [min(norm_range[0], float(nrm.min())), max(norm_range[1], float(nrm.max()))]
    decoded = np.clip(altered @ w_rgb + b_rgb, 0.0, 1.0)  # (n, L, P)
    as_images = (decoded.reshape(-1, *shape) * 255).round().astype(np.uint8)
    small = rgb.targets([{"image": im, "id": f"decoded:{name}"} for im in as_images], rsize)
    read = np.asarray(ridge.predict(readout, small))[:, a].reshape(num, len(steps))
    mean_rgb = decoded.reshape(num, len(steps), -1, 3).mean(2)  # (n, L, 3)
    per_attr[name] = {
        "direction_cv_r2": float(cv_r2[a]), "alpha": float(np.asarray(fit.alpha)[a]),
        "readout_cv_r2": float(readout_r2[a]),
        "lambda_min": float(lambdas[0]), "lambda_max": float(lambdas[-1]),
        "projection_mean": proj_mean, "projection_std": proj_std,
        "predicted_attribute_change": float(norms[a] * (lambdas[-1] - lambdas[0])),
        "decoded_readout_min": float(read[:, 0].mean()), "decoded_readout_max": float(read[:, -1].mean()),
        "decoded_change": float((read[:, -1] - read[:, 0]).mean()),
        "decoded_change_in_std": float((read[:, -1] - read[:, 0]).mean() / std_a[a]),
        "decoded_readout_lambda_corr": float(np.mean([_corr(steps, r) for r in read])),
        "decoded_mean_rgb_change": [float(v) for v in (mean_rgb[:, -1] - mean_rgb[:, 0]).mean(0)],
    }
    for i in range(min(config.num_figure_examples, num)):
      rows.append((f"{name} #{i}", originals[i], [d.reshape(shape) for d in decoded[i]]))
  # Strips grouped by example, one row per attribute within each group (as Fig. 6 for one face).
  order = sorted(range(len(rows)), key=lambda r: (r % max(1, min(config.num_figure_examples, num)), r))
  fig = _strip_figure([rows[r] for r in order], [f"{s:+g} sd" for s in steps])
  figures.save(fig, os.path.join(workdir, "directions.png"))
  return {
      "attributes": per_attr, "steps": [float(s) for s in steps], "renormalize": bool(cfg.renormalize),
      "altered_feature_norm_range": norm_range, "n_train": len(train), "n_test": num,
      "feature_dim": int(weights.shape[0]), "rgb_size": size,
      "rgb_cv_mse_chosen": float(np.asarray(fit.cv_mse)[:, k:].min(0).mean()),
      "mean_direction_cv_r2": float(np.mean(cv_r2)),
  }
