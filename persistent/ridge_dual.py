"""The dual ridge path: statistics that keep the rows, solved through n x n kernel matrices.

For features wider than the data (a flattened dense map: d = 62,720 for a few thousand faces),
d x d statistics per fold do not fit; the rows do. The kept rows (`RidgeRows`: features, targets
with NaN for a missing value, fold ids) give one Gram matrix K = X X^T of the rows (shifted by
their mean), from which every fold's centred training kernel and held-out cross kernel are
sub-blocks plus a rank-one centring. Per fold the training kernel is eigendecomposed,
K_TT = U diag(s) U^T, and held-out predictions for every lambda are K_VT U diag(1 / (s + lambda))
U^T Y_T: residuals are formed directly (ridge_sweep.residual_errors). The refit eigendecomposes
the kernel of all rows and recovers primal weights W = X_c^T alpha (d, k) for prediction.

Targets with missing values are grouped by their presence pattern; each group is solved on its
present rows (folds as given). A group with a CV fold that has none of its rows cannot be
cross-validated: its targets fall back to their mean (ridge_cv.cross_validate).

Cost (n rows, d features, k targets, L lambdas, F folds; n_t = n (F-1)/F, n_v = n/F): time
n^2 d (the Gram) + F (n_t^3 + n_v n_t^2 + n_t^2 k + L n_v n_t k) + n^3 + n^2 k + d n k, memory
n d (rows) + n^2 + d k, per presence group for the eigen- and target terms.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from persistent import ridge_cv, ridge_sweep
from persistent.ridge_sweep import matmul

MIN_ROWS_PER_FOLD = 1  # present rows a target needs in every CV fold to be cross-validated


@dataclasses.dataclass
class RidgeRows:
  """Kept rows: the statistics of the dual path. Rows [0, size) of the buffers are filled."""
  x: np.ndarray  # (capacity, d) features
  y: np.ndarray  # (capacity, k) targets, NaN = missing
  fold_ids: np.ndarray  # (capacity,) int32
  size: int
  num_folds: int
  dtype: str = "float32"  # of the solve and fit

  @property
  def num_features(self) -> int:
    return self.x.shape[1]

  @property
  def num_targets(self) -> int:
    return self.y.shape[1]

  @property
  def count(self) -> np.ndarray:
    """(F,) rows per fold."""
    return np.bincount(self.fold_ids[:self.size], minlength=self.num_folds).astype(np.float64)


def init(d: int, k: int, num_folds: int, dtype: Any, n: int | None = None) -> RidgeRows:
  """Empty kept rows; `n`, when known, sizes the buffers once."""
  store = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32
  cap = int(n or 0)
  return RidgeRows(x=np.zeros((cap, d), store), y=np.zeros((cap, k), store),
                   fold_ids=np.zeros(cap, np.int32), size=0, num_folds=num_folds,
                   dtype=jnp.dtype(dtype).name)


def update(rows: RidgeRows, x: Any, y: Any, fold_ids: np.ndarray) -> RidgeRows:
  """Appends a validated batch (see ridge.update), growing the buffers when full."""
  b = x.shape[0]
  end = rows.size + b
  if end > rows.x.shape[0]:
    cap = max(end, 2 * rows.x.shape[0], 64)
    grow = lambda a: np.concatenate([a[:rows.size], np.zeros((cap - rows.size,) + a.shape[1:], a.dtype)])
    rows = dataclasses.replace(rows, x=grow(rows.x), y=grow(rows.y), fold_ids=grow(rows.fold_ids))
  rows.x[rows.size:end] = np.asarray(x)
  rows.y[rows.size:end] = np.asarray(y)
  rows.fold_ids[rows.size:end] = fold_ids
  return dataclasses.replace(rows, size=end)


def from_arrays(x: np.ndarray, y: np.ndarray, fold_ids: np.ndarray, num_folds: int, dtype: Any) -> RidgeRows:
  """Kept rows wrapping in-memory arrays (no copy when they have the storage dtype)."""
  store = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32
  return RidgeRows(x=np.asarray(x, store), y=np.asarray(y, store), fold_ids=np.asarray(fold_ids, np.int32),
                   size=x.shape[0], num_folds=num_folds, dtype=jnp.dtype(dtype).name)


# ----------------------------------------------------------------------------- kernels


@functools.partial(jax.jit, static_argnames="dtype")
def _shifted(x: jax.Array, mu: jax.Array, dtype: Any) -> jax.Array:
  return (x.astype(jnp.float64) - mu).astype(dtype)


@jax.jit
def _gram(xs: jax.Array) -> jax.Array:
  return matmul(xs, xs.T)


@jax.jit
def _centred_blocks(k: jax.Array, t: jax.Array, tmask: jax.Array, v: jax.Array, vmask: jax.Array):
  """Training kernel (t x t) and cross kernel (v x t) centred at the training rows' mean.

  t, v index rows of the Gram k (padding entries have mask 0 and come out as zero rows/columns).
  """
  nt = jnp.sum(tmask)
  ktt = k[t][:, t] * tmask[:, None] * tmask[None, :]
  kvt = k[v][:, t] * vmask[:, None] * tmask[None, :]
  a_t, a_v = ktt.sum(1) / nt, kvt.sum(1) / nt  # x_i . m_T for training and held-out rows
  b = a_t.sum() / nt  # m_T . m_T
  ktt = (ktt - a_t[:, None] - a_t[None, :] + b) * tmask[:, None] * tmask[None, :]
  kvt = (kvt - a_v[:, None] - a_t[None, :] + b) * vmask[:, None] * tmask[None, :]
  return ktt, kvt


@functools.partial(jax.jit, static_argnames="rank")
def _fold_context(k: jax.Array, t: jax.Array, tmask: jax.Array, v: jax.Array, vmask: jax.Array,
                  rank: int):
  ktt, kvt = _centred_blocks(k, t, tmask, v, vmask)
  s, u = ridge_sweep.eigenbasis(ktt, rank)
  return s, u, matmul(kvt, u)


@jax.jit
def _fold_block_errors(context, yt: jax.Array, yv: jax.Array, vmask: jax.Array, alphas: jax.Array):
  s, u, rows = context
  return ridge_sweep.residual_errors(s, matmul(u.T, yt), rows, yv, vmask, alphas)


@functools.partial(jax.jit, static_argnames="rank")
def _full_context(k: jax.Array, t: jax.Array, tmask: jax.Array, rank: int):
  ktt, _ = _centred_blocks(k, t, tmask, t[:1], tmask[:1])
  return ridge_sweep.eigenbasis(ktt, rank)


@jax.jit
def _dual_weights(xs: jax.Array, t: jax.Array, context, y: jax.Array, alpha: jax.Array):
  """Primal weights xs[t]^T coef of the rows t and the coefficients' sums (for the centring)."""
  s, u = context
  coef = ridge_sweep.scaled_solution(u, s, y, alpha)  # (t, c)
  full = jnp.zeros((xs.shape[0], coef.shape[1]), coef.dtype).at[t].set(coef)  # no copy of xs[t]
  return matmul(xs.T, full), coef.sum(0)


def _row_mean(x: np.ndarray, rows: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
  """Mean (float64) of some rows of x (all when None), in chunks: no float64 copy of x."""
  idx = np.arange(x.shape[0]) if rows is None else rows
  total = np.zeros(x.shape[1])
  for s in range(0, idx.size, chunk):
    total += x[idx[s:s + chunk]].sum(0, dtype=np.float64)
  return total / max(idx.size, 1)


def _pad(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  out = np.zeros(size, np.int32)
  out[:idx.size] = idx
  return out, (np.arange(size) < idx.size).astype(np.float32)


class Kernel:
  """The kept rows of the CV folds, shifted by their mean, and their Gram matrix, per dtype."""

  def __init__(self, rows: RidgeRows, folds: Sequence[int]):
    fid = rows.fold_ids[:rows.size]
    sel = np.isin(fid, folds)
    self.x = rows.x[:rows.size] if sel.all() else rows.x[:rows.size][sel]
    self.y = rows.y[:rows.size] if sel.all() else rows.y[:rows.size][sel]
    self.fold_ids = fid[sel]
    self.mu = _row_mean(self.x)
    self._cache: dict[Any, tuple[jax.Array, jax.Array]] = {}

  def shifted_and_gram(self, dtype: Any) -> tuple[jax.Array, jax.Array]:
    dtype = jnp.dtype(dtype)
    if dtype not in self._cache:
      with ridge_sweep.float64_context():
        chunks = [_shifted(self.x[s:s + 1024], jnp.asarray(self.mu), dtype)
                  for s in range(0, self.x.shape[0], 1024)]
        xs = jnp.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        self._cache[dtype] = (xs, _gram(xs))
    return self._cache[dtype]


class DualSolver:
  """CV errors and refits (a ridge_cv.Solver) of the targets `columns`, all present on the rows
  `present` (indices into the kernel's rows), through n x n kernels."""

  def __init__(self, kernel: Kernel, present: np.ndarray, columns: np.ndarray, folds: Sequence[int],
               target_block: int | None = None):
    self.kernel, self.present, self.columns = kernel, present, columns
    self.folds, self.target_block = list(folds), target_block
    self.total, self.num_targets = present.size, columns.size
    fid = kernel.fold_ids[present]
    self.split = {f: (present[fid != f], present[fid == f]) for f in self.folds}
    self.nt = max(t.size for t, _ in self.split.values())
    self.nv = max(v.size for _, v in self.split.values())

  def _targets(self, rows: np.ndarray, columns: np.ndarray | None) -> np.ndarray:
    cols = self.columns if columns is None else self.columns[columns]
    return self.kernel.y[rows][:, cols].astype(np.float64)

  def fold_errors(self, fold: int, alphas: np.ndarray, dtype: Any, columns: np.ndarray | None = None):
    dtype = jnp.dtype(dtype)
    t, v = self.split[fold]
    yt, yv = self._targets(t, columns), self._targets(v, columns)
    my = yt.mean(0)
    k = yt.shape[1]
    (tp, tmask), (vp, vmask) = _pad(t, self.nt), _pad(v, self.nv)
    yt_p, yv_p = np.zeros((self.nt, k)), np.zeros((self.nv, k))
    yt_p[:t.size], yv_p[:v.size] = yt - my, yv - my
    size = ridge_sweep.block_size(k, 4 * (self.nt + self.nv) * dtype.itemsize, self.target_block)
    sse, scale = np.empty((len(alphas), k)), np.empty((len(alphas), k))
    with ridge_sweep.float64_context():
      _, gram = self.kernel.shifted_and_gram(dtype)
      context = _fold_context(gram, jnp.asarray(tp), jnp.asarray(tmask, dtype), jnp.asarray(vp),
                              jnp.asarray(vmask, dtype), self.nt)
      a, vm = jnp.asarray(alphas, dtype), jnp.asarray(vmask, dtype)
      for s in ridge_sweep.block_starts(k, size):
        e, sc = _fold_block_errors(context, jnp.asarray(yt_p[:, s:s + size], dtype),
                                   jnp.asarray(yv_p[:, s:s + size], dtype), vm, a)
        sse[:, s:s + size], scale[:, s:s + size] = np.asarray(e), np.asarray(sc)
    return sse, scale

  def refit(self, alpha: np.ndarray, dtype: Any, columns: np.ndarray | None = None):
    dtype = jnp.dtype(dtype)
    p = self.present
    y = self._targets(p, columns)
    my = y.mean(0)
    mean_x = _row_mean(self.kernel.x, p)  # mean of the rows, original coordinates
    with ridge_sweep.float64_context():
      xs, gram = self.kernel.shifted_and_gram(dtype)
      pj, ones = jnp.asarray(p, jnp.int32), jnp.ones(p.size, dtype)
      context = _full_context(gram, pj, ones, p.size)
      w, total = _dual_weights(xs, pj, context, jnp.asarray(y - my, dtype), jnp.asarray(alpha, dtype))
      # X_c^T coef with X_c = xs[p] - (mean_x - mu): subtract the mean's share.
      w = np.asarray(w, np.float64) - np.outer(mean_x - self.kernel.mu, np.asarray(total, np.float64))
    return w.astype(dtype), (my - mean_x @ w).astype(dtype)

  def target_mean(self) -> np.ndarray:
    return self._targets(self.present, None).mean(0)


def parts(rows: RidgeRows, folds: Sequence[int], target_block: int | None = None
          ) -> tuple[list[ridge_cv.Part], np.ndarray]:
  """One solver per presence pattern of the targets over the rows of the CV folds, and every
  target's mean over its present rows there (0 if none: the fallback of targets in no part)."""
  kernel = Kernel(rows, folds)
  present = ~np.isnan(kernel.y)
  with np.errstate(invalid="ignore"):
    counts = present.sum(0)
    fallback = np.where(counts > 0, np.nansum(kernel.y, 0, dtype=np.float64) / np.maximum(counts, 1), 0.0)
  patterns, inverse = np.unique(present.T, axis=0, return_inverse=True)
  out = []
  for p, pattern in enumerate(patterns):
    rows_p = np.flatnonzero(pattern)
    per_fold = np.bincount(kernel.fold_ids[rows_p], minlength=rows.num_folds)[list(folds)]
    if per_fold.min() < MIN_ROWS_PER_FOLD:
      continue
    cols = np.flatnonzero(inverse.reshape(-1) == p)
    out.append(ridge_cv.Part(cols, DualSolver(kernel, rows_p, cols, folds, target_block)))
  return out, fallback


# ----------------------------------------------------------------------------- moments


def target_moments(rows: RidgeRows) -> tuple[np.ndarray, np.ndarray]:
  """Mean and variance (k,) of each target over its present values (NaN if none), float64."""
  y = rows.y[:rows.size].astype(np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a target with no present value: NaN
    mean = np.nanmean(y, 0)
    return mean, np.nanmean((y - mean) ** 2, 0)


def projection_moments(rows: RidgeRows, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (m,) and covariance (m, m) of X W over all kept rows, W (d, m), float64."""
  w = np.asarray(w, np.float64)
  xw = np.concatenate([rows.x[s:min(s + 1024, rows.size)].astype(np.float64) @ w
                       for s in range(0, rows.size, 1024)])
  mean = xw.mean(0)
  c = xw - mean
  return mean, c.T @ c / xw.shape[0]
