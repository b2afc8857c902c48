"""Lambda selection by K-fold CV, shared by both ridge paths: the fitted model and the driver.

A path (ridge_primal: per-fold d x d statistics; ridge_dual: kept rows, n x n kernels) supplies a
`Solver` per set of targets that share their rows: held-out errors per fold for a lambda grid, and
refits for chosen lambdas. `cross_validate` does everything else the same way for both:

  * float32 sweeps, and a float64 recomputation (CV and refit) of exactly those targets whose
    float32 held-out errors could be off by more than FLOAT32_TOLERANCE relative (the kernels
    return a rounding scale per error: targets fitted almost perfectly, where the error is tiny
    against the quantities it is computed from);
  * per-target or shared lambdas, and which targets chose a lambda at an end of the grid
    (`RidgeFit.edge`), optionally widening the grid by decades until none does (`extend_grid`);
  * targets with too few rows to cross-validate (missing values on the dual path): fitted as their
    mean, reported in `RidgeFit.fitted`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# Float32 held-out errors are trusted where their estimated relative rounding error (kernels'
# scale times eps; it bounded the actual error with a factor >= 1.7 to spare against float64 brute
# force, tests/test_ridge.py) is below FLOAT32_TOLERANCE near the best lambda, which keeps chosen
# lambdas exact wherever the best beats the runner-up by 1e-4 relative, and below a third of a
# lambda's distance from the best elsewhere (at most CV_TOLERANCE, for cv_mse to 1e-3). Other
# targets are recomputed in float64.
FLOAT32_TOLERANCE = 4e-5
CV_TOLERANCE = 5e-4
MAX_EXTRA_DECADES = 6  # extend_grid widens the grid by at most this many decades each way
PATHS = ("primal", "dual")


class RidgeFit(flax.struct.PyTreeNode):
  """A fitted multi-target ridge model. cv_mse[i, j]: CV error of target j at alphas[i].

  Targets that could not be cross-validated (`fitted` False: too few present rows on the dual
  path) predict their mean: weights 0, bias = mean of their present values (0 if none), alpha and
  cv_mse NaN, edge 0.
  """
  weights: jax.Array  # (d, k)
  bias: jax.Array  # (k,)
  alpha: jax.Array  # (k,) chosen lambda per target
  cv_mse: jax.Array  # (len(alphas), k): held-out squared error summed over folds, / n
  alphas: jax.Array  # (len(alphas),) the grid (widened when solved with extend_grid)
  target_mean: jax.Array  # (k,) training mean of each target: the infinite-lambda prediction
  fitted: jax.Array  # (k,) bool: False where too few rows were present to cross-validate
  edge: jax.Array  # (k,) int8: -1 / +1 where the chosen lambda is the grid's lowest / highest
  float64: jax.Array  # (k,) bool: targets cross-validated and refitted in float64
  dual: jax.Array  # () bool: solved through n x n kernels (dual) or d x d statistics (primal)

  @property
  def path(self) -> str:
    """'dual' or 'primal': which path produced the fit."""
    return PATHS[int(np.asarray(self.dual))]


class Solver(Protocol):
  """What a path supplies for one set of targets that share their rows (see module doc)."""
  folds: list[int]  # the CV folds
  total: int  # rows used over those folds
  num_targets: int

  def fold_errors(self, fold: int, alphas: np.ndarray, dtype: Any, columns: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Held-out SSE (L, c) of fold `fold` and its rounding scale, for columns (None: all)."""

  def refit(self, alpha: np.ndarray, dtype: Any, columns: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Weights (d, c) and biases (c,) on all rows of the CV folds, lambda per column."""

  def target_mean(self) -> np.ndarray:
    """(num_targets,) mean of each target over the rows used."""


@dataclasses.dataclass
class Part:
  """A solver and the columns of the full target matrix that it fits."""
  columns: np.ndarray
  solver: Solver


# ----------------------------------------------------------------------------- input checks


def check_dtype(dtype: Any) -> Any:
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("float64 ridge needs 64-bit JAX: set JAX_ENABLE_X64=1 or "
                     "jax.config.update('jax_enable_x64', True) before creating arrays")
  if dtype not in (jnp.float32, jnp.float64):
    raise ValueError(f"ridge dtype must be float32 or float64, got {dtype}")
  return dtype


def check_alphas(alphas: Sequence[float]) -> np.ndarray:
  a = np.asarray(alphas, dtype=np.float64).reshape(-1)
  if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
    raise ValueError(f"alphas must be a non-empty list of positive finite numbers, got {alphas!r}")
  return a


def check_path(path: str) -> str:
  if path not in ("auto",) + PATHS:
    raise ValueError(f"ridge path must be 'auto', 'primal' or 'dual', got {path!r}")
  return path


def kfold_ids(n: int, num_folds: int) -> np.ndarray:
  """Contiguous fold ids as scikit-learn's KFold(num_folds) without shuffling."""
  if num_folds < 2 or n < num_folds:
    raise ValueError(f"need num_folds >= 2 and at least num_folds samples; got {num_folds} folds, n={n}")
  sizes = np.full(num_folds, n // num_folds)
  sizes[: n % num_folds] += 1
  return np.repeat(np.arange(num_folds), sizes)


def check_batch(x: Any, y: Any, fold_ids: Any, d: int, k: int, num_folds: int, *,
                missing_ok: bool) -> tuple[Any, Any, np.ndarray]:
  """Validated batch: x (b, d), y (b, k) (a vector y is one target), fold ids (b,) in range.

  x must be finite; y too unless `missing_ok`, where NaN marks a missing value (never inf).
  Numpy or JAX arrays pass through without a host copy.
  """
  x = x if isinstance(x, jax.Array) else np.asarray(x)
  y = y if isinstance(y, jax.Array) else np.asarray(y)
  if y.ndim == 1:
    y = y[:, None]
  fold_ids = np.asarray(fold_ids)
  if x.ndim != 2 or x.shape[1] != d or y.shape != (x.shape[0], k) or fold_ids.shape != (x.shape[0],):
    raise ValueError(f"batch shapes x {x.shape}, y {y.shape}, fold_ids {fold_ids.shape} do not "
                     f"match statistics for d={d} features and k={k} targets")
  if fold_ids.size and (fold_ids.min() < 0 or fold_ids.max() >= num_folds):
    raise ValueError(f"fold ids must lie in [0, {num_folds}), got {fold_ids.min()}..{fold_ids.max()}")
  xp = jnp if isinstance(x, jax.Array) else np
  yp = jnp if isinstance(y, jax.Array) else np
  if not bool(xp.isfinite(x).all()):
    raise ValueError("ridge inputs contain NaN or infinite values")
  if missing_ok:
    if bool(yp.isinf(y).any()):
      raise ValueError("ridge targets contain infinite values (NaN marks a missing value)")
  elif not bool(yp.isfinite(y).all()):
    msg = "ridge inputs contain NaN or infinite values"
    if bool(yp.isnan(y).any()) and bool((~yp.isinf(y)).all()):
      msg += ("; NaN targets (missing values) need the dual path: ridge.init(..., path='dual') "
              "or ridge.fit(..., path='dual')")
    raise ValueError(msg)
  return x, y, fold_ids


def check_folds(folds: Sequence[int] | None, counts: np.ndarray) -> list[int]:
  """The CV folds (default: all) that hold rows, sorted; each requested fold distinct and in range.

  A fold without rows contributes nothing to training or to held-out error, so leaving it out
  changes no number. Fewer than two folds with rows cannot cross-validate: the caller then
  gives every target its mean (`unfitted`).
  """
  num_folds = counts.shape[0]
  folds = list(range(num_folds)) if folds is None else [int(f) for f in folds]
  if len(set(folds)) != len(folds) or any(not 0 <= f < num_folds for f in folds):
    raise ValueError(f"folds must be distinct fold indices in [0, {num_folds}), got {folds}")
  if len(folds) < 2:
    raise ValueError(f"cross-validation needs at least 2 folds, got folds={folds}")
  return sorted(f for f in folds if counts[f] > 0)


def unfitted(k: int, d: int, alphas: Sequence[float], mean: np.ndarray, dtype: Any, dual: bool) -> RidgeFit:
  """The fit of targets that cannot be cross-validated (fewer than two folds hold rows):
  every target predicts `mean` (see RidgeFit)."""
  return cross_validate([], k, d, alphas, per_target=True, extend_grid=False, dtype=dtype, dual=dual,
                        fallback_mean=np.nan_to_num(np.asarray(mean, np.float64)))


# ----------------------------------------------------------------------------- the driver


def _evaluate(parts: list[Part], k: int, alphas: np.ndarray, dtype: Any
              ) -> tuple[np.ndarray, np.ndarray]:
  """CV errors (L, k) (NaN outside the parts) and the targets recomputed in float64."""
  cv = np.full((len(alphas), k), np.nan)
  exact = np.zeros(k, bool)
  for part in parts:
    s = part.solver
    sse = np.zeros((len(alphas), s.num_targets))
    scale = np.zeros_like(sse)
    for fold in s.folds:
      e, sc = s.fold_errors(fold, alphas, dtype, None)
      sse += e
      scale += sc
    if jnp.dtype(dtype) == jnp.float32:
      cols = np.flatnonzero(_untrusted(sse, scale))
      if cols.size:
        sse[:, cols] = sum(s.fold_errors(fold, alphas, np.float64, cols)[0] for fold in s.folds)
        exact[part.columns[cols]] = True
    cv[:, part.columns] = np.maximum(sse, 0) / s.total
  return cv, exact


def _untrusted(sse: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """Targets (k,) whose float32 errors are not accurate enough (see FLOAT32_TOLERANCE)."""
  sse = np.maximum(sse, 0)
  best = sse.min(0)
  with np.errstate(divide="ignore", invalid="ignore"):
    gap = np.where(best > 0, (sse - best) / best, np.inf)
  need = np.clip(gap / 3, FLOAT32_TOLERANCE, CV_TOLERANCE)
  return np.any(np.finfo(np.float32).eps * scale > need * sse, 0)


def _choose(cv: np.ndarray, per_target: bool) -> np.ndarray:
  """Index of the chosen lambda per target (0 for targets without CV errors)."""
  fitted = ~np.isnan(cv[0])
  if per_target:
    return np.argmin(np.where(fitted, cv, np.inf), axis=0) * fitted
  total = np.nansum(cv[:, fitted], axis=1) if fitted.any() else np.zeros(cv.shape[0])
  return np.full(cv.shape[1], int(np.argmin(total)))


def _edges(cv: np.ndarray, choice: np.ndarray, per_target: bool) -> np.ndarray:
  """-1 / +1 where the chosen lambda is the lowest / highest and strictly better than its
  neighbour (a flat curve, e.g. a constant target, is at no edge); 0 elsewhere."""
  edge = np.zeros(cv.shape[1], np.int8)
  if cv.shape[0] < 2:
    return edge
  fitted = ~np.isnan(cv[0])
  curve = cv if per_target else np.broadcast_to(np.nansum(cv[:, fitted], 1)[:, None], cv.shape)
  low = (choice == 0) & (curve[0] < curve[1] * (1 - 1e-6))
  high = (choice == cv.shape[0] - 1) & (curve[-1] < curve[-2] * (1 - 1e-6))
  edge[low & fitted], edge[high & fitted] = -1, 1
  return edge


def _decade_points(grid: np.ndarray) -> int:
  """Points per decade of a log-uniform grid (1 for other grids)."""
  if grid.size < 2 or grid.max() == grid.min():
    return 1
  steps = np.diff(np.log10(grid))
  if np.allclose(steps, steps[0], rtol=1e-3):
    return max(1, int(round(1 / steps[0])))
  return 1


def _extend(parts: list[Part], k: int, grid: np.ndarray, cv: np.ndarray, exact: np.ndarray,
            per_target: bool, dtype: Any):
  """Widens the sorted grid by decades on each side where a target sits at the edge, one decade
  at a time, until none does or MAX_EXTRA_DECADES were added (the new lambdas of a side are
  cross-validated once, all together); returns the grid, its CV errors and the float64 mask."""
  p = _decade_points(grid)
  steps = np.arange(1, MAX_EXTRA_DECADES * p + 1) / p
  edge = _edges(cv, _choose(cv, per_target), per_target)
  sides = {}  # side -> (lambdas nearest first, their CV errors, float64 mask)
  for side, end in ((-1, grid[0]), (1, grid[-1])):
    if np.any(edge == side):
      new = end * 10.0 ** (side * steps)
      sides[side] = (new,) + _evaluate(parts, k, new, dtype)
  extra = dict.fromkeys(sides, 0)
  while True:
    lo = sides[-1] if extra.get(-1) else None
    hi = sides[1] if extra.get(1) else None
    g = np.concatenate(([lo[0][:extra[-1] * p][::-1]] if lo else []) + [grid] +
                       ([hi[0][:extra[1] * p]] if hi else []))
    c = np.concatenate(([lo[1][:extra[-1] * p][::-1]] if lo else []) + [cv] +
                       ([hi[1][:extra[1] * p]] if hi else []))
    edge = _edges(c, _choose(c, per_target), per_target)
    grow = [s for s in sides if np.any(edge == s) and extra[s] < MAX_EXTRA_DECADES]
    if not grow:
      break
    for s in grow:
      extra[s] += 1
  for s in sides:
    if extra[s]:
      exact = exact | sides[s][2]
  return g, c, exact


def cross_validate(parts: list[Part], k: int, d: int, alphas: Sequence[float], *,
                   per_target: bool, extend_grid: bool, dtype: Any, dual: bool,
                   fallback_mean: np.ndarray | None = None) -> RidgeFit:
  """Chooses lambda for every target of every part and refits (see module doc).

  Targets in no part get the fallback: weights 0, bias and target_mean `fallback_mean` (zeros if
  None), alpha and cv_mse NaN, fitted False.
  """
  grid = check_alphas(alphas)
  dtype = jnp.dtype(dtype)
  if extend_grid:
    grid = np.sort(grid)
  cv, exact = _evaluate(parts, k, grid, dtype)
  if extend_grid:
    grid, cv, exact = _extend(parts, k, grid, cv, exact, per_target, dtype)
  choice = _choose(cv, per_target)
  fitted = ~np.isnan(cv[0])
  alpha = np.where(fitted, grid[choice], np.nan)
  weights = np.zeros((d, k), dtype)
  mean = np.zeros(k) if fallback_mean is None else np.asarray(fallback_mean, np.float64).copy()
  bias = mean.copy()
  for part in parts:
    s, cols = part.solver, part.columns
    mean[cols] = s.target_mean()
    for sel, dt in ((~exact[cols], dtype), (exact[cols], jnp.dtype(np.float64))):
      sub = np.flatnonzero(sel)
      if sub.size:
        w, b = s.refit(alpha[cols[sub]], dt, None if sub.size == cols.size else sub)
        weights[:, cols[sub]], bias[cols[sub]] = w, b
  return RidgeFit(weights=jnp.asarray(weights), bias=jnp.asarray(bias, dtype),
                  alpha=jnp.asarray(alpha, dtype), cv_mse=jnp.asarray(cv, dtype),
                  alphas=jnp.asarray(grid, dtype), target_mean=jnp.asarray(mean, dtype),
                  fitted=jnp.asarray(fitted), edge=jnp.asarray(_edges(cv, choice, per_target)),
                  float64=jnp.asarray(exact & fitted), dual=jnp.asarray(dual))


def alpha_at_edge(fit: RidgeFit) -> dict[str, Any]:
  """How many fitted targets chose a lambda at an end of the grid: for logs and metrics.json."""
  edge, fitted = np.asarray(fit.edge), np.asarray(fit.fitted)
  count = int(np.count_nonzero(edge))
  return {"count": count, "fraction": count / max(1, int(fitted.sum())),
          "low": int(np.sum(edge == -1)), "high": int(np.sum(edge == 1))}
