"""Ridge statistics and solves over many devices and hosts, with JAX's own sharding machinery.

A mesh has two axes: 'data' splits the rows of every batch (feature extraction and the
accumulation of the ridge statistics), 'model' splits the targets of the statistics (X^T Y, sums
of Y) so that 100,000 targets fit. `Accumulator` is the one streaming interface for every mesh,
every number of processes and both ridge paths; on one device of one process it is exactly
ridge.init / update / solve.

Primal path (per-fold d x d statistics):
  * `Accumulator.update`: every device adds its rows of the global batch (and its target columns)
    into its own partial `ridge.RidgeStats` (shard_map, one compilation, no communication); all
    share one shift, the mean of the first global batch, as the one-device engine does.
  * reduction: psum of the partial statistics over 'data' -> replicated over 'data', sharded
    over 'model'.
  * `solve`: the CV driver of ridge_cv with `ShardedSolver`: per fold the eigenbasis of the
    training Gram matrix is computed once (replicated, `ridge_primal.fold_context`); the lambda
    sweep and the refit run in shard_map over target slices, each device looping over blocks of
    its slice with the engine's own block functions (`ridge_primal.block_errors`, `refit_block`).
    Targets are padded with zero columns to a multiple of (devices x block) and trimmed.
    Held-out errors come back to the host per fold and are summed in float64, as one device
    does; the few targets recomputed in float64 are solved on gathered columns.

Dual path (kept rows): each process keeps its own rows; the solve gathers them to every process
(`gather_rows`, process order) and solves there with `ridge.solve`.

Several hosts: `initialize(config)` calls `jax.distributed.initialize` from `config.distributed`;
every process then runs the same program, reads only its share of the data (`shard_source`),
extracts features on its local devices and feeds its rows with
`jax.make_array_from_process_local_data`. Every process must call `Accumulator.update` the same
number of times (with any number of rows, 0 included), and `solve` / `reduce` together.
"""
from __future__ import annotations

import functools
import pickle
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from persistent import data as data_lib
from persistent import ridge, ridge_cv, ridge_dual, ridge_primal, ridge_sweep

DATA, MODEL = "data", "model"
_FOLD_LEAVES = ("count", "sum_x", "sum_y", "xx", "xy", "yy")  # summed over 'data'


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
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's `obj` (any picklable value), in process order, on every process.

  A collective: every process must call it, equally often.
  """
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
  buf = np.zeros(int(sizes.max()), np.uint8)
  buf[:data.size] = data
  everything = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
  return [pickle.loads(everything[i, :sizes[i]].tobytes()) for i in range(len(sizes))]


def gather_rows(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  """Row-wise concatenation over processes (process order) of this process's arrays, which may
  have different numbers of rows on each process; returned on every process. A collective."""
  if jax.process_count() == 1:
    return tuple(np.asarray(a) for a in arrays)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(arrays[0].shape[0]))).reshape(-1)
  out = []
  for a in arrays:
    a = np.asarray(a)
    buf = np.zeros((int(sizes.max()),) + a.shape[1:], a.dtype)
    buf[:a.shape[0]] = a
    every = np.asarray(multihost_utils.process_allgather(buf))
    out.append(np.concatenate([every[i, :sizes[i]] for i in range(len(sizes))]))
  return tuple(out)


# ----------------------------------------------------------------------------- data parallel


def _stats_specs(lead: Any, targets: Any, dtype: str) -> ridge.RidgeStats:
  """PartitionSpecs of statistics: fold leaves with a leading axis `lead` (DATA for per-device
  partial statistics, None for reduced ones), target axes over `targets`."""
  pre = (lead,) if lead else ()
  return ridge.RidgeStats(shift_x=P(), shift_y=P(targets), count=P(*pre), sum_x=P(*pre),
                          sum_y=P(*pre, None, targets), xx=P(*pre), xy=P(*pre, None, None, targets),
                          yy=P(*pre, None, targets), dtype=dtype)


def _shardings(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def _round_up(a: int, b: int) -> int:
  return -(-a // b) * b


@functools.lru_cache(maxsize=None)
def _step_fn(mesh: Mesh, num_folds: int, dtype: str):
  specs = _stats_specs(DATA, MODEL, dtype)

  def body(partial, x, y, fold, mask):
    s = partial.replace(**{f: getattr(partial, f)[0] for f in _FOLD_LEAVES})
    for f in range(num_folds):  # only folds present on this device cost anything
      m = mask * (fold == f).astype(mask.dtype)
      s = jax.lax.cond(jnp.any(m > 0), lambda s, f=f, m=m: ridge_primal.accumulate(s, f, x, y, m),
                       lambda s: s, s)
    return partial.replace(**{f: getattr(s, f)[None] for f in _FOLD_LEAVES})

  step = jax.shard_map(body, mesh=mesh, in_specs=(specs, P(DATA), P(DATA, MODEL), P(DATA), P(DATA)),
                       out_specs=specs, check_vma=False)
  return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=None)
def _shift_fn(mesh: Mesh):
  def shift(x, y, mask):
    m = jnp.sum(mask.astype(jnp.float64))
    return mask.astype(jnp.float64) @ x.astype(jnp.float64) / m, mask.astype(jnp.float64) @ y.astype(jnp.float64) / m
  return jax.jit(shift, out_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(MODEL))))


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape, sharding):
  return jax.jit(functools.partial(jnp.zeros, shape, jnp.float64), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _reduce_fn(mesh: Mesh, dtype: str, k: int | None):
  """psum over 'data'; with k, trimmed to k targets and replicated (for moments)."""
  def body(partial):
    return partial.replace(**{f: jax.lax.psum(getattr(partial, f)[0], DATA) for f in _FOLD_LEAVES})
  reduce = jax.shard_map(body, mesh=mesh, in_specs=(_stats_specs(DATA, MODEL, dtype),),
                         out_specs=_stats_specs(None, MODEL, dtype), check_vma=False)
  if k is None:
    return jax.jit(reduce)
  trim = lambda s: s.replace(**{f: getattr(s, f)[..., :k] for f in ridge_primal.TARGET_LEAVES})
  return jax.jit(lambda p: trim(reduce(p)), out_shardings=NamedSharding(mesh, P()))


class Accumulator:
  """Streaming ridge statistics over a mesh, for either path.

  acc = Accumulator(mesh, d, k, num_folds, dtype, n=n, path='auto')
  for x, y, folds in batches: acc.update(x, y, folds)   # this process's rows, any number
  fit = acc.solve(alphas=...)                              # or stats = acc.reduce()

  `path` as `ridge.init` ('auto': dual when n, the total number of rows, is given and smaller
  than d). On one device of one process everything is delegated to ridge.init / update / solve.
  """

  def __init__(self, mesh: Mesh, d: int, k: int, num_folds: int = 4, dtype: Any = jnp.float32, *,
               n: int | None = None, path: str = "auto"):
    self.mesh, self.d, self.k, self.num_folds = mesh, d, k, num_folds
    self.dtype = ridge_cv.check_dtype(dtype)
    self.path = ridge.choose_path(path, d, n)
    self.padded_k = _round_up(k, mesh.size)
    self.local_rows = local_data_size(mesh)
    self._empty = True
    self._single = is_single_device(mesh)
    if self._single or self.path == "dual":
      local_n = n if jax.process_count() == 1 else None
      self._stats = ridge.init(d, k, num_folds, self.dtype, n=local_n, path=self.path)
      return
    data = mesh.shape[DATA]
    shardings = _shardings(mesh, _stats_specs(DATA, MODEL, self.dtype.name))
    shapes = dict(shift_x=(d,), shift_y=(self.padded_k,), count=(data, num_folds),
                  sum_x=(data, num_folds, d), sum_y=(data, num_folds, self.padded_k),
                  xx=(data, num_folds, d, d), xy=(data, num_folds, d, self.padded_k),
                  yy=(data, num_folds, self.padded_k))
    with ridge_sweep.float64_context():  # created in place on each device, never on the host
      self._partial = ridge.RidgeStats(**{f: _zeros_fn(shape, getattr(shardings, f))()
                                          for f, shape in shapes.items()}, dtype=self.dtype.name)

  def _global(self, local: np.ndarray, spec: P) -> jax.Array:
    rows = local.shape[0] * jax.process_count()
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), local,
                                                  (rows, *local.shape[1:]))

  def update(self, x: Any, y: Any, fold_ids: Any) -> None:
    """Adds this process's rows: x (b, d), y (b, k) or (b,), fold ids (b,); b may be 0 and may
    differ between processes. NaN in y marks a missing value on the dual path.

    Every process must call update equally often (a collective on the sharded primal path).
    """
    if self._single or self.path == "dual":
      self._stats = ridge.update(self._stats, x, y, fold_ids)
      return
    x, y, fold_ids = ridge_cv.check_batch(x, y, fold_ids, self.d, self.k, self.num_folds, missing_ok=False)
    x, y = np.asarray(x), np.asarray(y)
    b = x.shape[0]
    most = b if jax.process_count() == 1 else int(np.max(multihost_utils.process_allgather(np.int64(b))))
    rows = _round_up(max(most, 1), self.local_rows)  # equal on every process
    xp = np.zeros((rows, self.d), np.float32 if x.dtype != np.float64 else np.float64)
    yp = np.zeros((rows, self.padded_k), xp.dtype)
    xp[:b], yp[:b, :self.k] = x, y
    folds = np.zeros(rows, np.int32)
    folds[:b] = fold_ids
    mask = (np.arange(rows) < b).astype(np.float32)
    with ridge_sweep.float64_context():
      gx, gy = self._global(xp, P(DATA, None)), self._global(yp, P(DATA, MODEL))
      gf, gm = self._global(folds, P(DATA)), self._global(mask, P(DATA))
      if self._empty:  # the shift: mean of the first global batch, as ridge.update takes it
        if not float(to_host(jnp.sum(gm))):
          return
        sx, sy = _shift_fn(self.mesh)(gx, gy, gm)
        self._partial = self._partial.replace(shift_x=sx, shift_y=sy)
        self._empty = False
      self._partial = _step_fn(self.mesh, self.num_folds, self.dtype.name)(self._partial, gx, gy, gf, gm)

  def _rows(self) -> ridge.RidgeRows:
    """All processes' kept rows, on every process (a collective with several processes)."""
    r = self._stats
    if jax.process_count() == 1:
      return r
    x, y, f = gather_rows(r.x[:r.size], r.y[:r.size], r.fold_ids[:r.size])
    return ridge_dual.from_arrays(x, y, f, self.num_folds, self.dtype)

  def reduce(self) -> ridge.Stats:
    """All rows' statistics, k targets, on every process: `ridge.RidgeStats` replicated on every
    device (primal; F (d^2 + d k) float64 per device), or `ridge.RidgeRows` (dual)."""
    if self.path == "dual":
      return self._rows()
    if self._single:
      return self._stats
    with ridge_sweep.float64_context():
      return _reduce_fn(self.mesh, self.dtype.name, self.k)(self._partial)

  def solve(self, *, alphas: Sequence[float], per_target: bool = True, folds: Sequence[int] | None = None,
            extend_grid: bool = False, target_block: int | None = None) -> ridge.RidgeFit:
    """Cross-validates and refits, as `ridge.solve` on all processes' rows (every process gets
    the same fit)."""
    kw = dict(alphas=alphas, per_target=per_target, folds=folds, extend_grid=extend_grid,
              target_block=target_block)
    if self.path == "dual":
      return ridge.solve(self._rows(), **kw)
    if self._single:
      return ridge.solve(self._stats, **kw)
    with ridge_sweep.float64_context():
      stats = _reduce_fn(self.mesh, self.dtype.name, None)(self._partial)
    return solve(stats, self.mesh, num_targets=self.k, **kw)


# ----------------------------------------------------------------------------- target parallel


@functools.lru_cache(maxsize=None)
def _sweep_fns(mesh: Mesh, size: int, dtype: str):
  axes = mesh.axis_names
  stats_spec = _stats_specs(None, axes, dtype)

  def errors(stats, train, val, context, alphas):
    starts = jnp.arange(0, stats.xy.shape[-1], size, dtype=jnp.int32)
    e, s = jax.lax.map(lambda st: ridge_primal.block_errors(stats, train, val, context, alphas, st, size), starts)
    flat = lambda t: jnp.moveaxis(t, 0, 1).reshape(alphas.shape[0], -1)  # (L, local targets)
    return flat(e), flat(s)

  def refit(stats, train, context, alpha):
    starts = jnp.arange(0, stats.xy.shape[-1], size, dtype=jnp.int32)
    w, b = jax.lax.map(lambda st: ridge_primal.refit_block(stats, train, context, alpha, st, size), starts)
    return jnp.moveaxis(w, 0, 1).reshape(w.shape[1], -1), b.reshape(-1)

  rep = P()
  sweep = jax.jit(jax.shard_map(errors, mesh=mesh, in_specs=(stats_spec, rep, rep, (rep,) * 5, rep),
                                out_specs=(P(None, axes), P(None, axes)), check_vma=False))
  refit = jax.jit(jax.shard_map(refit, mesh=mesh, in_specs=(stats_spec, rep, (rep,) * 4, P(axes)),
                                out_specs=(P(None, axes), P(axes)), check_vma=False))
  return stats_spec, sweep, refit


def _layout(k: int, devices: int, size_max: int) -> tuple[int, int]:
  """Block size and padded target count: devices x blocks x size >= k, blocks of equal size."""
  local = -(-k // devices)
  blocks = -(-local // max(1, size_max))
  size = -(-local // blocks)
  return size, devices * blocks * size


class ShardedSolver(ridge_primal.PrimalSolver):
  """A primal solver (ridge_cv.Solver) whose sweeps and refits of all targets run over every
  device of the mesh by target slices; column subsets (the float64 recomputation) are solved on
  gathered columns on every process."""

  def __init__(self, stats: ridge.RidgeStats, mesh: Mesh, folds: Sequence[int], num_targets: int,
               target_block: int | None = None, num_alphas: int = 13):
    self.mesh = mesh
    super().__init__(stats, folds, target_block=target_block)
    self.num_targets = num_targets
    itemsize = jnp.dtype(stats.dtype).itemsize
    size_max = ridge_sweep.block_size(num_targets, num_alphas * self.rank * itemsize, target_block)
    self.size, self.kp = _layout(num_targets, mesh.size, min(size_max, -(-num_targets // mesh.size)))
    self._laid = None
    self._locals: dict[bytes, ridge_primal.PrimalSolver] = {}

  def host(self, x: jax.Array) -> np.ndarray:
    return to_host(x)

  def _laid_out(self, dtype: str):
    """The statistics with targets padded to kp and laid out over all devices (cached)."""
    if self._laid is None:
      stats_spec, _, _ = _sweep_fns(self.mesh, self.size, dtype)

      def fit_k(leaf):
        widths = [(0, 0)] * (leaf.ndim - 1) + [(0, max(0, self.kp - leaf.shape[-1]))]
        return jnp.pad(leaf, widths)[..., :self.kp]
      with ridge_sweep.float64_context():
        self._laid = jax.jit(lambda s: s.replace(**{f: fit_k(getattr(s, f)) for f in ridge_primal.TARGET_LEAVES}),
                             out_shardings=_shardings(self.mesh, stats_spec))(self.stats)
    return self._laid

  def _local(self, columns: np.ndarray) -> ridge_primal.PrimalSolver:
    """A one-device solver of some target columns (gathered to every process; cached)."""
    key = np.asarray(columns).tobytes()
    if key not in self._locals:
      self._locals[key] = self._gathered(columns)
    return self._locals[key]

  def _gathered(self, columns: np.ndarray) -> ridge_primal.PrimalSolver:
    s = self.stats
    leaves = {f: to_host(getattr(s, f)) for f in ("shift_x", "count", "sum_x", "xx")}
    leaves.update({f: to_host(getattr(s, f))[..., columns] for f in ridge_primal.TARGET_LEAVES})
    with ridge_sweep.float64_context():
      local = ridge.RidgeStats(**{f: jnp.asarray(v) for f, v in leaves.items()}, dtype=s.dtype)
    return ridge_primal.PrimalSolver(local, self.folds, target_block=self.target_block)

  def fold_errors(self, fold, alphas, dtype, columns=None):
    if columns is not None:
      return self._local(columns).fold_errors(fold, alphas, dtype, None)
    dtype = jnp.dtype(dtype)
    stats = self._laid_out(self.stats.dtype)
    _, sweep, _ = _sweep_fns(self.mesh, self.size, self.stats.dtype)
    train, val = self.fold_weights(fold)
    with ridge_sweep.float64_context():
      context = ridge_primal.fold_context(stats, train, val, self.rank, dtype)
      e, s = sweep(stats, train, val, context, jnp.asarray(alphas, dtype))
    return to_host(e)[:, :self.num_targets], to_host(s)[:, :self.num_targets]

  def refit(self, alpha, dtype, columns=None):
    if columns is not None:
      return self._local(columns).refit(alpha, dtype, None)
    dtype = jnp.dtype(dtype)
    stats = self._laid_out(self.stats.dtype)
    _, _, refit = _sweep_fns(self.mesh, self.size, self.stats.dtype)
    alpha_p = np.ones(self.kp, dtype)  # padding targets are all zero: any lambda gives w = 0
    alpha_p[:self.num_targets] = alpha
    with ridge_sweep.float64_context():
      train = jnp.asarray(self.selected, jnp.float64)
      context = ridge_primal.full_context(stats, train, min(stats.num_features, self.total), dtype)
      w, b = refit(stats, train, context, jax.device_put(alpha_p, NamedSharding(self.mesh, P(self.mesh.axis_names))))
    return to_host(w)[:, :self.num_targets], to_host(b)[:self.num_targets]

  def target_mean(self) -> np.ndarray:
    return super().target_mean()[:self.num_targets]


def solve(stats: ridge.Stats, mesh: Mesh, *, alphas: Sequence[float], per_target: bool = True,
          folds: Sequence[int] | None = None, target_block: int | None = None,
          extend_grid: bool = False, num_targets: int | None = None) -> ridge.RidgeFit:
  """`ridge.solve` with the lambda sweep and refit split over all devices of `mesh` by targets.

  `stats` may be any RidgeStats (one device's, or an Accumulator's reduction); with
  `num_targets`, only its first num_targets target columns are real (the rest padding) and the
  fit is trimmed. Kept rows (RidgeRows) are solved by `ridge.solve`.
  """
  if isinstance(stats, ridge.RidgeRows):
    return ridge.solve(stats, alphas=alphas, per_target=per_target, folds=folds,
                       target_block=target_block, extend_grid=extend_grid)
  k = stats.num_targets if num_targets is None else num_targets
  folds = ridge_cv.check_folds(folds, to_host(stats.count))
  if len(folds) < 2:
    return ridge.mean_fit(jax.tree.map(to_host, stats), folds, alphas, num_targets=k)
  grid = ridge_cv.check_alphas(alphas)
  solver = ShardedSolver(stats, mesh, folds, k, target_block, len(grid))
  return ridge_cv.cross_validate([ridge_cv.Part(np.arange(k), solver)], k, stats.num_features, grid,
                                 per_target=per_target, extend_grid=extend_grid,
                                 dtype=jnp.dtype(stats.dtype), dual=False)


def fit(X: Any, Y: Any, mesh: Mesh, *, alphas: Sequence[float], num_folds: int = 4,
        per_target: bool = True, fold_ids: Any = None, dtype: Any = jnp.float32,
        batch_size: int = 4096, target_block: int | None = None, path: str = "auto",
        folds: Sequence[int] | None = None, extend_grid: bool = False) -> ridge.RidgeFit:
  """`ridge.fit` over a mesh: X (n, d), Y (n, k) in memory on one process, fed in batches."""
  X, Y = np.asarray(X), np.asarray(Y)
  if Y.ndim == 1:
    Y = Y[:, None]
  if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
    raise ValueError(f"X must be (n, d) and Y (n, k) with the same n; got {X.shape} and {Y.shape}")
  n = X.shape[0]
  fold_ids = ridge.kfold_ids(n, num_folds) if fold_ids is None else np.asarray(fold_ids)
  if path == "auto" and np.isnan(Y).any():
    path = "dual"
  acc = Accumulator(mesh, X.shape[1], Y.shape[1], num_folds, dtype, n=n, path=path)
  for s in range(0, n, batch_size):
    acc.update(X[s:s + batch_size], Y[s:s + batch_size], fold_ids[s:s + batch_size])
  return acc.solve(alphas=alphas, per_target=per_target, folds=folds, extend_grid=extend_grid,
                   target_block=target_block)
