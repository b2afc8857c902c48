"""Closed-form ridge regression for many targets, with lambda chosen by exact K-fold CV.

For every target y_j the model is y_j ~ X w_j + b_j with
    (w_j, b_j) = argmin ||y_j - X w_j - b_j||^2 + lambda_j ||w_j||^2,
the intercept unpenalised (X and Y centred with the training means). lambda_j is picked from a
grid by K-fold cross-validation, per target (the paper's independent regressors) or shared.

Two paths, one interface (`init` / `update` / `solve`, or `fit` on arrays):

  * primal (ridge_primal): per-fold sufficient statistics, d x d per fold, memory independent of
    n; each fold's training Gram is eigendecomposed once and every lambda swept in its eigenbasis;
  * dual (ridge_dual): the rows are kept and every fold is solved through n x n kernels, for
    features wider than the data; NaN targets (missing values) are allowed there.

'auto' keeps rows when n is known and smaller than d. Both paths accumulate in float64 and sweep
in the requested dtype; with float32, targets whose held-out error float32 cannot resolve (fits
that are almost perfect) are recomputed in float64 (ridge_cv), so that cv_mse and the chosen
lambdas match a float64 brute force for every target.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from persistent import ridge_cv, ridge_dual, ridge_primal, ridge_sweep
from persistent.ridge_cv import PATHS, RidgeFit, alpha_at_edge, kfold_ids

RidgeStats = ridge_primal.RidgeStats
RidgeRows = ridge_dual.RidgeRows
Stats = Union[RidgeStats, RidgeRows]

__all__ = ["PATHS", "RidgeFit", "RidgeRows", "RidgeStats", "Stats", "alpha_at_edge", "choose_path",
           "fit", "init", "kfold_ids", "mean_fit", "predict", "projection_moments", "solve", "target_moments",
           "update"]


def choose_path(path: str, d: int, n: int | None = None) -> str:
  """'primal' or 'dual' for `path` ('auto': dual when n is known and smaller than d, where the
  rows are smaller than one d x d matrix and n x n kernels are cheaper than d x d eigenbases)."""
  ridge_cv.check_path(path)
  if path != "auto":
    return path
  return "dual" if n is not None and n < d else "primal"


def init(d: int, k: int, num_folds: int = 4, dtype: Any = jnp.float32, *, n: int | None = None,
         path: str = "auto") -> Stats:
  """Empty statistics for d features, k targets and num_folds folds.

  `dtype` is the dtype of the solve and of the fit (float32, or float64 with JAX's x64 mode);
  `path` 'primal', 'dual' or 'auto' (see `choose_path`); `n`, the number of rows to come when
  known, lets 'auto' choose and sizes the dual path's buffers.
  """
  dtype = ridge_cv.check_dtype(dtype)
  if num_folds < 2:
    raise ValueError(f"need num_folds >= 2, got {num_folds}")
  if choose_path(path, d, n) == "dual":
    return ridge_dual.init(d, k, num_folds, dtype, n)
  return ridge_primal.init(d, k, num_folds, dtype)


def update(stats: Stats, x: Any, y: Any, fold_ids: Any) -> Stats:
  """Adds a batch: x (b, d), y (b, k) or (b,), fold_ids (b,) ints in [0, num_folds).

  On the dual path NaN in y marks a missing value. The input stats are consumed (their buffers
  are reused); use the returned value.
  """
  dual = isinstance(stats, RidgeRows)
  x, y, fold_ids = ridge_cv.check_batch(x, y, fold_ids, stats.num_features, stats.num_targets,
                                        stats.num_folds, missing_ok=dual)
  if dual:
    return ridge_dual.update(stats, x, y, fold_ids)
  return ridge_primal.update(stats, x, y, fold_ids) if x.shape[0] else stats


def solve(stats: Stats, *, alphas: Sequence[float], per_target: bool = True,
          folds: Sequence[int] | None = None, target_block: int | None = None,
          extend_grid: bool = False) -> RidgeFit:
  """Cross-validates lambda over `alphas` and refits on all rows of the CV folds.

  `folds`: the fold indices to use (default all); rows of the other folds are left out entirely,
  and the result equals `fit` on the remaining rows with their folds. `extend_grid`: widen the
  grid by decades while a target's best lambda is at its edge (ridge_cv.MAX_EXTRA_DECADES).
  """
  counts = np.asarray(stats.count, np.float64)
  folds = ridge_cv.check_folds(folds, counts)
  if len(folds) < 2:
    return mean_fit(stats, folds, alphas)
  kw = dict(per_target=per_target, extend_grid=extend_grid, dtype=jnp.dtype(stats.dtype))
  if isinstance(stats, RidgeRows):
    parts, fallback = ridge_dual.parts(stats, folds, target_block)
    return ridge_cv.cross_validate(parts, stats.num_targets, stats.num_features, alphas, dual=True,
                                   fallback_mean=fallback, **kw)
  solver = ridge_primal.PrimalSolver(stats, folds, target_block=target_block)
  return _solve_primal(solver, stats, alphas, kw)


def _solve_primal(solver: ridge_primal.PrimalSolver, stats: RidgeStats, alphas, kw) -> RidgeFit:
  part = ridge_cv.Part(np.arange(stats.num_targets), solver)
  return ridge_cv.cross_validate([part], stats.num_targets, stats.num_features, alphas, dual=False, **kw)


def fit(X: Any, Y: Any, *, alphas: Sequence[float], num_folds: int = 4, per_target: bool = True,
        fold_ids: Any = None, dtype: Any = jnp.float32, batch_size: int = 4096,
        target_block: int | None = None, path: str = "auto", folds: Sequence[int] | None = None,
        extend_grid: bool = False) -> RidgeFit:
  """Fits ridge for every column of Y (n, k) (or a vector Y (n,)) on X (n, d).

  Folds default to contiguous blocks in sample order (KFold without shuffling); `fold_ids`
  (n,) overrides them. 'auto' takes the dual path when n < d or Y has NaN (missing values);
  `fit.path` says which. Returns weights (d, k), bias (k,), alpha (k,) and cv_mse (L, k).
  """
  X = np.asarray(X)
  Y = np.asarray(Y)
  if Y.ndim == 1:
    Y = Y[:, None]
  if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
    raise ValueError(f"X must be (n, d) and Y (n, k) with the same n; got {X.shape} and {Y.shape}")
  n, d = X.shape
  if fold_ids is None:
    fold_ids = kfold_ids(n, num_folds)
  else:
    fold_ids = np.asarray(fold_ids)
    if fold_ids.shape != (n,):
      raise ValueError(f"fold_ids must have shape ({n},), got {fold_ids.shape}")
  dtype = ridge_cv.check_dtype(dtype)
  if path == "auto" and np.isnan(Y).any():
    path = "dual"
  kind = choose_path(path, d, n)
  X, Y, fold_ids = ridge_cv.check_batch(X, Y, fold_ids, d, Y.shape[1], num_folds, missing_ok=kind == "dual")
  solve_kw = dict(alphas=alphas, per_target=per_target, folds=folds, target_block=target_block,
                  extend_grid=extend_grid)
  if kind == "dual":
    return solve(ridge_dual.from_arrays(X, Y, fold_ids, num_folds, dtype), **solve_kw)
  stats = ridge_primal.init(d, Y.shape[1], num_folds, dtype)
  for fold in range(num_folds):  # fold by fold: no batch straddles two
    rows = np.flatnonzero(fold_ids == fold)
    for s in range(0, rows.size, batch_size):
      r = rows[s:s + batch_size]
      stats = ridge_primal.update(stats, X[r], Y[r], fold_ids[r])
  counts = np.asarray(stats.count)
  used = ridge_cv.check_folds(folds, counts)
  if len(used) < 2:
    return mean_fit(stats, used, alphas)
  solver = ridge_primal.PrimalSolver(stats, used, rows=(X, Y, fold_ids), target_block=target_block)
  return _solve_primal(solver, stats, alphas, dict(per_target=per_target, extend_grid=extend_grid,
                                                   dtype=dtype))


def mean_fit(stats: Stats, folds: Sequence[int], alphas: Sequence[float], num_targets: int | None = None
             ) -> RidgeFit:
  """Where fewer than two folds hold rows: every target predicts its mean over the rows of `folds`
  (fitted False; 0 where there are none)."""
  k = stats.num_targets if num_targets is None else num_targets
  folds = np.asarray(list(folds), int)
  if isinstance(stats, RidgeRows):
    y = stats.y[:stats.size][np.isin(stats.fold_ids[:stats.size], folds)].astype(np.float64)
    present = ~np.isnan(y)
    mean = np.nansum(y, 0) / np.maximum(present.sum(0), 1)
  else:
    count = np.asarray(stats.count, np.float64)[folds].sum()
    mean = (np.asarray(stats.sum_y, np.float64)[folds].sum(0) / count + np.asarray(stats.shift_y, np.float64)
            if count else np.zeros(stats.num_targets))
  return ridge_cv.unfitted(k, stats.num_features, alphas, mean[:k], jnp.dtype(stats.dtype),
                           isinstance(stats, RidgeRows))


@jax.jit
def _predict(weights, bias, x):
  return ridge_sweep.matmul(x.astype(weights.dtype), weights) + bias


def predict(fit: RidgeFit, X: Any) -> jax.Array:
  """Predictions (n, k) of a fitted model."""
  return _predict(fit.weights, fit.bias, jnp.asarray(X))


def target_moments(stats: Stats) -> tuple[np.ndarray, np.ndarray]:
  """Mean and variance (k,) of the accumulated targets over all rows of all folds (float64;
  on the dual path over each target's present values)."""
  if isinstance(stats, RidgeRows):
    return ridge_dual.target_moments(stats)
  return ridge_primal.target_moments(stats)


def projection_moments(stats: Stats, W: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean (m,) and covariance (m, m) of the accumulated features projected on W (d, m), X W,
  over all rows of all folds (float64), without forming a d x d matrix on the dual path."""
  W = np.asarray(W)
  if W.ndim != 2 or W.shape[0] != stats.num_features:
    raise ValueError(f"W must be (d={stats.num_features}, m), got {W.shape}")
  if isinstance(stats, RidgeRows):
    return ridge_dual.projection_moments(stats, W)
  return ridge_primal.projection_moments(stats, W)
