"""The probing step, once for every task: data -> backbone -> features -> ridge.

A task says what to fit as `Head`s: which examples of a batch feed a head, its inputs (by default
the examples' backbone features) and its targets. `Pipeline.fit` streams a source through the
backbone once and feeds every head's rows into its own ridge accumulator; `Pipeline.predict`
streams a source and applies fitted heads, optionally cross-fitted (each example predicted by the
model fitted without its fold). Folds, devices (`config.mesh`), several processes
(`config.distributed`: each process reads only its share of every source and feeds only its
rows), the feature cache and checkpoints live here and nowhere else, so everything the engine
can do reaches every task.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from persistent import backbones, checkpoint, data, distributed, features, ridge
from persistent.data import holdout as holdout_lib

Examples = list[data.Example]


@dataclasses.dataclass(frozen=True)
class Head:
  """One multi-target ridge probe.

  `targets(examples)` gives (rows, num_targets) float targets for the selected examples of a
  batch, `rows_per_example` rows each (e.g. one per grid cell for a per-cell combiner). A row whose
  targets are all NaN is not a sample (e.g. a void cell); NaN in some targets of a row marks those
  values missing (`missing=True`, e.g. invisible keypoints). `select(example)` picks the examples
  that feed the head (default: all). `inputs(examples, feats)` replaces the backbone features
  (selected rows) by other inputs of `input_dim` columns (e.g. raw pixels for a baseline).
  `alphas` and `per_target` override config.ridge's.
  """
  name: str
  num_targets: int
  targets: Callable[[Examples], np.ndarray]
  select: Callable[[data.Example], bool] | None = None
  inputs: Callable[[Examples, np.ndarray], np.ndarray] | None = None
  input_dim: int | None = None
  rows_per_example: int = 1
  alphas: Sequence[float] | None = None
  per_target: bool | None = None
  missing: bool = False

  def rows(self, examples: Examples, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, Examples]:
    """(inputs (m * rows_per_example, d), owner (m,) batch positions, selected examples)."""
    own = np.arange(len(examples)) if self.select is None else np.flatnonzero(
        [bool(self.select(ex)) for ex in examples])
    chosen = [examples[i] for i in own]
    if not own.size:
      return np.zeros((0, self.input_dim or feats.shape[1]), np.float32), own, chosen
    x = feats[own] if self.inputs is None else self.inputs(chosen, feats[own])
    x = np.asarray(x, np.float32).reshape(len(own) * self.rows_per_example, -1)
    return x, own, chosen


@dataclasses.dataclass
class Fitted:
  """The outcome of `Pipeline.fit`: fits by head, their accumulators (for cross-fitting and
  moments), the fold of every fold group, and the summed side statistics."""
  fits: dict[str, ridge.RidgeFit]
  accumulators: dict[str, Any]
  group_folds: np.ndarray
  sums: dict[str, np.ndarray]
  records: list
  alphas: dict[str, tuple[float, ...]]
  per_target: dict[str, bool]
  extend_grid: bool = False

  def target_moments(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (k,) of a head's targets over all its rows."""
    return ridge.target_moments(self.accumulators[name].reduce())

  def projection_moments(self, name: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (m,) and covariance (m, m) of a head's inputs projected on the columns of w (d, m)."""
    return ridge.projection_moments(self.accumulators[name].reduce(), np.asarray(w, np.float64))

  def crossfit(self, name: str) -> list[ridge.RidgeFit]:
    """Per fold f, the head's model fitted (and cross-validated) without fold f."""
    acc = self.accumulators[name]
    folds = range(len(np.unique(self.group_folds)))
    return [acc.solve(alphas=self.alphas[name], per_target=self.per_target[name], extend_grid=self.extend_grid,
                      folds=[g for g in folds if g != f]) for f in folds]


@dataclasses.dataclass
class Batch:
  """What `Pipeline.predict` hands to a task's `record` function for each batch."""
  examples: Examples
  features: np.ndarray  # (B, d) backbone features
  index: np.ndarray  # (B,) positions in the source
  preds: dict[str, np.ndarray]  # head -> (B, rows_per_example * num_targets)


def assign_folds(num_groups: int, num_folds: int, seed: int | None = None) -> np.ndarray:
  """The fold of each of `num_groups` groups: contiguous blocks (scikit-learn's KFold without
  shuffling, the paper's protocol) or, with a seed, a seeded balanced permutation of them."""
  folds = ridge.kfold_ids(num_groups, num_folds)
  if seed is None:
    return folds
  return folds[np.argsort(np.random.default_rng([seed, 11]).permutation(num_groups))]


@dataclasses.dataclass
class Request:
  """One pass a task asks for: kind 'fit', 'predict' or 'records' over `source`, with the
  arguments of the Pipeline method of that name. Requests of several layers over one source are
  served by one pass (`execute`)."""
  pipe: "Pipeline"
  kind: str
  source: data.Source
  args: dict[str, Any]


class Pipeline:
  """The backbone, the mesh and the settings of one run, shared by every pass of a task.

  Inside a layer sweep (`persistent.sweep`) the task runs once per layer; its pipelines share the
  sweep's backbone and hand their passes to the sweep, which merges the passes of all layers over
  the same source into one (one decode, one forward pass tapping every layer).
  """

  def __init__(self, config: ml_collections.ConfigDict, backbone: backbones.Backbone | None = None):
    from persistent import sweep  # the sweep imports this module
    self.config = config
    self.sweep = sweep.current()
    if backbone is None:
      backbone = self.sweep.backbone if self.sweep is not None else backbone_from_config(config)
    self.backbone = backbone
    self.layer = config.backbone.layer
    self.reduce = config.features.get("reduce", "")
    self.mesh = distributed.mesh_from_config(config)
    self.processes, self.process = jax.process_count(), jax.process_index()
    local = distributed.local_data_size(self.mesh)
    self.batch_size = -(-config.batch_size // local) * local  # a multiple of the local devices
    self.sharding = None if distributed.is_single_device(self.mesh) else distributed.local_batch_sharding(self.mesh)

  def source(self, spec: str) -> data.Source:
    """A data source of the run, bad examples handled as config.data.on_bad says."""
    return data.open_source(spec, on_bad=self.config.data.on_bad)

  def train_test(self, holdout: float, groups: Callable[[list[str]], Sequence[object]] | None = None
                 ) -> tuple[data.Source, data.Source]:
    """The run's training and test sources: data.train and data.test, or, with data.test empty, a
    seeded `holdout` fraction of data.train held out (`data.holdout.split`; `groups` maps the
    example ids to the groups kept on one side, default one per example)."""
    train = self.source(self.config.data.train)
    if self.config.data.test:
      return train, self.source(self.config.data.test)
    return holdout_lib.split(train, holdout, self.config.seed, None if groups is None else groups(train.ids))

  @property
  def feature_dim(self) -> int:
    return layer_dim(self.backbone, self.layer, self.reduce)

  def stream(self, source: data.Source, layers: Sequence[str] | None = None
             ) -> Iterator[tuple[Examples, dict[str, np.ndarray], np.ndarray]]:
    """(examples, {layer: features (B, d)}, global indices (B,)) of this process's share of
    `source`, then empty batches until every process has made the same number of steps."""
    layers = list(layers or [self.layer])
    parts = list(dict.fromkeys(p for l in layers for p in components(l)))  # what the network gives
    cache = self.config.features.cache_dir
    options = dict(batch_size=self.batch_size, normalize=self.config.features.normalize, reduce=self.reduce,
                   cache_dir=os.path.expanduser(cache) if cache else None,
                   workers=self.config.data.workers or None, sharding=self.sharding)
    local, idx = distributed.shard_source(source, self.process, self.processes)
    steps = -(-distributed.share_size(len(source), self.processes) // self.batch_size)
    start, done = 0, 0
    if len(local):
      for examples, feats in features.iterate_layers(self.backbone, parts, local, **options):
        yield examples, {l: concatenate(feats, l) for l in layers}, idx[start:start + len(examples)]
        start += len(examples)
        done += 1
    empty = {l: np.zeros((0, layer_dim(self.backbone, l, self.reduce)), np.float32) for l in layers}
    for _ in range(done, steps):
      yield [], empty, np.zeros(0, np.int64)

  def _run(self, kind: str, source: data.Source, **args) -> Any:
    request = Request(self, kind, source, args)
    return self.sweep.submit(request) if self.sweep is not None else execute([request])[0]

  def records(self, source: data.Source, fn: Callable[[Examples], list]) -> list:
    """fn(examples) (one value per example) over `source` without the backbone, e.g. annotations;
    each process reads its share, every process gets all values in source order."""
    return self._run("records", source, fn=fn)

  def fit(self, source: data.Source, heads: Sequence[Head], *, groups: np.ndarray | None = None,
          fold_seed: int | None = None, sums: dict[str, Callable[[Examples], np.ndarray]] | None = None,
          collect: Callable[["Batch"], list] | None = None) -> Fitted:
    """One pass over `source`: every head's rows into its ridge statistics, solved at the end.

    `groups` (N,) ints put examples in fold groups (all examples of a group in one fold, e.g. the
    crops of one face, the augmented copies of one image); default: one group per example.
    `sums` name -> fn(examples) -> array, summed over all examples of every process; `collect`
    gives one record per example of a `Batch` (as `predict`'s `record`), gathered in source order.
    """
    return self._run("fit", source, heads=list(heads), groups=groups, fold_seed=fold_seed, sums=sums or {},
                     collect=collect)

  def predict(self, source: data.Source, heads: Sequence[Head], fits: dict[str, Any], *,
              record: Callable[["Batch"], list] | None = None,
              crossfit: tuple[Fitted, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], list]:
    """Every head's predictions for every example of `source`, on every process.

    Returns ({head: (N, rows_per_example * num_targets), NaN where the head does not select the
    example}, records): `record(batch)` gives one value per example of a `Batch` (e.g. its ground
    truth), collected in source order. With `crossfit=(fitted, groups)`, fits[head] is a list of
    per-fold models (`Fitted.crossfit`) and example i is predicted by the one fitted without its
    fold, the fold of its group groups[i] in `fitted`.
    """
    return self._run("predict", source, heads=list(heads), fits=fits, record=record, crossfit=crossfit)

  # ------------------------------------------------------------------------------------------
  # Checkpoints

  def identity(self, layout: dict[str, Any]) -> dict[str, Any]:
    """What a fitted probe depends on (see `checkpoint.check`): task, backbone, weights, layer and
    its map reduction, preprocessing, training data, ridge settings and the task's target layout."""
    c = self.config
    return {"task": c.task, "backbone": self.backbone.name, "weights": self.backbone.weights_id,
            "layer": self.layer, "reduce": "+".join(features.reduction(self.reduce, p) or "default" for p in components(self.layer)),
            "preprocessing": preprocessing(self.backbone, c), "train": c.data.train,
            "ridge": {k: c.ridge.get(k, False) for k in ("alphas", "num_folds", "per_target", "dtype", "extend_grid")},
            "layout": layout}

  def save(self, workdir: str, fits: dict[str, ridge.RidgeFit], layout: dict[str, Any],
           state: dict[str, Any] | None = None) -> str:
    """Writes workdir/checkpoint (process 0 only): the fits, the identity and the task's `state`
    (what prediction needs besides the fits, e.g. a mean shape)."""
    if self.process:
      return ""
    return checkpoint.save(os.path.join(workdir, "checkpoint"), fits,
                           {"identity": self.identity(layout), "state": state or {}})

  def restore(self, layout: dict[str, Any]) -> tuple[dict[str, ridge.RidgeFit], dict[str, Any]]:
    """(fits, state) of config.restore, refused unless its identity matches this run's."""
    fits, meta = checkpoint.restore(self.config.restore)
    checkpoint.check(meta.get("identity", {}), self.identity(layout), self.config.restore)
    return fits, meta.get("state", {})


def components(layer: str) -> list[str]:
  """The network layers of a probe layer: 'stage5' or a concatenation 'stage4+stage5'."""
  parts = [p.strip() for p in layer.split("+")]
  if not all(parts) or len(set(parts)) != len(parts):
    raise ValueError(f"bad layer {layer!r}: a layer name or distinct names joined by '+'")
  return parts


def layer_dim(backbone: backbones.Backbone, layer: str, reduce: str = "") -> int:
  """Feature width of a probe layer (a concatenation's: the sum of its parts')."""
  return sum(features.feature_dim(backbone, p, reduce) for p in components(layer))


def concatenate(feats: dict[str, np.ndarray], layer: str) -> np.ndarray:
  """A probe layer's features from its parts' (each reduced by its own rule and l2-normalised when
  features.normalize is on): side by side, scaled by 1/sqrt(parts) so that unit rows stay unit."""
  parts = components(layer)
  if len(parts) == 1:
    return feats[layer]
  return np.concatenate([feats[p] for p in parts], 1) / np.float32(np.sqrt(len(parts)))


def execute(requests: Sequence[Request]) -> list[Any]:
  """Serves requests of one kind over one source (of one or several layers) with ONE pass: one
  decode of every example, one forward pass tapping every layer asked for."""
  if len({(r.kind, r.source.spec) for r in requests}) != 1:
    raise ValueError("execute() serves requests of one kind over one source")
  return {"records": _records, "fit": _fit, "predict": _predict}[requests[0].kind](requests)


def _records(requests: Sequence[Request]) -> list[list]:
  lead = requests[0].pipe
  local, idx = distributed.shard_source(requests[0].source, lead.process, lead.processes)
  out, index, start = [[] for _ in requests], [], 0
  if len(local):
    for examples in data.iterate(local, lead.batch_size, workers=lead.config.data.workers or None):
      for o, r in zip(out, requests):
        o += list(r.args["fn"](examples))
      index.append(idx[start:start + len(examples)])
      start += len(examples)
  return [_in_source_order(o, index) for o in out]


def _layers(requests: Sequence[Request]) -> list[str]:
  return list(dict.fromkeys(r.pipe.layer for r in requests))


def _fit(requests: Sequence[Request]) -> list[Fitted]:
  source, lead = requests[0].source, requests[0].pipe
  n, plans = len(source), []
  for r in requests:
    cfg, groups = r.pipe.config.ridge, r.args["groups"]
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != (n,) or (n and groups.min() < 0):
      raise ValueError(f"fold groups must be {n} non-negative ints, one per example of {source.spec!r}")
    num_groups = int(groups.max()) + 1 if n else 0
    if num_groups < cfg.num_folds:
      raise ValueError(f"training source {source.spec!r} has {num_groups} independent examples; "
                       f"{cfg.num_folds}-fold cross-validation needs at least that many")
    names = [h.name for h in r.args["heads"]]
    if len(set(names)) != len(names):
      raise ValueError(f"head names must be distinct, got {names}")
    group_folds = assign_folds(num_groups, cfg.num_folds, r.args["fold_seed"])
    dims = {h.name: h.input_dim or r.pipe.feature_dim for h in r.args["heads"]}
    plans.append(dict(group_folds=group_folds, fold_ids=group_folds[groups], dims=dims,
                      sums={k: None for k in r.args["sums"]}, records=[], index=[]))
  _check_memory(requests, plans, n)
  for r, plan in zip(requests, plans):
    cfg = r.pipe.config.ridge
    plan["accs"] = {h.name: _accumulator(r.pipe.mesh, plan["dims"][h.name], h.num_targets, cfg,
                                         n * h.rows_per_example, h.missing) for h in r.args["heads"]}
  for examples, feats, idx in lead.stream(source, _layers(requests)):
    for r, plan in zip(requests, plans):
      f = feats[r.pipe.layer]
      for h in r.args["heads"]:
        x, own, chosen = h.rows(examples, f) if examples else (
            np.zeros((0, plan["dims"][h.name]), np.float32), np.zeros(0, int), [])
        y = np.asarray(h.targets(chosen), np.float32).reshape(x.shape[0], h.num_targets) if chosen else \
            np.zeros((0, h.num_targets), np.float32)
        folds = np.repeat(plan["fold_ids"][idx[own]], h.rows_per_example)
        keep = ~np.isnan(y).all(1)
        if not h.missing and np.isnan(y[keep]).any():
          raise ValueError(f"head {h.name!r}: targets contain NaN")
        plan["accs"][h.name].update(x[keep], y[keep], folds[keep])
      if not examples:
        continue
      for name, fn in r.args["sums"].items():
        s = np.asarray(fn(examples))
        plan["sums"][name] = s if plan["sums"][name] is None else plan["sums"][name] + s
      if r.args["collect"] is not None:
        plan["records"] += list(r.args["collect"](Batch(examples, f, idx, {})))
        plan["index"].append(idx)
  out = []
  for r, plan in zip(requests, plans):
    cfg = r.pipe.config.ridge
    heads = r.args["heads"]
    sums = {k: _sum_over_processes(v) for k, v in plan["sums"].items()}
    records = _in_source_order(plan["records"], plan["index"]) if r.args["collect"] is not None else []
    alphas = {h.name: tuple(h.alphas or cfg.alphas) for h in heads}
    per_target = {h.name: cfg.per_target if h.per_target is None else h.per_target for h in heads}
    extend = bool(cfg.get("extend_grid", False))
    fits = {h.name: plan["accs"][h.name].solve(alphas=alphas[h.name], per_target=per_target[h.name],
                                               extend_grid=extend) for h in heads}
    out.append(Fitted(fits, plan["accs"], plan["group_folds"], sums, records, alphas, per_target, extend))
  return out


def _predict(requests: Sequence[Request]) -> list[tuple[dict[str, np.ndarray], list]]:
  source, lead = requests[0].source, requests[0].pipe
  plans = []
  for r in requests:
    crossfit, fits = r.args["crossfit"], r.args["fits"]
    fold_of = None if crossfit is None else crossfit[0].group_folds[np.asarray(crossfit[1])]
    linear = {h.name: [(np.asarray(m.weights, np.float32), np.asarray(m.bias, np.float32)) for m in
                       ([fits[h.name]] if fold_of is None else fits[h.name])] for h in r.args["heads"]}
    plans.append(dict(fold_of=fold_of, linear=linear, out={h.name: [] for h in r.args["heads"]}, records=[],
                      index=[]))
  for examples, feats, idx in lead.stream(source, _layers(requests)):
    if not examples:
      continue
    for r, plan in zip(requests, plans):
      batch = Batch(examples, feats[r.pipe.layer], idx, {})
      for h in r.args["heads"]:
        batch.preds[h.name] = pred = np.full((len(examples), h.rows_per_example * h.num_targets), np.nan, np.float32)
        x, own, _ = h.rows(examples, batch.features)
        if not own.size:
          continue
        models = np.zeros(own.size, int) if plan["fold_of"] is None else plan["fold_of"][idx[own]]
        models = np.repeat(models, h.rows_per_example)
        p = np.empty((x.shape[0], h.num_targets), np.float32)
        for m in np.unique(models):
          w, b = plan["linear"][h.name][m]
          p[models == m] = x[models == m] @ w + b
        pred[own] = p.reshape(own.size, -1)
      for h in r.args["heads"]:
        plan["out"][h.name] += list(batch.preds[h.name])
      if r.args["record"] is not None:
        plan["records"] += list(r.args["record"](batch))
      plan["index"].append(idx)
  results = []
  for r, plan in zip(requests, plans):
    heads, out = r.args["heads"], plan["out"]
    rows = [dict(zip(out, v)) for v in zip(*out.values())] if heads else [{}] * sum(map(len, plan["index"]))
    gathered = _in_source_order(list(zip(rows, plan["records"] or [None] * len(rows))), plan["index"])
    preds = {h.name: np.stack([g[0][h.name] for g in gathered]) if gathered else
             np.zeros((0, h.rows_per_example * h.num_targets), np.float32) for h in heads}
    results.append((preds, [g[1] for g in gathered] if r.args["record"] is not None else []))
  return results


def memory_budget(config: ml_collections.ConfigDict) -> int:
  """config.ridge.max_bytes, or (0) three quarters of the memory available now."""
  given = int(config.ridge.get("max_bytes", 0) or 0)
  if given:
    return given
  try:
    return int(0.75 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError):
    return 1 << 62


def _check_memory(requests: Sequence[Request], plans: list[dict], n: int) -> None:
  """Refuses, before any extraction, a pass whose ridge statistics would not fit the budget."""
  sizes: dict[str, int] = {}
  for r, plan in zip(requests, plans):
    cfg = r.pipe.config.ridge
    for h in r.args["heads"]:
      sizes[r.pipe.layer] = sizes.get(r.pipe.layer, 0) + _accumulator_bytes(
          plan["dims"][h.name], h.num_targets, cfg, n * h.rows_per_example, h.missing)
  budget = memory_budget(requests[0].pipe.config)
  if sum(sizes.values()) > budget:
    table = ", ".join(f"{layer}: {b / 2**30:.2f} GiB" for layer, b in sizes.items())
    raise MemoryError(f"the ridge statistics of this pass need {sum(sizes.values()) / 2**30:.2f} GiB "
                      f"({table}), over the budget of {budget / 2**30:.2f} GiB (ridge.max_bytes): probe fewer "
                      "layers at once, reduce maps more (features.reduce=grid:2 or pool), or raise the budget")


def summary(fit: ridge.RidgeFit) -> dict[str, Any]:
  """What metrics.json reports of a fit: the median chosen lambda, the mean best CV error and how
  many targets chose an end of the lambda grid (the grid may be too narrow for them)."""
  alpha, grid = np.asarray(fit.alpha, np.float64), np.asarray(fit.alphas, np.float64)
  fitted = np.isfinite(alpha)
  low, high = int((alpha[fitted] == grid.min()).sum()), int((alpha[fitted] == grid.max()).sum())
  return {"alpha_median": float(np.median(alpha[fitted])) if fitted.any() else None,
          "cv_mse_chosen": float(np.nanmin(np.asarray(fit.cv_mse, np.float64), 0)[fitted].mean())
          if fitted.any() else None,
          "alpha_at_edge": {"low": low, "high": high,
                            "fraction": (low + high) / max(int(fitted.sum()), 1)}}


def backbone_from_config(config: ml_collections.ConfigDict) -> backbones.Backbone:
  b = config.backbone
  extra = {"prototxt": b.prototxt} if b.prototxt else {}  # the generic 'caffe' backbone's definition
  return backbones.create(b.name, b.weights, seed=config.seed, dtype=jnp.dtype(b.dtype), **extra)


def preprocessing(backbone: backbones.Backbone, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """How images become features, as far as a fitted probe depends on it."""
  desc = dict(getattr(backbone, "preprocessing", None) or {"input_size": list(backbone.input_size)})
  desc.update(dtype=config.backbone.dtype, l2_normalize=bool(config.features.normalize))
  return desc


# ----------------------------------------------------------------------------------------------
# The ridge engine behind the heads: distributed.Accumulator (per-fold d x d statistics, or the
# rows themselves where they are fewer than the features or targets may be missing).


def _path(d: int, cfg: ml_collections.ConfigDict, n: int, missing: bool) -> str:
  return "dual" if missing else ridge.choose_path(cfg.get("path", "auto"), d, n)


def _accumulator(mesh, d: int, k: int, cfg: ml_collections.ConfigDict, n: int,
                 missing: bool) -> distributed.Accumulator:
  return distributed.Accumulator(mesh, d, k, cfg.num_folds, cfg.dtype, n=n, path=_path(d, cfg, n, missing))


def _accumulator_bytes(d: int, k: int, cfg: ml_collections.ConfigDict, n: int, missing: bool) -> int:
  """Host memory of a head's accumulator: kept rows, or float64 statistics per fold."""
  if _path(d, cfg, n, missing) == "dual":
    return (8 if cfg.dtype == "float64" else 4) * n * (d + k)
  return 8 * cfg.num_folds * (d * d + d * k + d + 2 * k)


def _in_source_order(records: list, index: list[np.ndarray]) -> list:
  """This process's per-example records (positions `index`) and every other process's, merged
  in source order on every process."""
  idx = np.concatenate(index) if index else np.zeros(0, np.int64)
  parts = distributed.allgather_objects((records, idx))
  every = [r for p in parts for r in p[0]]
  order = np.argsort(np.concatenate([p[1] for p in parts]), kind="stable")
  return [every[i] for i in order]


def _sum_over_processes(x: np.ndarray | None) -> np.ndarray | None:
  parts = [p for p in distributed.allgather_objects(x) if p is not None]
  return sum(parts[1:], parts[0]) if parts else None
