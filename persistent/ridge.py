"""Closed-form ridge regression for many targets, with lambda chosen by exact K-fold CV.

For every target y_j the model is y_j ~ X w_j + b_j with
    (w_j, b_j) = argmin ||y_j - X w_j - b_j||^2 + lambda_j ||w_j||^2,
the intercept unpenalised (X and Y centred with the training means). lambda_j is picked from a
grid by K-fold cross-validation, per target (the paper's independent regressors) or shared.

Everything runs from sufficient statistics accumulated per fold (`init` / `update` / `solve`), so
features never have to sit in memory at once: memory is O(F (d^2 + d k)) whatever n is. For
fold f the training Gram matrix is downdated from the total, eigendecomposed once, and every
lambda for every target is swept in that eigenbasis with batched matrix products:

    G_t = V diag(e) V^T,  Z = V^T C_t,  w(lambda) = V diag(1 / (e + lambda)) Z,
    heldout_err(lambda) = q_v - 2 w^T C_v + w^T G_v w     (all centred at the training means),

where the held-out quadratic form uses A = V^T G_v V, so no linear solve is made per (target,
lambda). Statistics are accumulated on data shifted by a reference (the first batch's mean) to
avoid cancellation in float32; matrix products use the highest precision.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST
_BLOCK_BYTES = 1 << 28  # working set of one target block in the lambda sweep


class RidgeFit(flax.struct.PyTreeNode):
  """A fitted multi-target ridge model. cv_mse[i, j]: CV error of target j at alphas[i]."""
  weights: jax.Array  # (d, k)
  bias: jax.Array  # (k,)
  alpha: jax.Array  # (k,) chosen lambda per target
  cv_mse: jax.Array  # (len(alphas), k): held-out squared error summed over folds, / n
  alphas: jax.Array  # (len(alphas),) the grid
  target_mean: jax.Array  # (k,) training mean of each target: the infinite-lambda prediction


class RidgeStats(flax.struct.PyTreeNode):
  """Per-fold sufficient statistics of shifted data x - shift_x, y - shift_y."""
  shift_x: jax.Array  # (d,)
  shift_y: jax.Array  # (k,)
  count: jax.Array  # (F,)
  sum_x: jax.Array  # (F, d)
  sum_y: jax.Array  # (F, k)
  xx: jax.Array  # (F, d, d)
  xy: jax.Array  # (F, d, k)
  yy: jax.Array  # (F, k) per-target sums of squares

  @property
  def num_folds(self) -> int:
    return self.count.shape[0]


def _check_dtype(dtype: Any) -> Any:
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("float64 ridge needs 64-bit JAX: set JAX_ENABLE_X64=1 or "
                     "jax.config.update('jax_enable_x64', True) before creating arrays")
  if dtype not in (jnp.float32, jnp.float64):
    raise ValueError(f"ridge dtype must be float32 or float64, got {dtype}")
  return dtype


def kfold_ids(n: int, num_folds: int) -> np.ndarray:
  """Contiguous fold ids as scikit-learn's KFold(num_folds) without shuffling."""
  if num_folds < 2 or n < num_folds:
    raise ValueError(f"need num_folds >= 2 and at least num_folds samples; got {num_folds} folds, n={n}")
  sizes = np.full(num_folds, n // num_folds)
  sizes[: n % num_folds] += 1
  return np.repeat(np.arange(num_folds), sizes)


def init(d: int, k: int, num_folds: int = 4, dtype: Any = jnp.float32) -> RidgeStats:
  """Empty statistics for d features, k targets and num_folds folds."""
  dtype = _check_dtype(dtype)
  z = functools.partial(jnp.zeros, dtype=dtype)
  return RidgeStats(shift_x=z(d), shift_y=z(k), count=z(num_folds), sum_x=z((num_folds, d)),
                    sum_y=z((num_folds, k)), xx=z((num_folds, d, d)), xy=z((num_folds, d, k)),
                    yy=z((num_folds, k)))


def _accumulate(stats: RidgeStats, fold: Any, x: jax.Array, y: jax.Array, mask: jax.Array) -> RidgeStats:
  """Adds the masked rows of a batch to one fold, shifted by the statistics' current shift.

  Works on any target slice (y's columns matching stats' k-sized leaves); distributed.py calls it
  per device on the device's rows and target columns.
  """
  dtype = stats.xx.dtype
  x, y, mask = x.astype(dtype), y.astype(dtype), mask.astype(dtype)
  xs = (x - stats.shift_x) * mask[:, None]
  ys = (y - stats.shift_y) * mask[:, None]
  return stats.replace(
      count=stats.count.at[fold].add(jnp.sum(mask)),
      sum_x=stats.sum_x.at[fold].add(xs.sum(0)),
      sum_y=stats.sum_y.at[fold].add(ys.sum(0)),
      xx=stats.xx.at[fold].add(jnp.matmul(xs.T, xs, precision=HIGHEST)),
      xy=stats.xy.at[fold].add(jnp.matmul(xs.T, ys, precision=HIGHEST)),
      yy=stats.yy.at[fold].add(jnp.sum(ys * ys, 0)))


@functools.partial(jax.jit, donate_argnums=0)
def _update_fold(stats: RidgeStats, fold: jax.Array, x: jax.Array, y: jax.Array,
                 mask: jax.Array) -> RidgeStats:
  dtype = stats.xx.dtype
  x, y, mask = x.astype(dtype), y.astype(dtype), mask.astype(dtype)
  first = jnp.sum(stats.count) == 0
  m = jnp.sum(mask)
  shift_x = jnp.where(first, mask @ x / m, stats.shift_x)
  shift_y = jnp.where(first, mask @ y / m, stats.shift_y)
  return _accumulate(stats.replace(shift_x=shift_x, shift_y=shift_y), fold, x, y, mask)


def update(stats: RidgeStats, x: Any, y: Any, fold_ids: Any) -> RidgeStats:
  """Adds a batch: x (b, d), y (b, k) or (b,), fold_ids (b,) ints in [0, num_folds).

  The input stats are consumed (their buffers are reused); use the returned value.
  """
  x = np.asarray(x) if not isinstance(x, jax.Array) else x
  y = np.asarray(y) if not isinstance(y, jax.Array) else y
  if y.ndim == 1:
    y = y[:, None]
  fold_ids = np.asarray(fold_ids)
  d, k = stats.xx.shape[1], stats.xy.shape[2]
  if x.ndim != 2 or x.shape[1] != d or y.shape != (x.shape[0], k) or fold_ids.shape != (x.shape[0],):
    raise ValueError(f"batch shapes x {x.shape}, y {y.shape}, fold_ids {fold_ids.shape} do not "
                     f"match statistics for d={d} features and k={k} targets")
  if fold_ids.size and (fold_ids.min() < 0 or fold_ids.max() >= stats.num_folds):
    raise ValueError(f"fold ids must lie in [0, {stats.num_folds}), got {fold_ids.min()}..{fold_ids.max()}")
  xp = jnp if isinstance(x, jax.Array) else np
  if not (bool(xp.isfinite(x).all()) and bool(xp.isfinite(y).all())):
    raise ValueError("ridge inputs contain NaN or infinite values")
  b = x.shape[0]
  for fold in np.unique(fold_ids):
    sel = fold_ids == fold
    if sel.all():
      xs, ys, mask = x, y, np.ones(b, np.float32)
    else:  # the fold's rows, padded to a power of two: few compilations, little wasted work
      idx = np.flatnonzero(sel)
      size = min(b, 1 << int(np.ceil(np.log2(idx.size))))
      pad = np.concatenate([idx, np.full(size - idx.size, idx[0])])
      xs, ys = x[pad], y[pad]
      mask = (np.arange(size) < idx.size).astype(np.float32)
    stats = _update_fold(stats, jnp.int32(fold), xs, ys, mask)
  return stats


def _check_alphas(alphas: Sequence[float]) -> np.ndarray:
  a = np.asarray(alphas, dtype=np.float64).reshape(-1)
  if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
    raise ValueError(f"alphas must be a non-empty list of positive finite numbers, got {alphas!r}")
  return a


def _centred(stats: RidgeStats, train: jax.Array, rank: int):
  """Training count, means and the top-`rank` eigenpairs of the centred training Gram matrix.

  The centred Gram of n samples has rank < n, and X^T Y lies in its range, so when n <= d only the
  top n eigenpairs matter: the lambda sweep then costs O(n^2 k) instead of O(d^2 k). Eigenvalues
  at rounding level (below eps * d * e_max, the usual numerical-rank cut) span the null space; they
  are set to +inf so that their noise cannot enter the solution.
  """
  n = train @ stats.count
  mx = (train @ stats.sum_x) / n
  my = (train @ stats.sum_y) / n
  g = jnp.einsum("f,fde->de", train, stats.xx, precision=HIGHEST) - n * jnp.outer(mx, mx)
  e, v = jnp.linalg.eigh((g + g.T) / 2)
  e, v = e[-rank:], v[:, -rank:]
  tol = e[-1] * g.shape[0] * jnp.finfo(g.dtype).eps
  return n, mx, my, jnp.where(e > tol, e, jnp.inf), v


@functools.partial(jax.jit, static_argnames="rank")
def _fold_basis(stats: RidgeStats, fold: jax.Array, rank: int):
  val = jax.nn.one_hot(fold, stats.num_folds, dtype=stats.xx.dtype)
  n, mx, my, e, v = _centred(stats, 1.0 - val, rank)
  n_v, sx_v = stats.count[fold], stats.sum_x[fold]
  # Held-out Gram centred at the training mean, in the training eigenbasis.
  a = stats.xx[fold] - jnp.outer(sx_v, mx) - jnp.outer(mx, sx_v) + n_v * jnp.outer(mx, mx)
  a = jnp.matmul(v.T, jnp.matmul(a, v, precision=HIGHEST), precision=HIGHEST)
  return n, mx, my, e, v, a


@functools.partial(jax.jit, static_argnames="size")
def _fold_block_errors(stats: RidgeStats, fold: jax.Array, basis, alphas: jax.Array,
                       start: jax.Array, size: int) -> jax.Array:
  """Held-out sums of squared errors (L, size) for targets [start, start + size)."""
  n, mx, my, e, v, a = basis
  cols = lambda t: jax.lax.dynamic_slice_in_dim(t, start, size, axis=-1)
  xy, sum_y, yy = cols(stats.xy), cols(stats.sum_y), cols(stats.yy)
  val = jax.nn.one_hot(fold, stats.num_folds, dtype=stats.xx.dtype)
  train = 1.0 - val
  my = cols(my)
  c_t = jnp.einsum("f,fdk->dk", train, xy, precision=HIGHEST) - n * jnp.outer(mx, my)
  n_v, sx_v, sy_v = stats.count[fold], stats.sum_x[fold], sum_y[fold]
  c_v = xy[fold] - jnp.outer(sx_v, my) - jnp.outer(mx, sy_v) + n_v * jnp.outer(mx, my)
  q_v = yy[fold] - 2 * my * sy_v + n_v * my * my
  z = jnp.matmul(v.T, c_t, precision=HIGHEST)
  b = jnp.matmul(v.T, c_v, precision=HIGHEST)
  shrink = 1.0 / (e[None, :] + alphas[:, None])  # (L, d); 0 on the null space (e = inf)
  linear = jnp.matmul(shrink, z * b, precision=HIGHEST)  # w^T C_v for every lambda: (L, size)
  u = shrink[:, :, None] * z[None]  # eigen-coordinates of w for every lambda: (L, d, size)
  au = jnp.einsum("de,lek->ldk", a, u, precision=HIGHEST)
  return q_v[None] - 2 * linear + jnp.einsum("ldk,ldk->lk", u, au, precision=HIGHEST)


@functools.partial(jax.jit, static_argnames="rank")
def _full_basis(stats: RidgeStats, rank: int):
  return _centred(stats, jnp.ones(stats.num_folds, stats.xx.dtype), rank)


@functools.partial(jax.jit, static_argnames="size")
def _refit_block(stats: RidgeStats, basis, alpha: jax.Array, start: jax.Array, size: int):
  n, mx, my, e, v = basis
  cols = lambda t: jax.lax.dynamic_slice_in_dim(t, start, size, axis=-1)
  my, alpha = cols(my), cols(alpha)
  c = jnp.sum(cols(stats.xy), 0) - n * jnp.outer(mx, my)
  z = jnp.matmul(v.T, c, precision=HIGHEST) / (e[:, None] + alpha[None, :])
  w = jnp.matmul(v, z, precision=HIGHEST)
  bias = my + cols(stats.shift_y) - jnp.matmul(mx + stats.shift_x, w, precision=HIGHEST)
  return w, bias


def _blocks(k: int, size: int) -> list[int]:
  """Block starts covering [0, k) with equal-size blocks; the last one may overlap."""
  return sorted({min(s, k - size) for s in range(0, k, size)})


def solve(stats: RidgeStats, *, alphas: Sequence[float], per_target: bool = True,
          target_block: int | None = None) -> RidgeFit:
  """Cross-validates lambda over `alphas` and refits on all data with the chosen lambdas."""
  grid = _check_alphas(alphas)
  counts = np.asarray(stats.count)
  if np.any(counts <= 0):
    raise ValueError(f"every fold needs samples; samples per fold: {counts.astype(int).tolist()}")
  d, k = stats.xx.shape[1], stats.xy.shape[2]
  dtype = stats.xx.dtype
  size = target_block or max(1, _BLOCK_BYTES // (len(grid) * d * dtype.itemsize))
  size = min(size, k)
  starts = _blocks(k, size)
  alphas_j = jnp.asarray(grid, dtype)
  sse = np.zeros((len(grid), k), np.float64)
  total = int(counts.sum())
  fold_rank = min(d, total - int(counts.min()))  # one compilation serves every fold
  for fold in range(stats.num_folds):
    f = jnp.int32(fold)
    basis = _fold_basis(stats, f, fold_rank)
    fold_sse = np.empty_like(sse)  # assigned, not added: the last block may overlap its neighbour
    for s in starts:
      fold_sse[:, s:s + size] = np.asarray(_fold_block_errors(stats, f, basis, alphas_j, jnp.int32(s), size))
    sse += fold_sse
  cv_mse = sse / total
  if per_target:
    choice = np.argmin(cv_mse, axis=0)
  else:
    choice = np.full(k, np.argmin(cv_mse.sum(1)))
  alpha = grid[choice]
  basis = _full_basis(stats, min(d, total))
  weights = np.empty((d, k), dtype)
  bias = np.empty(k, dtype)
  alpha_j = jnp.asarray(alpha, dtype)
  for s in starts:
    w, b = _refit_block(stats, basis, alpha_j, jnp.int32(s), size)
    weights[:, s:s + size], bias[s:s + size] = np.asarray(w), np.asarray(b)
  return RidgeFit(weights=jnp.asarray(weights), bias=jnp.asarray(bias), alpha=jnp.asarray(alpha, dtype),
                  cv_mse=jnp.asarray(cv_mse, dtype), alphas=alphas_j,
                  target_mean=basis[2] + stats.shift_y)


def fit(X: Any, Y: Any, *, alphas: Sequence[float], num_folds: int = 4, per_target: bool = True,
        fold_ids: Any = None, dtype: Any = jnp.float32, batch_size: int = 4096,
        target_block: int | None = None) -> RidgeFit:
  """Fits ridge for every column of Y (n, k) (or a vector Y (n,)) on X (n, d).

  Folds default to contiguous blocks in sample order (KFold without shuffling); `fold_ids`
  (n,) overrides them. Returns weights (d, k), bias (k,), alpha (k,) and cv_mse (L, k).
  """
  X = np.asarray(X)
  Y = np.asarray(Y)
  if Y.ndim == 1:
    Y = Y[:, None]
  if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
    raise ValueError(f"X must be (n, d) and Y (n, k) with the same n; got {X.shape} and {Y.shape}")
  n = X.shape[0]
  if fold_ids is None:
    fold_ids = kfold_ids(n, num_folds)
  else:
    fold_ids = np.asarray(fold_ids)
    if fold_ids.shape != (n,):
      raise ValueError(f"fold_ids must have shape ({n},), got {fold_ids.shape}")
  stats = init(X.shape[1], Y.shape[1], num_folds, dtype)
  for fold in range(int(fold_ids.max()) + 1 if n else 0):  # fold by fold: no batch straddles two
    rows = np.flatnonzero(fold_ids == fold)
    for s in range(0, rows.size, batch_size):
      r = rows[s:s + batch_size]
      stats = update(stats, X[r], Y[r], fold_ids[r])
  return solve(stats, alphas=alphas, per_target=per_target, target_block=target_block)


@jax.jit
def _predict(weights, bias, x):
  return jnp.matmul(x.astype(weights.dtype), weights, precision=HIGHEST) + bias


def predict(fit: RidgeFit, X: Any) -> jax.Array:
  """Predictions (n, k) of a fitted model."""
  return _predict(fit.weights, fit.bias, jnp.asarray(X))
