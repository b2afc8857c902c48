"""Ridge statistics and sweeps over many devices and hosts, with JAX's own sharding machinery.

A mesh has two axes: 'data' splits the rows of every batch (feature extraction and the
accumulation of the ridge sufficient statistics), 'model' splits the targets of the statistics
(X^T Y, sums of Y) so that 100,000 targets fit. The solve splits targets over *all* devices:

  * `Accumulator.update`: every device adds its rows of the global batch (and its target columns)
    into its own partial `ridge.RidgeStats` (shard_map, one compilation, no communication); all
    share one shift, the mean of the first global batch, as the one-device engine does.
  * `Accumulator.reduce`: psum of the partial statistics over 'data' -> replicated over 'data',
    sharded over 'model'.
  * `solve`: per fold the eigenbasis of the training Gram matrix is computed once (replicated,
    by `ridge._fold_basis`); the lambda sweep and the refit run in shard_map over target slices,
    each device looping over blocks of its slice with the engine's own block functions. Targets
    are padded with zero columns to a multiple of (devices x block) and trimmed afterwards.
    Held-out errors come back to the host per fold and are summed in float64, exactly as
    `ridge.solve` does, so chosen lambdas agree with one device up to float rounding.

Several hosts: `initialize(config)` calls `jax.distributed.initialize` from `config.distributed`;
every process then runs the same program, reads only its share of the data
(`shard_source`), extracts features on its local devices and feeds its rows with
`jax.make_array_from_process_local_data`. Every process must call `Accumulator.update` the same
number of times (pad with empty batches); `probe.fit` does this.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from persistent import data as data_lib
from persistent import ridge

DATA, MODEL = "data", "model"
# Leaves of RidgeStats whose last axis runs over targets.
_TARGET_LEAVES = ("shift_y", "sum_y", "xy", "yy")


# ----------------------------------------------------------------------------- setup


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Starts multi-host JAX from `config.distributed`; a no-op (False) for one process.

  Keys: coordinator_address ('host:port' of process 0; 'auto' lets JAX detect a SLURM, Open MPI
  or cloud TPU cluster), num_processes, process_id, local_device_ids ('0,1' or a list; empty: all).
  Must run before anything touches a JAX device; calling it again is a no-op.
  """
  dist = config.get("distributed") if config is not None else None
  if dist is None or not dist.get("coordinator_address"):
    return False
  if jax.distributed.is_initialized():
    return True
  if dist.coordinator_address == "auto":
    jax.distributed.initialize()
    return True
  if dist.num_processes < 1 or not 0 <= dist.process_id < dist.num_processes:
    raise ValueError(f"distributed.process_id must lie in [0, num_processes), got process_id="
                     f"{dist.process_id} for num_processes={dist.num_processes}")
  if dist.num_processes == 1:
    return False
  ids = dist.get("local_device_ids") or None
  if isinstance(ids, str):
    ids = [int(i) for i in ids.split(",") if i.strip()] or None
  jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                             num_processes=dist.num_processes, process_id=dist.process_id,
                             local_device_ids=ids)
  return True


def make_mesh(spec: Any = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh from spec {devices: count or -1 for all, model: 'model' axis size}.

  The default (None, or devices=-1, model=1) is every device of every process, all on 'data'.
  Devices are taken in `jax.devices()` order (grouped by process), 'model' innermost, so a
  'model' axis no larger than a host's device count stays within that host.
  """
  spec = dict(spec or {})
  unknown = set(spec) - {"devices", "model"}
  if unknown:
    raise ValueError(f"unknown mesh keys {sorted(unknown)}; keys: devices, model")
  pool = list(devices if devices is not None else jax.devices())
  count = int(spec.get("devices", -1))
  model = int(spec.get("model", 1))
  count = len(pool) if count == -1 else count
  if not 1 <= count <= len(pool):
    raise ValueError(f"mesh.devices={spec.get('devices')} but {len(pool)} devices are available "
                     "(-1 uses all)")
  if jax.process_count() > 1 and count != len(pool):
    raise ValueError("with several processes the mesh must use every device (mesh.devices=-1)")
  if model < 1 or count % model:
    raise ValueError(f"mesh.model={model} must divide the {count} devices used")
  return Mesh(np.array(pool[:count], dtype=object).reshape(count // model, model), (DATA, MODEL))


def mesh_from_config(config: ml_collections.ConfigDict) -> Mesh:
  spec = config.get("mesh")
  return make_mesh(spec.to_dict() if isinstance(spec, ml_collections.ConfigDict) else spec)


def is_single_device(mesh: Mesh) -> bool:
  return mesh.size == 1 and jax.process_count() == 1


def local_data_size(mesh: Mesh) -> int:
  """How many positions of the 'data' axis hold this process's devices."""
  mine = {d.id for d in jax.local_devices()}
  rows = [i for i in range(mesh.shape[DATA]) if any(d.id in mine for d in mesh.devices[i])]
  return len(rows)


def local_batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits a batch (B, ...) over this process's devices on the mesh: for feature extraction."""
  mine = {d.id for d in jax.local_devices()}
  local = [d for d in mesh.devices.flat if d.id in mine]
  return NamedSharding(Mesh(np.array(local, dtype=object), (DATA,)), P(DATA))


def shard_source(source: data_lib.Source, process_index: int, process_count: int
                 ) -> tuple[data_lib.Source, np.ndarray]:
  """This process's contiguous share of a source (sizes differ by at most one) and its indices.

  Shares are contiguous so that each host's images and its feature cache stay local.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  n = len(source)
  sizes = np.full(process_count, n // process_count)
  sizes[: n % process_count] += 1
  start = int(sizes[:process_index].sum())
  idx = np.arange(start, start + sizes[process_index])
  if process_count == 1:
    return source, idx
  return source.subset(idx), idx


def share_size(n: int, process_count: int) -> int:
  """The largest share of `shard_source`."""
  return -(-n // process_count)


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) global array as one numpy array on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ----------------------------------------------------------------------------- data parallel


def _partial_specs(stats_axis: Any) -> ridge.RidgeStats:
  """PartitionSpecs of statistics with a leading per-'data'-device axis (stats_axis=DATA), or
  of reduced statistics (stats_axis=None); targets always over 'model'."""
  lead = (stats_axis,) if stats_axis else ()
  return ridge.RidgeStats(shift_x=P(), shift_y=P(MODEL), count=P(*lead), sum_x=P(*lead),
                          sum_y=P(*lead, None, MODEL), xx=P(*lead), xy=P(*lead, None, None, MODEL),
                          yy=P(*lead, None, MODEL))


def _shardings(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, P))


def _round_up(a: int, b: int) -> int:
  return -(-a // b) * b


@functools.lru_cache(maxsize=None)
def _step_fn(mesh: Mesh, num_folds: int):
  specs = _partial_specs(DATA)

  def body(partial, x, y, fold, mask):
    s = partial.replace(**{f: getattr(partial, f)[0] for f in ("count", "sum_x", "sum_y", "xx", "xy", "yy")})
    for f in range(num_folds):  # only folds present on this device cost anything
      m = mask * (fold == f).astype(mask.dtype)
      s = jax.lax.cond(jnp.any(m > 0), lambda s, f=f, m=m: ridge._accumulate(s, f, x, y, m),
                       lambda s: s, s)
    return partial.replace(**{f: getattr(s, f)[None] for f in ("count", "sum_x", "sum_y", "xx", "xy", "yy")})

  step = jax.shard_map(body, mesh=mesh, in_specs=(specs, P(DATA), P(DATA, MODEL), P(DATA), P(DATA)),
                       out_specs=specs, check_vma=False)
  return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=None)
def _shift_fn(mesh: Mesh):
  def shift(x, y, mask):
    m = jnp.sum(mask)
    return mask @ x / m, mask @ y / m
  return jax.jit(shift, out_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(MODEL))))


def _zeros(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding) -> jax.Array:
  return _zeros_fn(shape, jnp.dtype(dtype), sharding)()


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape, dtype, sharding):
  return jax.jit(functools.partial(jnp.zeros, shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _reduce_fn(mesh: Mesh):
  def body(partial):
    out = {f: jax.lax.psum(getattr(partial, f)[0], DATA) for f in ("count", "sum_x", "sum_y", "xx", "xy", "yy")}
    return partial.replace(**out)
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(_partial_specs(DATA),),
                               out_specs=_partial_specs(None), check_vma=False))


class Accumulator:
  """Data-parallel (and target-sharded) accumulation of `ridge.RidgeStats` over a mesh.

  acc = Accumulator(mesh, d, k, num_folds, dtype)
  for x, y, folds in batches: acc.update(x, y, folds)   # this process's rows, any size
  fit = acc.solve(alphas=...)                              # or stats = acc.reduce()

  Targets are padded with zero columns to a multiple of the mesh size (`self.padded_k`).
  """

  def __init__(self, mesh: Mesh, d: int, k: int, num_folds: int = 4, dtype: Any = jnp.float32):
    self.mesh, self.d, self.k, self.num_folds = mesh, d, k, num_folds
    self.dtype = ridge._check_dtype(dtype)
    self.padded_k = _round_up(k, mesh.size)
    self.local_rows = local_data_size(mesh)
    self._empty = True
    shape = jax.eval_shape(functools.partial(ridge.init, d, self.padded_k, num_folds, self.dtype))
    data = mesh.shape[DATA]
    shardings = _shardings(mesh, _partial_specs(DATA))

    def zeros(name, leaf, sharding):  # created in place on each device, never on the host
      lead = () if name.startswith("shift") else (data,)
      return _zeros(lead + leaf.shape, leaf.dtype, sharding)
    self._partial = ridge.RidgeStats(**{f: zeros(f, getattr(shape, f), getattr(shardings, f))
                                        for f in ridge.RidgeStats.__dataclass_fields__})

  def _global(self, local: np.ndarray, spec: P) -> jax.Array:
    rows = local.shape[0] * jax.process_count()
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), local,
                                                  (rows, *local.shape[1:]))

  def update(self, x: Any, y: Any, fold_ids: Any) -> None:
    """Adds this process's rows: x (b, d), y (b, k) or (b,), fold ids (b,); b may be 0.

    Every process must call update equally often, with equal b (pad with empty batches at the
    end): rows are padded to a multiple of the local 'data' devices and masked.
    """
    x, y, fold_ids = np.asarray(x), np.asarray(y), np.asarray(fold_ids)
    if y.ndim == 1:
      y = y[:, None]
    b = x.shape[0]
    if x.shape != (b, self.d) or y.shape != (b, self.k) or fold_ids.shape != (b,):
      raise ValueError(f"batch shapes x {x.shape}, y {y.shape}, fold_ids {fold_ids.shape} do not "
                       f"match statistics for d={self.d} features and k={self.k} targets")
    if b and (fold_ids.min() < 0 or fold_ids.max() >= self.num_folds):
      raise ValueError(f"fold ids must lie in [0, {self.num_folds}), got {fold_ids.min()}..{fold_ids.max()}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
      raise ValueError("ridge inputs contain NaN or infinite values")
    rows = _round_up(max(b, 1), self.local_rows)
    xp = np.zeros((rows, self.d), self.dtype)
    yp = np.zeros((rows, self.padded_k), self.dtype)
    xp[:b], yp[:b, :self.k] = x, y
    folds = np.zeros(rows, np.int32)
    folds[:b] = fold_ids
    mask = (np.arange(rows) < b).astype(self.dtype)
    gx, gy = self._global(xp, P(DATA, None)), self._global(yp, P(DATA, MODEL))
    gf, gm = self._global(folds, P(DATA)), self._global(mask, P(DATA))
    if self._empty:  # the shift: mean of the first global batch, as ridge.update takes it
      if not float(to_host(jnp.sum(gm))):
        return
      sx, sy = _shift_fn(self.mesh)(gx, gy, gm)
      self._partial = self._partial.replace(shift_x=sx, shift_y=sy)
      self._empty = False
    self._partial = _step_fn(self.mesh, self.num_folds)(self._partial, gx, gy, gf, gm)

  def reduce(self) -> ridge.RidgeStats:
    """Summed statistics (k padded to `padded_k`), replicated over 'data', targets over 'model'."""
    return _reduce_fn(self.mesh)(self._partial)

  def solve(self, **kwargs) -> ridge.RidgeFit:
    """`solve(self.reduce(), mesh, ...)` trimmed to the true k; kwargs as `ridge.solve`."""
    return solve(self.reduce(), self.mesh, num_targets=self.k, **kwargs)


# ----------------------------------------------------------------------------- target parallel


@functools.lru_cache(maxsize=None)
def _sweep_fn(mesh: Mesh, size: int):
  axes = mesh.axis_names
  stats_spec = ridge.RidgeStats(shift_x=P(), shift_y=P(axes), count=P(), sum_x=P(), sum_y=P(None, axes),
                                xx=P(), xy=P(None, None, axes), yy=P(None, axes))

  def errors(stats, fold, basis, alphas):
    starts = jnp.arange(0, stats.xy.shape[-1], size, dtype=jnp.int32)
    out = jax.lax.map(lambda s: ridge._fold_block_errors(stats, fold, basis, alphas, s, size), starts)
    return jnp.moveaxis(out, 0, 1).reshape(alphas.shape[0], -1)  # (L, local targets)

  def refit(stats, basis, alpha):
    starts = jnp.arange(0, stats.xy.shape[-1], size, dtype=jnp.int32)
    w, b = jax.lax.map(lambda s: ridge._refit_block(stats, basis, alpha, s, size), starts)
    return jnp.moveaxis(w, 0, 1).reshape(w.shape[1], -1), b.reshape(-1)

  fold_basis = (P(), P(), P(axes), P(), P(), P())  # n, mx, my, e, v, a
  full_basis = fold_basis[:5]
  sweep = jax.jit(jax.shard_map(errors, mesh=mesh, in_specs=(stats_spec, P(), fold_basis, P()),
                                out_specs=P(None, axes), check_vma=False))
  refit = jax.jit(jax.shard_map(refit, mesh=mesh, in_specs=(stats_spec, full_basis, P(axes)),
                                out_specs=(P(None, axes), P(axes)), check_vma=False))
  return stats_spec, sweep, refit


def _layout(k: int, devices: int, size_max: int) -> tuple[int, int]:
  """Block size and padded target count: devices x blocks x size >= k, blocks of equal size."""
  local = -(-k // devices)
  blocks = -(-local // max(1, size_max))
  size = -(-local // blocks)
  return size, devices * blocks * size


def solve(stats: ridge.RidgeStats, mesh: Mesh, *, alphas: Sequence[float], per_target: bool = True,
          target_block: int | None = None, num_targets: int | None = None) -> ridge.RidgeFit:
  """`ridge.solve` with the lambda sweep and refit split over all devices of `mesh` by targets.

  `stats` may be any RidgeStats (one device's, or `Accumulator.reduce()`'s); with `num_targets`,
  only its first num_targets target columns are real (the rest padding) and the fit is trimmed.
  """
  grid = ridge._check_alphas(alphas)
  counts = to_host(stats.count)
  if np.any(counts <= 0):
    raise ValueError(f"every fold needs samples; samples per fold: {counts.astype(int).tolist()}")
  d, k_in = stats.xx.shape[1], stats.xy.shape[2]
  k = k_in if num_targets is None else num_targets
  dtype = stats.xx.dtype
  size_max = target_block or max(1, ridge._BLOCK_BYTES // (len(grid) * d * dtype.itemsize))
  size, kp = _layout(k, mesh.size, min(size_max, -(-k // mesh.size)))
  stats_spec, sweep, refit = _sweep_fn(mesh, size)
  shardings = _shardings(mesh, stats_spec)

  def fit_k(name, leaf):  # pad (or trim padding) the target axis to kp, laid out over all devices
    if name not in _TARGET_LEAVES:
      return leaf
    widths = [(0, 0)] * (leaf.ndim - 1) + [(0, max(0, kp - leaf.shape[-1]))]
    return jnp.pad(leaf, widths)[..., :kp]
  stats = jax.jit(lambda s: s.replace(**{f: fit_k(f, getattr(s, f)) for f in _TARGET_LEAVES}),
                  out_shardings=shardings)(stats)

  alphas_j = jnp.asarray(grid, dtype)
  sse = np.zeros((len(grid), k), np.float64)
  total = int(counts.sum())
  fold_rank = min(d, total - int(counts.min()))
  for fold in range(stats.num_folds):
    f = jnp.int32(fold)
    basis = ridge._fold_basis(stats, f, fold_rank)
    sse += to_host(sweep(stats, f, basis, alphas_j))[:, :k]
  cv_mse = sse / total
  choice = np.argmin(cv_mse, axis=0) if per_target else np.full(k, np.argmin(cv_mse.sum(1)))
  alpha = grid[choice]
  alpha_p = np.zeros(kp, dtype)
  alpha_p[:k] = alpha
  alpha_p[k:] = grid[0]  # padding targets are all zero: any lambda gives w = 0
  basis = ridge._full_basis(stats, min(d, total))
  w, b = refit(stats, basis, jax.device_put(alpha_p, NamedSharding(mesh, P(mesh.axis_names))))
  w, b = to_host(w)[:, :k], to_host(b)[:k]
  return ridge.RidgeFit(weights=jnp.asarray(w), bias=jnp.asarray(b), alpha=jnp.asarray(alpha, dtype),
                        cv_mse=jnp.asarray(cv_mse, dtype), alphas=alphas_j,
                        target_mean=jnp.asarray(to_host(basis[2] + stats.shift_y)[:k]))


def fit(X: Any, Y: Any, mesh: Mesh, *, alphas: Sequence[float], num_folds: int = 4,
        per_target: bool = True, fold_ids: Any = None, dtype: Any = jnp.float32,
        batch_size: int = 4096, target_block: int | None = None) -> ridge.RidgeFit:
  """`ridge.fit` over a mesh: X (n, d), Y (n, k) in memory on one process."""
  X, Y = np.asarray(X), np.asarray(Y)
  if Y.ndim == 1:
    Y = Y[:, None]
  if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
    raise ValueError(f"X must be (n, d) and Y (n, k) with the same n; got {X.shape} and {Y.shape}")
  n = X.shape[0]
  fold_ids = ridge.kfold_ids(n, num_folds) if fold_ids is None else np.asarray(fold_ids)
  acc = Accumulator(mesh, X.shape[1], Y.shape[1], num_folds, dtype)
  for s in range(0, n, batch_size):
    acc.update(X[s:s + batch_size], Y[s:s + batch_size], fold_ids[s:s + batch_size])
  return acc.solve(alphas=alphas, per_target=per_target, target_block=target_block)
