"""Semantic directions in representation space (the paper's Section 4 and Fig. 6).

For each attribute a (LFW's or MTFL's Male / Eyeglasses / pose, CelebA's pose proxies, or the
synthetic object's colour and size) ridge regression from the (l2-normalised) features f to the
attribute gives weights W_a; the direction is w = W_a / ||W_a||. A feature splits into
f = (w^T f) w + f~, and the altered feature is f' = f~ + lambda w (eq. 6-7). RGB regressors (the
Fig. 4 probe, fitted on the same images in the same pass) decode f' back to an image.

The sweep: `directions.steps` are in units of the training data's spread along w: step s sets
lambda = mean_p + s * std_p, with the mean and standard deviation of the projections w^T f of the
training features (from the ridge statistics, no second pass), so the same steps mean the same for
every attribute and backbone. f' is not renormalised by default (eq. 7 literally; the decoded
image is then linear in lambda); metrics.json reports the range of ||f'||.

Data: data.train and data.test, or with an empty data.test a seeded `holdout` fraction of
data.train held out (persistent.data.holdout, seeded by config.seed).

Measuring it: the attribute probe's held-out readout on the test images (`test_auc` for a 0/1
attribute, `test_corr` for others such as a 1..5 pose), and a pixel-space readout (ridge from
images at readout_size to the attributes, fitted in the same pass) applied to the decoded images:
its correlation with lambda (`decoded_readout_lambda_corr`) should be positive.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from persistent import data, figures, metrics, probe, ridge, tasks
from persistent.data import attributes as attributes_lib
from persistent.figures import directions as direction_figures
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


def _check(cfg: ml_collections.ConfigDict) -> tuple[list[str], np.ndarray]:
  names = list(cfg.attributes)
  if not names or len(set(names)) != len(names):
    raise ValueError(f"directions.attributes must be distinct attribute names, got {names}")
  steps = np.asarray(cfg.steps, np.float64)
  if steps.ndim != 1 or steps.size < 2 or not np.all(np.diff(steps) > 0):
    raise ValueError(f"directions.steps must be at least two increasing numbers, got {tuple(cfg.steps)}")
  return names, steps


def open_split(pipe: probe.Pipeline) -> tuple[data.Source, data.Source]:
  """Train and test sources; an empty data.test holds out a seeded `holdout` fraction of train."""
  return pipe.train_test(pipe.config.directions.holdout)


@tasks.register("directions")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  cfg = config.directions
  names, steps = _check(cfg)
  size, rsize, k = cfg.size, cfg.readout_size, len(names)
  pipe = probe.Pipeline(config)
  attrs = lambda exs: attributes_lib.values(exs, names)
  main = probe.Head("directions", k + 3 * size * size,
                    lambda exs: np.concatenate([attrs(exs), rgb.targets(exs, size)], 1))
  readout = probe.Head("readout", k, attrs, inputs=lambda exs, _: rgb.targets(exs, rsize),
                       input_dim=3 * rsize * rsize)
  layout = {"attributes": names, "size": size, "readout_size": rsize}
  if not config.data.test:
    layout.update(holdout=cfg.holdout, seed=config.seed)
  train, test = open_split(pipe)
  if config.restore:
    fits, state = pipe.restore(layout)
  else:
    attrs([train[0]])  # fail fast: no attributes, unknown names
    fitted = pipe.fit(train, [main, readout])
    fits = fitted.fits
    mean_a, var_a = fitted.target_moments("readout")
    weights = np.asarray(fits["directions"].weights, np.float64)[:, :k]
    norms = np.linalg.norm(weights, axis=0)
    constant = [n for n, v in zip(names, var_a) if not v > 0]
    if constant:
      raise ValueError(f"attributes {constant} are constant over the training source {config.data.train!r}; "
                       "no direction can be learned for them")
    if not np.all(norms > 0):
      raise ValueError(f"the ridge weights of {[n for n, v in zip(names, norms) if not v > 0]} are zero")
    proj_mean, proj_cov = fitted.projection_moments("directions", weights / norms)
    state = {"n_train": len(train), "attribute_std": np.sqrt(var_a).tolist(),
             "projection_mean": proj_mean.tolist(), "projection_std": np.sqrt(np.diag(proj_cov)).tolist()}
    pipe.save(workdir, fits, layout, state)
  fit = fits["directions"]
  weights, bias = np.asarray(fit.weights, np.float64), np.asarray(fit.bias, np.float64)
  w_attr, w_rgb, b_rgb = weights[:, :k], weights[:, k:], bias[k:]
  norms = np.linalg.norm(w_attr, axis=0)
  std_a = np.asarray(state["attribute_std"])

  preds, recs = pipe.predict(test, [main], fits, record=lambda b: [
      (f, v, img) for f, v, img in zip(b.features, attrs(b.examples), rgb.targets(b.examples, size))])
  truth = np.stack([r[1] for r in recs])
  num = min(cfg.num_examples, len(test))
  f = np.stack([r[0] for r in recs[:num]]).astype(np.float64)
  shape = (size, size, 3)
  per_attr: dict[str, Any] = {}
  rows, norm_range = [], [np.inf, -np.inf]
  cv = np.asarray(fit.cv_mse, np.float64)[:, :k].min(0)
  readout_cv = np.asarray(fits["readout"].cv_mse, np.float64).min(0)
  for a, name in enumerate(names):
    w = w_attr[:, a] / norms[a]
    lambdas = state["projection_mean"][a] + steps * state["projection_std"][a]
    altered = alter(f, w, lambdas, cfg.renormalize)  # (n, L, d)
    nrm = np.linalg.norm(altered, axis=-1)
    norm_range = [min(norm_range[0], float(nrm.min())), max(norm_range[1], float(nrm.max()))]
    decoded = np.clip(altered @ w_rgb + b_rgb, 0.0, 1.0)  # (n, L, P)
    as_images = [{"image": im, "id": "decoded"} for im in (decoded.reshape(-1, *shape) * 255).round().astype(np.uint8)]
    read = np.asarray(ridge.predict(fits["readout"], rgb.targets(as_images, rsize)))[:, a].reshape(num, -1)
    scores = preds["directions"][:, a]
    binary = set(np.unique(truth[:, a]).tolist()) <= {0.0, 1.0}
    per_attr[name] = {
        "direction_cv_r2": float(1 - cv[a] / max(std_a[a] ** 2, 1e-12)), "alpha": float(np.asarray(fit.alpha)[a]),
        "readout_cv_r2": float(1 - readout_cv[a] / max(std_a[a] ** 2, 1e-12)),
        "test_auc" if binary else "test_corr":
            metrics.roc_auc(scores, truth[:, a] > 0.5) if binary else metrics.pearson(scores, truth[:, a]),
        "lambda_min": float(lambdas[0]), "lambda_max": float(lambdas[-1]),
        "projection_mean": state["projection_mean"][a], "projection_std": state["projection_std"][a],
        "predicted_attribute_change": float(norms[a] * (lambdas[-1] - lambdas[0])),
        "decoded_readout_min": float(read[:, 0].mean()), "decoded_readout_max": float(read[:, -1].mean()),
        "decoded_change": float((read[:, -1] - read[:, 0]).mean()),
        "decoded_change_in_std": float((read[:, -1] - read[:, 0]).mean() / std_a[a]),
        "decoded_readout_lambda_corr": float(np.mean([metrics.pearson(steps, r) for r in read])),
        "decoded_mean_rgb_change": [float(v) for v in
                                    (decoded[:, -1].reshape(num, -1, 3) - decoded[:, 0].reshape(num, -1, 3)).mean((0, 1))],
    }
    for i in range(min(config.num_figure_examples, num)):
      rows.append((f"{name} #{i}", recs[i][2].reshape(shape), [d.reshape(shape) for d in decoded[i]]))
  per_example = max(1, min(config.num_figure_examples, num))  # Fig. 6: per face, a row per attribute
  order = sorted(range(len(rows)), key=lambda r: (r % per_example, r))
  figures.save(direction_figures.strips([rows[r] for r in order], [f"{s:+g} sd" for s in steps]),
               os.path.join(workdir, "directions.png"))
  return {
      "attributes": per_attr, "steps": steps.tolist(), "renormalize": bool(cfg.renormalize),
      "altered_feature_norm_range": norm_range, "n_train": state["n_train"], "n_test": len(test),
      "n_altered": num, "feature_dim": int(weights.shape[0]), "rgb_size": size,
      "rgb_cv_mse_chosen": float(np.asarray(fit.cv_mse)[:, k:].min(0).mean()),
      "mean_direction_cv_r2": float(np.mean([v["direction_cv_r2"] for v in per_attr.values()])),
      **probe.summary(fit),
  }
