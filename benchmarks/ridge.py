"""Ridge-CV engine vs himalaya and scikit-learn on the same data, folds and lambda grid.

  python -m benchmarks.ridge                                  # CPU scale: n=4000 d=768 k=1500
  python -m benchmarks.ridge --n=49000 --d=4096 --k=6348      # the paper's RGB scale (GPU)
  python -m benchmarks.ridge --devices=8 [--model=2]          # sharded (persistent/distributed.py);
      # on a CPU, prefix XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8 devices

Prints one JSON object: seconds per solver (median of --repeat runs after a warm-up run that
includes JAX compilation; the engine and himalaya run interleaved, round by round, so that both
see the same load), the ratio of the medians and the median of the per-round ratios, lambda
agreement, how many targets the float32 engine recomputed in float64, and its float32 accuracy
against its own float64 run (CV errors, chosen lambdas, weights). himalaya uses its numpy
backend on CPU and torch_cuda on a GPU. scikit-learn's RidgeCV cannot select lambda per target
under K-fold CV, so it runs with one shared lambda and is compared with this engine's
shared-lambda mode. `--profile` prints where the engine's time goes instead (one process).
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from persistent import distributed, ridge


def make_problem(n: int, d: int, k: int, seed: int = 0):
  """ConvNet-like features (non-negative, correlated, l2-normalised) and noisy linear targets."""
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(min(d, 256), d)).astype(np.float32)
  x = np.maximum(rng.normal(size=(n, basis.shape[0])).astype(np.float32) @ basis
                 + 0.5 * rng.normal(size=(n, d)).astype(np.float32), 0)
  x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
  w = rng.normal(size=(d, k)).astype(np.float32) / np.sqrt(d)
  y = x @ w * 10 + rng.normal(size=(n, k)).astype(np.float32) * rng.uniform(0.05, 1, k).astype(np.float32)
  return x, y.astype(np.float32)


def timed(fn, repeat: int):
  """Median seconds of `repeat` runs after a warm-up (compilation), and the last output."""
  out, times = interleaved({"fn": fn}, repeat)
  return float(np.median(times["fn"])), out["fn"]


def interleaved(fns: dict, repeat: int, warm: tuple[str, ...] = ("persistent", "fn")) -> tuple[dict, dict]:
  """Outputs and per-round seconds of each function, run round by round; those named in `warm`
  (JAX: the first run compiles) run once before."""
  out = {name: fn() for name, fn in fns.items() if name in warm}
  times = {name: [] for name in fns}
  for _ in range(repeat):
    for name, fn in fns.items():
      t = time.perf_counter()
      out[name] = fn()
      times[name].append(time.perf_counter() - t)
  return out, times


def profile(x, y, alphas, folds):
  """Seconds per phase of one primal solve (the engine's public building blocks), each the
  second of two runs (the first compiles)."""
  from persistent import ridge_primal, ridge_sweep
  def clock(fn):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t
  n, d = x.shape
  ids = ridge.kfold_ids(n, folds)
  out = {"update": clock(lambda: ridge.update(ridge.init(d, y.shape[1], folds), x, y, ids).xx)}
  stats = ridge.update(ridge.init(d, y.shape[1], folds), x, y, ids)
  solver = ridge_primal.PrimalSolver(stats, list(range(folds)), rows=(x, y, ids))
  heldout_rows = int(np.bincount(ids).max()) < d
  with ridge_sweep.float64_context():
    train, val = solver.fold_weights(0)
    f32 = np.dtype(np.float32)
    if heldout_rows:
      out["fold: eigh + held-out rows in the basis"] = clock(lambda: ridge_primal.fold_context(
          stats, train, val, solver.rank, f32)[3])
    else:
      out["fold: eigh + held-out Gram in the basis"] = clock(lambda: ridge_primal.fold_context(
          stats, train, val, solver.rank, f32)[4])
    gram = stats.xx[0].astype(jnp.float32)
    out["fold: eigh alone"] = clock(lambda: ridge_sweep.eigenbasis(gram, solver.rank)[1])
  out["fold: context + sweep (all targets)"] = clock(lambda: solver.fold_errors(0, alphas, np.float32)[0])
  out["refit"] = clock(lambda: solver.refit(np.full(y.shape[1], alphas[len(alphas) // 2]), np.float32)[0])
  out["whole fit"] = clock(lambda: ridge.fit(x, y, alphas=alphas, num_folds=folds).weights)
  return out


def engine(x, y, alphas, folds, per_target=True, dtype=np.float32, mesh=None):
  if mesh is None:
    fit = ridge.fit(x, y, alphas=alphas, num_folds=folds, per_target=per_target, dtype=dtype)
  else:
    fit = distributed.fit(x, y, mesh, alphas=alphas, num_folds=folds, per_target=per_target, dtype=dtype)
  jax.block_until_ready(fit.weights)
  return fit


def run_himalaya(x, y, alphas, folds, gpu: bool):
  from himalaya.backend import set_backend
  from himalaya.ridge import solve_ridge_cv_svd
  from sklearn.model_selection import KFold
  backend = set_backend("torch_cuda" if gpu else "numpy")
  xb, yb = backend.asarray(x), backend.asarray(y)
  best_alphas, coefs, _, intercept = solve_ridge_cv_svd(
      xb, yb, alphas=np.asarray(alphas, np.float32), fit_intercept=True, cv=KFold(folds),
      local_alpha=True, warn=False)
  return backend.to_numpy(best_alphas), backend.to_numpy(coefs)


def run_sklearn(x, y, alphas, folds):
  from sklearn.linear_model import RidgeCV
  from sklearn.model_selection import KFold
  m = RidgeCV(alphas=alphas, cv=KFold(folds), scoring="neg_mean_squared_error").fit(x, y)
  return m.alpha_


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=4000)
  p.add_argument("--d", type=int, default=768)
  p.add_argument("--k", type=int, default=1500)
  p.add_argument("--alphas", type=int, default=13)
  p.add_argument("--folds", type=int, default=4)
  p.add_argument("--repeat", type=int, default=3)
  p.add_argument("--peers", default="himalaya,sklearn")
  p.add_argument("--no-float64", action="store_true", help="skip the float64 accuracy run")
  p.add_argument("--devices", type=int, default=1, help="devices for the engine (-1: all); >1 shards it")
  p.add_argument("--model", type=int, default=1, help="of those, devices splitting the targets' statistics")
  p.add_argument("--profile", action="store_true", help="seconds per phase of the engine only")
  a = p.parse_args()
  mesh = None if a.devices == 1 else distributed.make_mesh(dict(devices=a.devices, model=a.model))
  engine_on_mesh = functools.partial(engine, mesh=mesh)
  alphas = np.logspace(-3, 3, a.alphas)
  x, y = make_problem(a.n, a.d, a.k)
  gpu = jax.devices()[0].platform == "gpu"
  res = {"n": a.n, "d": a.d, "k": a.k, "alphas": a.alphas, "folds": a.folds,
         "device": str(jax.devices()[0].device_kind),
         "devices": 1 if mesh is None else mesh.size, "platform": platform.platform()}

  if a.profile:
    print(json.dumps({"n": a.n, "d": a.d, "k": a.k, "seconds": profile(x, y, alphas, a.folds)}, indent=2))
    return
  peers = [s for s in a.peers.split(",") if s]
  fns = {"persistent": lambda: engine_on_mesh(x, y, alphas, a.folds)}
  if "himalaya" in peers:
    fns["himalaya"] = lambda: run_himalaya(x, y, alphas, a.folds, gpu)
  out, times = interleaved(fns, a.repeat)
  fit = out["persistent"]
  res["seconds"] = {name: float(np.median(t)) for name, t in times.items()}
  res["rounds"] = times
  chosen = np.asarray(fit.alpha)
  res["path"] = fit.path
  res["float64_targets"] = int(np.asarray(fit.float64).sum())
  res["alpha_at_edge"] = ridge.alpha_at_edge(fit)
  if "himalaya" in peers:
    h_alpha = out["himalaya"][0]
    res["speedup_vs_himalaya"] = res["seconds"]["himalaya"] / res["seconds"]["persistent"]
    res["speedup_vs_himalaya_median_of_rounds"] = float(np.median(
        np.asarray(times["himalaya"]) / np.asarray(times["persistent"])))
    res["alpha_agreement_himalaya"] = float(np.mean(np.isclose(h_alpha, chosen, rtol=1e-4)))
  if not a.no_float64:
    with jax.enable_x64(True):
      ref = engine_on_mesh(x.astype(np.float64), y.astype(np.float64), alphas, a.folds, dtype=np.float64)
      cv64, alpha64, w64 = np.asarray(ref.cv_mse), np.asarray(ref.alpha), np.asarray(ref.weights)
    cv32 = np.asarray(fit.cv_mse, np.float64)
    res["float32_vs_float64"] = {
        "cv_mse_max_rel_err": float(np.max(np.abs(cv32 - cv64) / cv64)),
        "alpha_agreement": float(np.mean(np.isclose(chosen, alpha64, rtol=1e-6))),
        "weights_max_rel_err": float(np.abs(np.asarray(fit.weights) - w64).max() / np.abs(w64).max()),
    }
  if "sklearn" in peers:
    t, s_alpha = timed(lambda: run_sklearn(x, y, alphas, a.folds), 1)
    shared = engine_on_mesh(x, y, alphas, a.folds, per_target=False)
    res["seconds"]["sklearn_shared_lambda"] = t
    res["seconds"]["persistent_shared_lambda"] = timed(
        lambda: engine_on_mesh(x, y, alphas, a.folds, per_target=False), 1)[0]
    res["speedup_vs_sklearn_shared"] = t / res["seconds"]["persistent_shared_lambda"]
    res["sklearn_same_shared_lambda"] = bool(np.isclose(float(shared.alpha[0]), s_alpha, rtol=1e-4))
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  main()
