"""Wide features (d >> n): the engine's dual path vs himalaya's KernelRidgeCV(kernel='linear').

  python -m benchmarks.ridge_wide                     # n=1500 d=40000 k=200, 13 lambdas, 4 folds
  python -m benchmarks.ridge_wide --only-engine       # the engine alone: its peak resident memory

Prints one JSON object: median seconds of --repeat interleaved runs of each solver (after a
warm-up run that includes JAX compilation), the ratio, lambda agreement with himalaya (per-target
lambdas, intercept fitted, the same KFold), the engine's accuracy against an independent float64
brute force in kernel form (explicit solves per fold and lambda; the primal brute force would need
d x d matrices), and the peak resident memory of the engine alone, measured in a fresh process
(`--only-engine`, run by the main command) that also holds the data.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import jax
import numpy as np

from benchmarks.ridge import interleaved, make_problem
from persistent import ridge


def run_himalaya(x, y, alphas, folds):
  from himalaya.backend import set_backend
  from himalaya.kernel_ridge import KernelRidgeCV
  from sklearn.model_selection import KFold
  set_backend("numpy")
  model = KernelRidgeCV(alphas=np.asarray(alphas, np.float32), kernel="linear", fit_intercept=True,
                        cv=KFold(folds), solver_params=dict(local_alpha=True), warn=False)
  model.fit(x, y)
  return np.asarray(model.best_alphas_)


def brute_force_kernel(x, y, alphas, folds):
  """K-fold CV errors (L, k) of ridge with intercept, in float64, by explicit kernel solves."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  ids = ridge.kfold_ids(x.shape[0], folds)
  sse = np.zeros((len(alphas), y.shape[1]))
  for f in range(folds):
    tr, va = ids != f, ids == f
    mx, my = x[tr].mean(0), y[tr].mean(0)
    xt, xv = x[tr] - mx, x[va] - mx
    ktt, kvt = xt @ xt.T, xv @ xt.T
    for i, a in enumerate(alphas):
      coef = np.linalg.solve(ktt + a * np.eye(ktt.shape[0]), y[tr] - my)
      sse[i] += ((kvt @ coef + my - y[va]) ** 2).sum(0)
  return sse / x.shape[0]


def engine(x, y, alphas, folds):
  fit = ridge.fit(x, y, alphas=alphas, num_folds=folds)
  jax.block_until_ready(fit.weights)
  return fit


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=1500)
  p.add_argument("--d", type=int, default=40000)
  p.add_argument("--k", type=int, default=200)
  p.add_argument("--alphas", type=int, default=13)
  p.add_argument("--folds", type=int, default=4)
  p.add_argument("--repeat", type=int, default=3)
  p.add_argument("--only-engine", action="store_true", help="one engine run; report peak RSS")
  a = p.parse_args()
  alphas = np.logspace(-3, 3, a.alphas)
  x, y = make_problem(a.n, a.d, a.k)
  if a.only_engine:
    fit = engine(x, y, alphas, a.folds)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"path": fit.path, "peak_rss_gib": rss}))
    return
  res = {"n": a.n, "d": a.d, "k": a.k, "alphas": a.alphas, "folds": a.folds,
         "platform": platform.platform()}
  out, times = interleaved({"persistent": lambda: engine(x, y, alphas, a.folds),
                            "himalaya_kernel_ridge_cv": lambda: run_himalaya(x, y, alphas, a.folds)}, a.repeat)
  fit = out["persistent"]
  res["seconds"] = {name: float(np.median(t)) for name, t in times.items()}
  res["rounds"] = times
  res["speedup_vs_himalaya"] = res["seconds"]["himalaya_kernel_ridge_cv"] / res["seconds"]["persistent"]
  res["speedup_vs_himalaya_median_of_rounds"] = float(np.median(
      np.asarray(times["himalaya_kernel_ridge_cv"]) / np.asarray(times["persistent"])))
  chosen = np.asarray(fit.alpha, np.float64)
  res["path"] = fit.path
  res["float64_targets"] = int(np.asarray(fit.float64).sum())
  res["alpha_agreement_himalaya"] = float(np.mean(np.isclose(out["himalaya_kernel_ridge_cv"], chosen, rtol=1e-4)))
  cv = brute_force_kernel(x, y, alphas, a.folds)
  s = np.sort(cv, 0)
  clear = (s[1] - s[0]) > 1e-4 * s[0]
  res["vs_float64_brute_force"] = {
      "cv_mse_max_rel_err": float(np.max(np.abs(np.asarray(fit.cv_mse, np.float64) - cv) / cv)),
      "alpha_agreement_where_clear": float(np.mean(np.isclose(chosen, alphas[np.argmin(cv, 0)], rtol=1e-6)[clear])),
      "targets_with_a_clear_best": int(clear.sum())}
  child = subprocess.run([sys.executable, "-m", "benchmarks.ridge_wide", "--only-engine", f"--n={a.n}",
                          f"--d={a.d}", f"--k={a.k}", f"--alphas={a.alphas}", f"--folds={a.folds}"],
                         capture_output=True, text=True, check=True)
  res["engine_alone"] = json.loads(child.stdout.strip().splitlines()[-1])
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  main()
