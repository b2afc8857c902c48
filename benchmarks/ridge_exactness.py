"""Float32 engine vs float64 brute force across noise levels: the table of benchmarks/RESULTS.md.

  python -m benchmarks.ridge_exactness      # n=800 d=200 k=120, lambdas 1e-4..1e2, 4 folds

The issue's setting: ReLU-like l2-normalised features, targets X W (weights of scale 10) plus
noise at 1e-4 .. 1 of the signal, 4 contiguous folds. For each way the engine computes held-out
errors (streamed statistics: the held-out Gram; `fit` with folds smaller than d: held-out rows;
the dual path) and each noise level: the largest relative error of cv_mse against float64 brute
force, the share of targets with the brute force's lambda where it wins by 1e-4, the share
recomputed in float64, and the same error with the float64 recomputation switched off.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from persistent import ridge, ridge_cv


def relu_problem(n: int, d: int, noise: np.ndarray, seed: int = 0):
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(min(d, 64), d))
  x = np.maximum(rng.normal(size=(n, basis.shape[0])) @ basis + 0.5 * rng.normal(size=(n, d)), 0)
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  signal = x.astype(np.float64) @ (rng.normal(size=(d, noise.size)) * 10 / np.sqrt(d))
  y = signal + rng.normal(size=signal.shape) * noise * signal.std(0)
  return x, y.astype(np.float32)


def brute_force_cv(x, y, alphas, ids):
  x, y = x.astype(np.float64), y.astype(np.float64)
  sse = np.zeros((len(alphas), y.shape[1]))
  for f in np.unique(ids):
    tr, va = ids != f, ids == f
    mx, my = x[tr].mean(0), y[tr].mean(0)
    xc = x[tr] - mx
    g, c = xc.T @ xc, xc.T @ (y[tr] - my)
    for i, a in enumerate(alphas):
      w = np.linalg.solve(g + a * np.eye(g.shape[0]), c)
      sse[i] += (((x[va] - mx) @ w + my - y[va]) ** 2).sum(0)
  return sse / x.shape[0]


def solve(how: str, x, y, alphas, ids, folds):
  if how == "fit, held-out rows":
    return ridge.fit(x, y, alphas=alphas, num_folds=folds, path="primal")
  if how == "dual":
    return ridge.fit(x, y, alphas=alphas, num_folds=folds, path="dual")
  stats = ridge.update(ridge.init(x.shape[1], y.shape[1], folds), x, y, ids)  # streamed
  return ridge.solve(stats, alphas=alphas)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=800)
  p.add_argument("--d", type=int, default=200)
  p.add_argument("--per-level", type=int, default=24)
  p.add_argument("--folds", type=int, default=4)
  a = p.parse_args()
  levels = np.array([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
  noise = np.repeat(levels, a.per_level)
  alphas = np.logspace(-4, 2, 13)
  x, y = relu_problem(a.n, a.d, noise)
  ids = ridge.kfold_ids(a.n, a.folds)
  cv = brute_force_cv(x, y, alphas, ids)
  s = np.sort(cv, 0)
  clear = (s[1] - s[0]) > 1e-4 * s[0]
  best = alphas[np.argmin(cv, 0)]
  hows = ["streamed statistics, held-out Gram", "dual"]
  if a.n // a.folds < a.d:
    hows.insert(1, "fit, held-out rows")
  table = []
  for how in hows:
    fit = solve(how, x, y, alphas, ids, a.folds)
    tol = (ridge_cv.FLOAT32_TOLERANCE, ridge_cv.CV_TOLERANCE)
    ridge_cv.FLOAT32_TOLERANCE = ridge_cv.CV_TOLERANCE = np.inf
    try:
      alone = solve(how, x, y, alphas, ids, a.folds)
    finally:
      ridge_cv.FLOAT32_TOLERANCE, ridge_cv.CV_TOLERANCE = tol
    err = np.abs(np.asarray(fit.cv_mse, np.float64) - cv) / cv
    err_alone = np.abs(np.asarray(alone.cv_mse, np.float64) - cv) / cv
    same = np.isclose(np.asarray(fit.alpha, np.float64), best, rtol=1e-6)
    same_alone = np.isclose(np.asarray(alone.alpha, np.float64), best, rtol=1e-6)
    for level in levels:
      j = noise == level
      table.append({
          "held-out errors": how, "path": fit.path, "noise": float(level),
          "held_out_r2_min": float(1 - (cv.min(0) / y.astype(np.float64).var(0))[j].max()),
          "cv_mse_max_rel_err": float(err[:, j].max()),
          "same_alpha_where_clear": float(same[j & clear].mean()) if (j & clear).any() else None,
          "recomputed_in_float64": float(np.asarray(fit.float64)[j].mean()),
          "float32_alone_cv_mse_max_rel_err": float(err_alone[:, j].max()),
          "float32_alone_same_alpha_where_clear": float(same_alone[j & clear].mean()) if (j & clear).any() else None})
  print(json.dumps({"n": a.n, "d": a.d, "k": int(noise.size), "folds": a.folds, "table": table}, indent=1))


if __name__ == "__main__":
  main()
