"""The primal ridge path: per-fold sufficient statistics, memory O(F (d^2 + d k)) whatever n is.

Statistics (X^T X, X^T Y, sums, Y^2 per fold, on data shifted by the first batch's mean) are
accumulated in float64 whatever the solve's dtype: they then hold every target's held-out error
to float64 accuracy, and a float32 sweep loses nothing that a float64 recomputation cannot get
back. For fold f the training Gram matrix is downdated from the totals, eigendecomposed once, and
every lambda for every target is swept in that eigenbasis (ridge_sweep), targets in blocks.

The building blocks (`fold_context`, `block_errors`, `full_context`, `refit_block`) are public
and traceable so that distributed.py runs them per device on target slices.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from persistent import ridge_sweep
from persistent.ridge_sweep import matmul

F64 = jnp.float64
TARGET_LEAVES = ("shift_y", "sum_y", "xy", "yy")  # leaves whose last axis runs over targets


class RidgeStats(flax.struct.PyTreeNode):
  """Per-fold sufficient statistics (float64) of shifted data x - shift_x, y - shift_y."""
  shift_x: jax.Array  # (d,)
  shift_y: jax.Array  # (k,)
  count: jax.Array  # (F,)
  sum_x: jax.Array  # (F, d)
  sum_y: jax.Array  # (F, k)
  xx: jax.Array  # (F, d, d)
  xy: jax.Array  # (F, d, k)
  yy: jax.Array  # (F, k) per-target sums of squares
  dtype: str = flax.struct.field(pytree_node=False, default="float32")  # of the solve and fit

  @property
  def num_folds(self) -> int:
    return self.count.shape[0]

  @property
  def num_features(self) -> int:
    return self.xx.shape[-1]

  @property
  def num_targets(self) -> int:
    return self.xy.shape[-1]


def init(d: int, k: int, num_folds: int, dtype: Any) -> RidgeStats:
  """Empty statistics; `dtype` (float32 or float64) is the dtype of the solve."""
  with ridge_sweep.float64_context():
    z = functools.partial(jnp.zeros, dtype=F64)
    return RidgeStats(shift_x=z(d), shift_y=z(k), count=z(num_folds), sum_x=z((num_folds, d)),
                      sum_y=z((num_folds, k)), xx=z((num_folds, d, d)), xy=z((num_folds, d, k)),
                      yy=z((num_folds, k)), dtype=jnp.dtype(dtype).name)


def accumulate(stats: RidgeStats, fold: Any, x: jax.Array, y: jax.Array, mask: jax.Array) -> RidgeStats:
  """Adds the masked rows of a batch to one fold, shifted by the statistics' current shift.

  Traceable, and works on any target slice (y's columns matching the stats' target leaves):
  distributed.py calls it per device on the device's rows and target columns. Needs x64 mode.
  """
  x, y, mask = x.astype(F64), y.astype(F64), mask.astype(F64)
  xs = (x - stats.shift_x) * mask[:, None]
  ys = (y - stats.shift_y) * mask[:, None]
  return stats.replace(
      count=stats.count.at[fold].add(jnp.sum(mask)),
      sum_x=stats.sum_x.at[fold].add(xs.sum(0)),
      sum_y=stats.sum_y.at[fold].add(ys.sum(0)),
      xx=stats.xx.at[fold].add(matmul(xs.T, xs)),
      xy=stats.xy.at[fold].add(matmul(xs.T, ys)),
      yy=stats.yy.at[fold].add(jnp.sum(ys * ys, 0)))


@functools.partial(jax.jit, donate_argnums=0)
def _update_fold(stats: RidgeStats, fold: jax.Array, x: jax.Array, y: jax.Array,
                 mask: jax.Array) -> RidgeStats:
  m = jnp.sum(mask.astype(F64))
  first = jnp.sum(stats.count) == 0
  shift_x = jnp.where(first, mask.astype(F64) @ x.astype(F64) / m, stats.shift_x)
  shift_y = jnp.where(first, mask.astype(F64) @ y.astype(F64) / m, stats.shift_y)
  return accumulate(stats.replace(shift_x=shift_x, shift_y=shift_y), fold, x, y, mask)


def update(stats: RidgeStats, x: Any, y: Any, fold_ids: np.ndarray) -> RidgeStats:
  """Adds a validated batch (see ridge.update); the input stats are consumed."""
  b = x.shape[0]
  with ridge_sweep.float64_context():
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


# ----------------------------------------------------------------------------- building blocks


def _centred(stats: RidgeStats, train: jax.Array):
  """Count, feature mean and centred Gram matrix (float64) of the folds weighted by `train`."""
  n = train @ stats.count
  mx = (train @ stats.sum_x) / n
  g = jnp.einsum("f,fde->de", train, stats.xx, precision=ridge_sweep.HIGHEST) - n * jnp.outer(mx, mx)
  return n, mx, g


@functools.partial(jax.jit, static_argnames=("rank", "dtype"))
def fold_context(stats: RidgeStats, train: jax.Array, val: jax.Array, rank: int, dtype: Any):
  """Eigenbasis of the training Gram (folds weighted by `train`) and the held-out Gram (folds
  `val`, centred at the training mean) in it: (n, mx, e, v, a), e, v, a in `dtype`."""
  n, mx, g = _centred(stats, train)
  e, v = ridge_sweep.eigenbasis(g.astype(dtype), rank)
  n_v, sx_v = val @ stats.count, val @ stats.sum_x
  gv = jnp.einsum("f,fde->de", val, stats.xx, precision=ridge_sweep.HIGHEST)
  gv = gv - jnp.outer(sx_v, mx) - jnp.outer(mx, sx_v) + n_v * jnp.outer(mx, mx)
  return n, mx, e, v, matmul(v.T, matmul(gv.astype(dtype), v))


def _target_terms(stats: RidgeStats, train: jax.Array, n: jax.Array, mx: jax.Array,
                  start: jax.Array, size: int):
  """Target columns [start, start + size): training mean my and centred X^T Y (float64)."""
  cols = lambda t: jax.lax.dynamic_slice_in_dim(t, start, size, axis=-1)
  my = (train @ cols(stats.sum_y)) / n
  c = jnp.einsum("f,fdk->dk", train, cols(stats.xy), precision=ridge_sweep.HIGHEST) - n * jnp.outer(mx, my)
  return cols, my, c


@functools.partial(jax.jit, static_argnames="size")
def block_errors(stats: RidgeStats, train: jax.Array, val: jax.Array, context, alphas: jax.Array,
                 start: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Held-out SSE (L, size) and rounding scale for targets [start, start + size)."""
  n, mx, e, v, a = context
  dt = e.dtype
  cols, my, c_t = _target_terms(stats, train, n, mx, start, size)
  n_v, sx_v, sy_v = val @ stats.count, val @ stats.sum_x, val @ cols(stats.sum_y)
  c_v = jnp.einsum("f,fdk->dk", val, cols(stats.xy), precision=ridge_sweep.HIGHEST)
  c_v = c_v - jnp.outer(sx_v, my) - jnp.outer(mx, sy_v) + n_v * jnp.outer(mx, my)
  q_v = val @ cols(stats.yy) - 2 * my * sy_v + n_v * my * my
  z, b = matmul(v.T, c_t.astype(dt)), matmul(v.T, c_v.astype(dt))
  return ridge_sweep.quadratic_errors(e, z, b, a, q_v.astype(dt), alphas.astype(dt))


@functools.partial(jax.jit, static_argnames=("rank", "dtype"))
def full_context(stats: RidgeStats, train: jax.Array, rank: int, dtype: Any):
  """Eigenbasis (n, mx, e, v) of the Gram matrix of the folds weighted by `train`."""
  n, mx, g = _centred(stats, train)
  e, v = ridge_sweep.eigenbasis(g.astype(dtype), rank)
  return n, mx, e, v


@functools.partial(jax.jit, static_argnames="size")
def refit_block(stats: RidgeStats, train: jax.Array, context, alpha: jax.Array, start: jax.Array,
                size: int) -> tuple[jax.Array, jax.Array]:
  """Weights (d, size) and biases of targets [start, start + size) with lambdas alpha (k,)."""
  n, mx, e, v = context
  cols, my, c = _target_terms(stats, train, n, mx, start, size)
  w = ridge_sweep.scaled_solution(v, e, c.astype(e.dtype), cols(alpha).astype(e.dtype))
  bias = my + cols(stats.shift_y) - matmul(mx + stats.shift_x, w.astype(F64))
  return w, bias.astype(e.dtype)


@functools.partial(jax.jit, static_argnames=("rank", "dtype"))
def _rows_context(stats: RidgeStats, train: jax.Array, rows: jax.Array, rank: int, dtype: Any):
  """Training eigenbasis and the held-out rows (m, d) mapped into it: (n, mx, e, v, rows V)."""
  n, mx, g = _centred(stats, train)
  e, v = ridge_sweep.eigenbasis(g.astype(dtype), rank)
  return n, mx, e, v, matmul((rows.astype(F64) - stats.shift_x - mx).astype(dtype), v)


@functools.partial(jax.jit, static_argnames="size")
def _rows_block_errors(stats: RidgeStats, train: jax.Array, context, y: jax.Array, mask: jax.Array,
                       alphas: jax.Array, start: jax.Array, size: int):
  n, mx, e, v, rows = context
  cols, my, c_t = _target_terms(stats, train, n, mx, start, size)
  yv = (cols(y).astype(F64) - cols(stats.shift_y) - my) * mask[:, None]
  return ridge_sweep.residual_errors(e, matmul(v.T, c_t.astype(e.dtype)), rows, yv.astype(e.dtype),
                                     mask.astype(e.dtype), alphas.astype(e.dtype))


def take_targets(stats: RidgeStats, columns: np.ndarray) -> RidgeStats:
  """Statistics of some target columns only."""
  idx = jnp.asarray(columns)
  with ridge_sweep.float64_context():
    return stats.replace(**{f: jnp.take(getattr(stats, f), idx, axis=-1) for f in TARGET_LEAVES})


# ----------------------------------------------------------------------------- solver


class PrimalSolver:
  """CV errors and refits (a ridge_cv.Solver) from primal statistics over the folds `folds`.

  `rows` = (x (n, d), y (n, k), fold ids (n,)): the data the statistics were made from, when in
  memory (ridge.fit). Folds with fewer rows than features then take held-out errors from their
  rows (ridge_sweep.residual_errors: n_v d instead of d^2 per target and lambda, and no
  cancellation) instead of from the held-out Gram.
  """

  def __init__(self, stats: RidgeStats, folds: Sequence[int], *, rows=None,
               target_block: int | None = None):
    self.stats, self.folds, self.rows, self.target_block = stats, list(folds), rows, target_block
    counts = np.asarray(self.host(stats.count))
    self.counts = counts
    self.total = int(counts[self.folds].sum())
    self.num_targets = stats.num_targets
    self.selected = np.zeros(stats.num_folds)
    self.selected[self.folds] = 1
    self.rank = min(stats.num_features, self.total - int(counts[self.folds].min()))

  def host(self, x: jax.Array) -> np.ndarray:
    """A (possibly sharded) array on the host: distributed.py overrides it."""
    return np.asarray(x)

  def fold_weights(self, fold: int) -> tuple[jax.Array, jax.Array]:
    """Fold weights (float64) of the training folds and of the held-out fold."""
    val = np.zeros(self.stats.num_folds)
    val[fold] = 1
    with ridge_sweep.float64_context():
      return jnp.asarray(self.selected - val, F64), jnp.asarray(val, F64)

  def _subset(self, columns: np.ndarray | None) -> tuple[RidgeStats, Any]:
    if columns is None:
      return self.stats, self.rows
    rows = None if self.rows is None else (self.rows[0], self.rows[1][:, columns], self.rows[2])
    return take_targets(self.stats, columns), rows

  def _heldout_rows(self, rows, fold: int):
    """The held-out rows of a fold, padded to the largest fold (one compilation)."""
    idx = np.flatnonzero(rows[2] == fold)
    m = int(self.counts[self.folds].max())
    pad = np.concatenate([idx, np.full(m - idx.size, idx[0])])
    return rows[0][pad], rows[1][pad], (np.arange(m) < idx.size).astype(np.float32)

  def fold_errors(self, fold: int, alphas: np.ndarray, dtype: Any, columns: np.ndarray | None = None):
    stats, rows = self._subset(columns)
    dtype = jnp.dtype(dtype)
    k, d = stats.num_targets, stats.num_features
    train, val = self.fold_weights(fold)
    use_rows = rows is not None and self.counts[fold] < d
    per_target = (3 * int(self.counts[self.folds].max()) if use_rows else len(alphas) * self.rank)
    size = ridge_sweep.block_size(k, per_target * dtype.itemsize, self.target_block)
    sse = np.empty((len(alphas), k))
    scale = np.empty_like(sse)
    with ridge_sweep.float64_context():
      a = jnp.asarray(alphas, dtype)
      if use_rows:
        x, y, mask = self._heldout_rows(rows, fold)
        context = _rows_context(stats, train, jnp.asarray(x), self.rank, dtype)
        run = lambda s: _rows_block_errors(stats, train, context, jnp.asarray(y), jnp.asarray(mask),
                                           a, jnp.int32(s), size)
      else:
        context = fold_context(stats, train, val, self.rank, dtype)
        run = lambda s: block_errors(stats, train, val, context, a, jnp.int32(s), size)
      for s in ridge_sweep.block_starts(k, size):  # assigned: the last block may overlap
        e, sc = run(s)
        sse[:, s:s + size], scale[:, s:s + size] = np.asarray(e), np.asarray(sc)
    return sse, scale

  def refit(self, alpha: np.ndarray, dtype: Any, columns: np.ndarray | None = None):
    stats, _ = self._subset(columns)
    dtype = jnp.dtype(dtype)
    k, d = stats.num_targets, stats.num_features
    size = ridge_sweep.block_size(k, 2 * d * dtype.itemsize, self.target_block)
    weights, bias = np.empty((d, k), dtype), np.empty(k, dtype)
    with ridge_sweep.float64_context():
      train = jnp.asarray(self.selected, F64)
      context = full_context(stats, train, min(d, self.total), dtype)
      a = jnp.asarray(alpha, dtype)
      for s in ridge_sweep.block_starts(k, size):
        w, b = refit_block(stats, train, context, a, jnp.int32(s), size)
        weights[:, s:s + size], bias[s:s + size] = np.asarray(w), np.asarray(b)
    return weights, bias

  def target_mean(self) -> np.ndarray:
    sum_y, shift_y = self.host(self.stats.sum_y), self.host(self.stats.shift_y)
    return self.selected @ np.asarray(sum_y, np.float64) / self.total + np.asarray(shift_y, np.float64)


# ----------------------------------------------------------------------------- moments


def target_moments(stats: RidgeStats) -> tuple[np.ndarray, np.ndarray]:
  """Mean and variance (k,) of the accumulated targets over all rows of all folds (float64)."""
  n = float(np.asarray(stats.count, np.float64).sum())
  s = np.asarray(stats.sum_y, np.float64).sum(0) / n
  return s + np.asarray(stats.shift_y, np.float64), np.asarray(stats.yy, np.float64).sum(0) / n - s * s


def projection_moments(stats: RidgeStats, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (m,) and covariance (m, m) of X W over all rows of all folds, W (d, m) (float64)."""
  w = np.asarray(w, np.float64)
  n = float(np.asarray(stats.count, np.float64).sum())
  s = np.asarray(stats.sum_x, np.float64).sum(0) / n
  with ridge_sweep.float64_context():
    xxw = np.asarray(jnp.einsum("fde,em->dm", stats.xx, jnp.asarray(w), precision=ridge_sweep.HIGHEST))
  sw = s @ w
  return sw + np.asarray(stats.shift_x, np.float64) @ w, w.T @ xxw / n - np.outer(sw, sw)
