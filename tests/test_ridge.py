"""Ridge engine against an independent float64 brute force and scikit-learn."""
import dataclasses

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from persistent import ridge, ridge_cv

ALPHAS = np.logspace(-3, 3, 7)
WIDE = np.logspace(-4, 2, 13)  # reaches lambdas small enough to expose float32 rounding


def brute_force(X, Y, alphas, fold_ids):
  """K-fold ridge CV in float64 with explicit solves: the independent reference."""
  X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
  n, d = X.shape
  sse = np.zeros((len(alphas), Y.shape[1]))
  for f in np.unique(fold_ids):
    tr, va = fold_ids != f, fold_ids == f
    mx, my = X[tr].mean(0), Y[tr].mean(0)
    xc, yc = X[tr] - mx, Y[tr] - my
    for i, a in enumerate(alphas):
      w = np.linalg.solve(xc.T @ xc + a * np.eye(d), xc.T @ yc)
      sse[i] += (((X[va] - mx) @ w + my - Y[va]) ** 2).sum(0)
  cv = sse / n
  chosen = np.argmin(cv, 0)
  mx, my = X.mean(0), Y.mean(0)
  xc, yc = X - mx, Y - my
  w = np.stack([np.linalg.solve(xc.T @ xc + alphas[c] * np.eye(d), xc.T @ yc[:, j])
                for j, c in enumerate(chosen)], 1)
  return w, my - mx @ w, chosen, cv


def brute_force_missing(X, Y, alphas, fold_ids):
  """`brute_force` per target on its present (non-NaN) rows; None for a target with an empty fold."""
  out = []
  for j in range(Y.shape[1]):
    keep = ~np.isnan(Y[:, j])
    if any(not np.any(keep & (fold_ids == f)) for f in np.unique(fold_ids)):
      out.append(None)
      continue
    w, b, chosen, cv = brute_force(X[keep], Y[keep, j:j + 1], alphas, fold_ids[keep])
    out.append((w[:, 0], b[0], chosen[0], cv[:, 0]))
  return out


def relu_features(rng, n, d):
  """ConvNet-like features: non-negative, correlated, l2-normalised (ill-conditioned Gram)."""
  basis = rng.normal(size=(min(d, 16), d))
  x = np.maximum(rng.normal(size=(n, basis.shape[0])) @ basis + 0.5 * rng.normal(size=(n, d)), 0)
  return (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)).astype(np.float32)


def clean_problem(seed, n, d, noise):
  """Targets X W (weights of scale 10) plus noise `noise[j]` times the signal's spread."""
  rng = np.random.default_rng(seed)
  X = relu_features(rng, n, d)
  signal = X.astype(np.float64) @ (rng.normal(size=(d, len(noise))) * 10 / np.sqrt(d))
  Y = signal + rng.normal(size=signal.shape) * np.asarray(noise) * signal.std(0)
  return X, Y.astype(np.float32)


def problem(seed, n, d, k, noise=0.5, offset=3.0):
  rng = np.random.default_rng(seed)
  X = rng.normal(size=(n, d)) + offset
  W = rng.normal(size=(d, k)) * rng.uniform(0.1, 2, k)
  Y = X @ W + rng.normal(size=(n, k)) * noise * rng.uniform(0.2, 5, k) + 10
  return X.astype(np.float32), Y.astype(np.float32)


def assert_matches(fit, ref, *, rtol, cv_rtol, check_alpha=True):
  w, b, chosen, cv = ref
  assert fit.weights.shape == w.shape and fit.bias.shape == b.shape and fit.cv_mse.shape == cv.shape
  np.testing.assert_allclose(np.asarray(fit.cv_mse), cv, rtol=cv_rtol, atol=cv_rtol * np.abs(cv).max())
  if check_alpha:
    np.testing.assert_array_equal(np.asarray(fit.alpha), np.asarray(fit.alphas)[chosen])
  scale = np.abs(w).max() + 1e-12
  np.testing.assert_allclose(np.asarray(fit.weights), w, atol=rtol * scale)
  np.testing.assert_allclose(np.asarray(fit.bias), b, atol=rtol * (np.abs(b).max() + scale))


def separated(cv, margin=1e-4):
  """Targets whose best lambda beats the runner-up by a relative margin (ties are arbitrary)."""
  s = np.sort(cv, 0)
  return (s[1] - s[0]) > margin * s[0]


# n < d included: the training Gram is singular there, and the solver works in its range.
@pytest.mark.parametrize("n,d,k,alphas", [(120, 30, 5, ALPHAS), (40, 100, 6, ALPHAS), (203, 17, 1, ALPHAS)])
def test_matches_brute_force(n, d, k, alphas):
  X, Y = problem(n + d, n, d, k)
  fit = ridge.fit(X, Y, alphas=alphas)
  ref = brute_force(X, Y, alphas, ridge.kfold_ids(n, 4))
  ok = separated(ref[3])
  assert ok.mean() > 0.5
  np.testing.assert_array_equal(np.asarray(fit.alpha)[ok], alphas[ref[2]][ok].astype(np.float32))
  assert_matches(fit, ref, rtol=2e-3, cv_rtol=2e-4, check_alpha=False)


@pytest.mark.parametrize("n,d", [(90, 40), (40, 100)])
def test_float64_is_exact(n, d):
  X, Y = problem(1, n, d, 4)
  with jax.enable_x64(True):
    fit = ridge.fit(X.astype(np.float64), Y.astype(np.float64), alphas=ALPHAS, dtype=np.float64)
    ref = brute_force(X, Y, ALPHAS, ridge.kfold_ids(n, 4))
    assert_matches(fit, ref, rtol=1e-9, cv_rtol=1e-10)


def test_float64_needs_x64():
  with pytest.raises(ValueError, match="64-bit"):
    ridge.init(3, 2, 4, dtype=np.float64)


def test_matches_sklearn():
  X, Y = problem(7, 150, 20, 3)
  fit = ridge.fit(X, Y, alphas=ALPHAS)
  Xd, Yd = X.astype(np.float64), Y.astype(np.float64)
  sse = np.zeros((len(ALPHAS), 3))
  for tr, va in KFold(4).split(Xd):
    for i, a in enumerate(ALPHAS):
      sse[i] += ((Ridge(alpha=a).fit(Xd[tr], Yd[tr]).predict(Xd[va]) - Yd[va]) ** 2).sum(0)
  np.testing.assert_allclose(np.asarray(fit.cv_mse), sse / 150, rtol=1e-4)
  for j in range(3):
    m = Ridge(alpha=float(fit.alpha[j])).fit(Xd, Yd[:, j])
    np.testing.assert_allclose(np.asarray(fit.weights[:, j]), m.coef_, atol=1e-3 * np.abs(m.coef_).max())
    np.testing.assert_allclose(float(fit.bias[j]), m.intercept_, rtol=1e-4)
  expected = Xd @ np.asarray(fit.weights, np.float64) + np.asarray(fit.bias)
  np.testing.assert_allclose(np.asarray(ridge.predict(fit, X)), expected, atol=1e-5 * np.abs(expected).max())


def test_shared_lambda():
  X, Y = problem(3, 100, 15, 4)
  fit = ridge.fit(X, Y, alphas=ALPHAS, per_target=False)
  ref = brute_force(X, Y, ALPHAS, ridge.kfold_ids(100, 4))
  best = np.argmin(ref[3].sum(1))
  assert np.all(np.asarray(fit.alpha) == np.float32(ALPHAS[best]))


def test_constant_target_and_duplicate_features():
  X, Y = problem(4, 80, 10, 3)
  X = np.concatenate([X, X[:, :3]], 1)  # duplicated features: singular Gram matrix
  Y[:, 1] = 2.5  # constant target
  fit = ridge.fit(X, Y, alphas=ALPHAS)
  ref = brute_force(X, Y, ALPHAS, ridge.kfold_ids(80, 4))
  np.testing.assert_allclose(np.asarray(fit.weights[:, 1]), 0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(fit.bias[1]), 2.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(fit.cv_mse[:, 1]), 0, atol=1e-8)
  # Duplicated columns share the weight equally, as the minimum-norm ridge solution does.
  np.testing.assert_allclose(np.asarray(fit.weights[:3, 0]), np.asarray(fit.weights[10:, 0]), rtol=2e-3)
  keep = np.array([0, 2])
  assert_matches(fit.replace(weights=fit.weights[:, keep], bias=fit.bias[keep], alpha=fit.alpha[keep],
                             cv_mse=fit.cv_mse[:, keep]),
                 (ref[0][:, keep], ref[1][keep], ref[2][keep], ref[3][:, keep]),
                 rtol=2e-3, cv_rtol=2e-4, check_alpha=False)


def test_vector_target_and_custom_folds():
  X, Y = problem(5, 60, 8, 1)
  folds = np.random.default_rng(0).permutation(np.arange(60) % 3)
  fit = ridge.fit(X, Y[:, 0], alphas=ALPHAS, num_folds=3, fold_ids=folds)
  assert_matches(fit, brute_force(X, Y, ALPHAS, folds), rtol=2e-3, cv_rtol=2e-4)


def test_kfold_ids_match_sklearn():
  for n, f in [(10, 4), (17, 5), (8, 2)]:
    ids = ridge.kfold_ids(n, f)
    for i, (_, va) in enumerate(KFold(f).split(np.zeros(n))):
      np.testing.assert_array_equal(np.flatnonzero(ids == i), va)


def test_streaming_equals_in_memory():
  X, Y = problem(6, 157, 12, 5)
  folds = ridge.kfold_ids(157, 4)
  stats = ridge.init(12, 5, 4)
  for s, e in [(0, 10), (10, 61), (61, 100), (100, 157)]:  # batches straddle fold borders
    stats = ridge.update(stats, X[s:e], Y[s:e], folds[s:e])
  streamed = ridge.solve(stats, alphas=ALPHAS)
  whole = ridge.fit(X, Y, alphas=ALPHAS)
  for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(whole)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_target_blocks_agree():
  """Blocking is pure bookkeeping: in float64 (no shape-dependent float32 rounding) it is exact."""
  X, Y = problem(8, 70, 9, 11)
  with jax.enable_x64(True):
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    a = ridge.fit(X, Y, alphas=ALPHAS, target_block=4, dtype=np.float64)  # blocks 0-3, 4-7, 7-10
    b = ridge.fit(X, Y, alphas=ALPHAS, dtype=np.float64)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("bad", [dict(alphas=[]), dict(alphas=[0.0, 1.0]), dict(alphas=[np.nan])])
def test_bad_alphas(bad):
  X, Y = problem(0, 20, 3, 1)
  with pytest.raises(ValueError, match="alphas"):
    ridge.fit(X, Y, **bad)


def test_bad_inputs():
  X, Y = problem(0, 20, 3, 2)
  with pytest.raises(ValueError, match="same n"):
    ridge.fit(X, Y[:10], alphas=ALPHAS)
  X[3, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    ridge.fit(X, Y, alphas=ALPHAS)
  stats = ridge.update(ridge.init(3, 2, 4), np.ones((4, 3)), Y[:4], np.zeros(4, int))
  fit = ridge.solve(stats, alphas=ALPHAS)  # one fold holds rows: the mean, never a crash
  assert not np.asarray(fit.fitted).any()
  np.testing.assert_allclose(np.asarray(fit.bias), Y[:4].mean(0), rtol=1e-5)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(n=st.integers(8, 60), d=st.integers(1, 40), k=st.integers(1, 4),
                  folds=st.integers(2, 5), seed=st.integers(0, 10_000),
                  per_target=st.booleans())
def test_property_float64_exact(n, d, k, folds, seed, per_target):
  """The algorithm is exact: in float64 it reproduces the brute force on any shape, n < d too."""
  hypothesis.assume(n >= 2 * folds)
  X, Y = problem(seed, n, d, k)
  w, b, chosen, cv = brute_force(X, Y, ALPHAS, ridge.kfold_ids(n, folds))
  with jax.enable_x64(True):
    fit = ridge.fit(X.astype(np.float64), Y.astype(np.float64), alphas=ALPHAS, num_folds=folds,
                    per_target=per_target, dtype=np.float64)
  np.testing.assert_allclose(np.asarray(fit.cv_mse), cv, rtol=1e-8, atol=1e-10 * cv.max())
  best = np.argmin(np.asarray(fit.cv_mse), 0) if per_target else np.full(k, np.argmin(cv.sum(1)))
  # Chosen lambdas are optimal for the reference (ties up to rounding may pick either).
  if per_target:
    assert np.all(cv[best, np.arange(k)] <= cv[chosen, np.arange(k)] * (1 + 1e-9) + 1e-12)
  np.testing.assert_array_equal(np.asarray(fit.alpha), ALPHAS[best])
  Xd, Yd = X.astype(np.float64), Y.astype(np.float64)
  xc, yc = Xd - Xd.mean(0), Yd - Yd.mean(0)
  for j in range(k):
    wj = np.linalg.solve(xc.T @ xc + ALPHAS[best[j]] * np.eye(d), xc.T @ yc[:, j])
    np.testing.assert_allclose(np.asarray(fit.weights[:, j]), wj, rtol=1e-7, atol=1e-9 * np.abs(wj).max())
    np.testing.assert_allclose(float(fit.bias[j]), Yd[:, j].mean() - Xd.mean(0) @ wj, rtol=1e-9)


# ----------------------------------------------------------------------------- float32 exactness


def assert_exact_cv(fit, ref_cv, *, rtol=1e-3, margin=1e-4):
  """The issue's guarantee: CV errors within rtol of float64, the same lambda wherever the best
  beats the runner-up by `margin` relative."""
  np.testing.assert_allclose(np.asarray(fit.cv_mse, np.float64), ref_cv, rtol=rtol, atol=0)
  ok = separated(ref_cv, margin)
  grid = np.asarray(fit.alphas)
  np.testing.assert_array_equal(np.asarray(fit.alpha)[ok], grid[np.argmin(ref_cv, 0)][ok])


@pytest.mark.parametrize("path,n,d", [("primal", 600, 120), ("primal", 300, 120), ("dual", 400, 120),
                                      ("dual", 90, 300)])
def test_float32_exact_for_nearly_noise_free_targets(path, n, d, monkeypatch):
  """ReLU-like l2-normalised features, targets from noise 1e-4 to 1 of the signal, lambdas down to
  1e-4: the expanded held-out error cancels to 1e-8 of its terms, where float32 alone is off by
  up to ~100%; the engine recomputes those targets in float64. (600, 120) takes held-out errors
  from the held-out Gram (as streamed statistics do), (300, 120) from held-out rows (folds of
  75 < d), (90, 300) is n < d."""
  noise = np.logspace(-4, 0, 12)
  X, Y = clean_problem(n + d, n, d, noise)
  fit = ridge.fit(X, Y, alphas=WIDE, path=path)
  assert fit.path == path
  w, b, chosen, cv = brute_force(X, Y, WIDE, ridge.kfold_ids(n, 4))
  assert n < d or cv.min(0)[0] < 1e-4 * Y[:, 0].astype(np.float64).var()  # nearly noise free
  assert_exact_cv(fit, cv)
  if n > d:
    assert np.asarray(fit.float64)[:3].all()  # the cleanest targets went to float64 ...
  assert not np.asarray(fit.float64)[-2:].any()  # ... the noisy ones did not need it
  # In-sample predictions agree with float64's to 1e-3 of each target's spread.
  pred = X.astype(np.float64) @ w + b
  np.testing.assert_allclose(np.asarray(ridge.predict(fit, X), np.float64), pred,
                             atol=1e-3 * Y.std(0).max(), rtol=0)
  if (path, n) == ("primal", 600):  # the check has teeth: float32 alone fails it
    monkeypatch.setattr(ridge_cv, "FLOAT32_TOLERANCE", 1e30)
    monkeypatch.setattr(ridge_cv, "CV_TOLERANCE", 1e30)
    alone = np.asarray(ridge.fit(X, Y, alphas=WIDE, path=path).cv_mse, np.float64)
    assert np.max(np.abs(alone - cv) / cv) > 1e-2


@hypothesis.settings(max_examples=16, deadline=None)
@hypothesis.given(shape=st.sampled_from([(24, 5), (40, 30), (33, 70), (61, 12), (20, 200)]),
                  folds=st.integers(2, 4), log_noise=st.floats(-4, -0.5), seed=st.integers(0, 10_000),
                  path=st.sampled_from(["primal", "dual"]), per_target=st.booleans())
@hypothesis.example(shape=(40, 30), folds=4, log_noise=-3.55, seed=1297, path="primal", per_target=True)
def test_property_float32_exact(shape, folds, log_noise, seed, path, per_target):
  """Float32 (the default) against float64 brute force on any shape, n < d too, noise down to
  1e-4 of the signal: CV errors to 1e-3, the same lambda wherever it wins by 1e-4. The explicit
  example (30 training rows for 30 features, a singular Gram) is off by 1.6e-3 without the
  eigenbasis term of the rounding estimate (ridge_sweep.basis_scale)."""
  n, d = shape
  hypothesis.assume(n >= 2 * folds)
  X, Y = clean_problem(seed, n, d, 10.0 ** (log_noise + np.array([0, 1.5, 3.0])))
  fit = ridge.fit(X, Y, alphas=WIDE, num_folds=folds, path=path, per_target=per_target)
  cv = brute_force(X, Y, WIDE, ridge.kfold_ids(n, folds))[3]
  if per_target:
    assert_exact_cv(fit, cv)
  else:
    np.testing.assert_allclose(np.asarray(fit.cv_mse, np.float64), cv, rtol=1e-3, atol=0)
    total = cv.sum(1)[:, None]
    if separated(total, 1e-4)[0]:
      assert np.all(np.asarray(fit.alpha) == np.float32(WIDE[np.argmin(total)]))


# ----------------------------------------------------------------------------- the dual path


@pytest.mark.parametrize("n,d,k", [(30, 80, 3), (57, 20, 4)])
def test_dual_float64_is_exact(n, d, k):
  """The dual path (n x n kernels), also forced on n > d, reproduces the brute force in float64."""
  X, Y = problem(n * d, n, d, k)
  folds = np.random.default_rng(n).permutation(np.arange(n) % 3)
  with jax.enable_x64(True):
    fit = ridge.fit(X.astype(np.float64), Y.astype(np.float64), alphas=ALPHAS, fold_ids=folds,
                    num_folds=3, dtype=np.float64, path="dual")
    assert fit.path == "dual"
    assert_matches(fit, brute_force(X, Y, ALPHAS, folds), rtol=1e-8, cv_rtol=1e-9)


def test_auto_path():
  X, Y = problem(9, 30, 50, 2)
  assert ridge.fit(X, Y, alphas=ALPHAS).path == "dual"  # n < d
  assert ridge.fit(X[:, :20], Y, alphas=ALPHAS).path == "primal"
  assert isinstance(ridge.init(50, 2, n=30), ridge.RidgeRows)
  assert isinstance(ridge.init(50, 2), ridge.RidgeStats)  # n unknown: memory independent of n
  assert isinstance(ridge.init(20, 2, n=30), ridge.RidgeStats)
  assert isinstance(ridge.init(20, 2, n=30, path="dual"), ridge.RidgeRows)
  with pytest.raises(ValueError, match="path"):
    ridge.init(3, 2, path="kernel")


@pytest.mark.parametrize("n_hint", [None, 70])
def test_dual_streaming_equals_in_memory(n_hint):
  """Kept rows streamed in uneven batches (buffers grown, or sized once from n) solve as fit."""
  X, Y = problem(11, 70, 90, 3)
  folds = ridge.kfold_ids(70, 4)
  stats = ridge.init(90, 3, 4, n=n_hint, path="dual")
  for s, e in [(0, 0), (0, 9), (9, 40), (40, 41), (41, 70)]:
    stats = ridge.update(stats, X[s:e], Y[s:e], folds[s:e])
  streamed = ridge.solve(stats, alphas=ALPHAS)
  whole = ridge.fit(X, Y, alphas=ALPHAS)
  for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- missing targets


def test_missing_targets_fit_on_present_rows():
  """NaN marks a missing value: each target is fitted on its present rows (grouped by presence
  pattern); a target with an empty fold falls back to its mean and is reported."""
  X, Y = problem(12, 64, 10, 5)
  Y = Y.astype(np.float64)
  rng = np.random.default_rng(0)
  Y[rng.random(64) < 0.3, 0] = np.nan  # its own pattern
  Y[rng.random(64) < 0.2, 1] = np.nan
  Y[:, 2] = np.where(np.isnan(Y[:, 1]), np.nan, Y[:, 2])  # the same pattern as target 1
  Y[16:32, 3] = np.nan  # fold 1 empty: cannot be cross-validated
  folds = ridge.kfold_ids(64, 4)
  with jax.enable_x64(True):
    fit = ridge.fit(X.astype(np.float64), Y, alphas=ALPHAS, dtype=np.float64)
  assert fit.path == "dual"
  refs = brute_force_missing(X, Y, ALPHAS, folds)
  np.testing.assert_array_equal(np.asarray(fit.fitted), [True, True, True, False, True])
  for j, ref in enumerate(refs):
    if ref is None:
      continue
    w, b, chosen, cv = ref
    np.testing.assert_allclose(np.asarray(fit.cv_mse[:, j]), cv, rtol=1e-9)
    assert float(fit.alpha[j]) == ALPHAS[chosen]
    np.testing.assert_allclose(np.asarray(fit.weights[:, j]), w, rtol=1e-7, atol=1e-9 * np.abs(w).max())
    np.testing.assert_allclose(float(fit.bias[j]), b, rtol=1e-9)
  assert np.isnan(float(fit.alpha[3])) and np.all(np.isnan(np.asarray(fit.cv_mse[:, 3])))
  np.testing.assert_array_equal(np.asarray(fit.weights[:, 3]), 0)
  np.testing.assert_allclose(float(fit.bias[3]), np.nanmean(Y[:, 3]), rtol=1e-12)
  np.testing.assert_allclose(float(fit.target_mean[3]), np.nanmean(Y[:, 3]), rtol=1e-12)
  assert int(fit.edge[3]) == 0


def test_missing_everywhere_and_primal_refuses_nan():
  X, Y = problem(13, 40, 6, 2)
  Y[:, 1] = np.nan  # never present: mean 0, weights 0
  fit = ridge.fit(X, Y, alphas=ALPHAS)
  assert not bool(fit.fitted[1]) and float(fit.bias[1]) == 0 and bool(fit.fitted[0])
  assert ridge.alpha_at_edge(fit)["fraction"] == ridge.alpha_at_edge(fit)["count"]  # one fitted
  with pytest.raises(ValueError, match="path='dual'"):
    ridge.fit(X, Y, alphas=ALPHAS, path="primal")
  with pytest.raises(ValueError, match="path='dual'"):
    ridge.update(ridge.init(6, 2), X, Y, ridge.kfold_ids(40, 4))
  with pytest.raises(ValueError, match="infinite"):
    ridge.fit(X, np.where(np.isnan(Y), np.inf, Y), alphas=ALPHAS, path="dual")


def test_missing_targets_shared_lambda():
  """A shared lambda minimises the summed CV error of the targets that could be fitted."""
  X, Y = problem(14, 48, 8, 3)
  Y[::3, 0] = np.nan
  Y[:12, 2] = np.nan  # fold 0 empty
  fit = ridge.fit(X, Y, alphas=ALPHAS, per_target=False)
  refs = brute_force_missing(X, Y, ALPHAS, ridge.kfold_ids(48, 4))
  total = refs[0][3] + refs[1][3]
  assert np.all(np.asarray(fit.alpha)[:2] == np.float32(ALPHAS[np.argmin(total)]))
  assert np.isnan(float(fit.alpha[2]))


# ----------------------------------------------------------------------------- folds=


@pytest.mark.parametrize("path", ["primal", "dual"])
def test_folds_subset_equals_fit_on_those_rows(path):
  """solve(stats, folds=S) leaves the other folds out entirely: as fit on S's rows alone."""
  X, Y = problem(15, 90, 12, 3)
  fold_ids = np.random.default_rng(1).permutation(np.arange(90) % 5)
  stats = ridge.init(12, 3, 5, path=path)
  for s in range(0, 90, 25):
    stats = ridge.update(stats, X[s:s + 25], Y[s:s + 25], fold_ids[s:s + 25])
  keep = [0, 2, 3, 4]
  sub = ridge.solve(stats, alphas=ALPHAS, folds=[4, 0, 3, 2])
  rows = np.isin(fold_ids, keep)
  renumbered = np.searchsorted(keep, fold_ids[rows])
  ref = ridge.fit(X[rows], Y[rows], alphas=ALPHAS, fold_ids=renumbered, path=path)
  for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
  assert_matches(sub, brute_force(X[rows], Y[rows], ALPHAS, renumbered), rtol=2e-3, cv_rtol=2e-4,
                 check_alpha=False)
  for bad, msg in (([1], "at least 2"), ([0, 0, 1], "distinct"), ([0, 5], "distinct")):
    with pytest.raises(ValueError, match=msg):
      ridge.solve(stats, alphas=ALPHAS, folds=bad)


@pytest.mark.parametrize("path", ["primal", "dual"])
def test_folds_without_rows_are_left_out(path):
  """A fold that got no rows (a small run, a head whose rows are few) changes nothing: CV runs
  over the folds that hold rows, as the float64 brute force on those folds; with fewer than two
  such folds every target predicts its mean over the rows there."""
  X, Y = problem(16, 40, 6, 2)
  fold_ids = np.array([0, 2, 3] * 13 + [0])  # fold 1 empty
  fit = ridge.fit(X, Y, alphas=ALPHAS, fold_ids=fold_ids, num_folds=4, path=path, dtype="float32")
  assert_matches(fit, brute_force(X, Y, ALPHAS, fold_ids), rtol=2e-3, cv_rtol=2e-4)
  assert np.asarray(fit.fitted).all()
  stats = ridge.init(6, 2, 4, path=path)
  stats = ridge.update(stats, X, Y, fold_ids)
  one = ridge.solve(stats, alphas=ALPHAS, folds=[1, 2])  # fold 1 empty: one fold left
  assert not np.asarray(one.fitted).any() and np.isnan(np.asarray(one.alpha)).all()
  np.testing.assert_allclose(np.asarray(one.bias), Y[fold_ids == 2].mean(0), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(one.weights), 0)
  np.testing.assert_allclose(np.asarray(ridge.predict(one, X[:3])), np.tile(Y[fold_ids == 2].mean(0), (3, 1)),
                             rtol=1e-5)
  none = ridge.solve(ridge.init(6, 2, 4, path=path), alphas=ALPHAS)
  np.testing.assert_array_equal(np.asarray(none.bias), 0)


# ----------------------------------------------------------------------------- lambda grid edges


def edge_problem():
  """Target 0 noise free (wants lambda -> 0), target 1 pure noise (lambda -> inf), target 2 in
  between."""
  rng = np.random.default_rng(17)
  X = rng.normal(size=(80, 6)).astype(np.float32)
  Y = np.stack([X @ rng.normal(size=6), rng.normal(size=80), X @ rng.normal(size=6) + 3 * rng.normal(size=80)], 1)
  return X, Y.astype(np.float32)


def test_alpha_at_edge_reported():
  X, Y = edge_problem()
  fit = ridge.fit(X, Y, alphas=ALPHAS)
  np.testing.assert_array_equal(np.argmin(brute_force(X, Y, ALPHAS, ridge.kfold_ids(80, 4))[3], 0), [0, 6, 3])
  np.testing.assert_array_equal(np.asarray(fit.edge), [-1, 1, 0])
  assert ridge.alpha_at_edge(fit) == {"count": 2, "fraction": 2 / 3, "low": 1, "high": 1}
  const = np.concatenate([Y, np.full((80, 1), 2.0, np.float32)], 1)  # flat curve: at no edge
  assert int(ridge.fit(X, const, alphas=ALPHAS).edge[3]) == 0


@pytest.mark.parametrize("low", [True, False])
def test_extend_grid_widens_by_decades(low):
  """extend_grid adds decades at the grid's density on the side where a target sits at the
  edge, no more than needed, and equals a plain fit on the widened grid."""
  X, Y = edge_problem()
  folds = ridge.kfold_ids(80, 4)
  grid = np.logspace(1, 3, 5) if low else np.logspace(-3, -1, 5)  # target 2's best lies outside
  fit = ridge.fit(X, Y[:, [2]], alphas=grid, extend_grid=True)
  a = np.asarray(fit.alphas, np.float64)
  extra = int(round(np.log10(grid[0] / a[0]) if low else np.log10(a[-1] / grid[-1])))
  assert 1 <= extra < ridge_cv.MAX_EXTRA_DECADES
  assert (a[-1] if low else a[0]) == pytest.approx(grid[-1] if low else grid[0], rel=1e-6)
  np.testing.assert_allclose(np.diff(np.log10(a)), 0.5, rtol=1e-4)
  assert int(fit.edge[0]) == 0
  cv = brute_force(X, Y[:, [2]], a, folds)[3]
  assert_exact_cv(fit, cv)
  fewer = cv[2:, 0] if low else cv[:-2, 0]  # one decade less would leave it at the edge: minimal
  assert np.argmin(fewer) == (0 if low else fewer.size - 1)
  plain = ridge.fit(X, Y[:, [2]], alphas=a)
  np.testing.assert_allclose(np.asarray(fit.cv_mse), np.asarray(plain.cv_mse), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(fit.alpha), np.asarray(plain.alpha))


def test_extend_grid_is_bounded():
  """A noise-free target wants lambda -> 0: the grid stops MAX_EXTRA_DECADES below, and the
  target is still reported at the edge. A grid of one value has no edge."""
  X, Y = edge_problem()
  grid = np.logspace(1, 3, 5)
  fit = ridge.fit(X, Y[:, [0, 2]], alphas=grid, extend_grid=True)
  a = np.asarray(fit.alphas, np.float64)
  assert a[0] == pytest.approx(10.0 ** (1 - ridge_cv.MAX_EXTRA_DECADES), rel=1e-5)
  assert a[-1] == pytest.approx(1e3, rel=1e-6)
  np.testing.assert_array_equal(np.asarray(fit.edge), [-1, 0])
  assert ridge.alpha_at_edge(fit)["low"] == 1
  assert not bool(ridge.fit(X, Y[:, [2]], alphas=[1.0], extend_grid=True).edge[0])


# ----------------------------------------------------------------------------- moments


@pytest.mark.parametrize("path", ["primal", "dual"])
def test_moments(path):
  X, Y = problem(17, 50, 7, 3)
  stats = ridge.init(7, 3, 4, path=path)
  stats = ridge.update(stats, X, Y, ridge.kfold_ids(50, 4))
  mean, var = ridge.target_moments(stats)
  np.testing.assert_allclose(mean, Y.astype(np.float64).mean(0), rtol=1e-9)
  np.testing.assert_allclose(var, Y.astype(np.float64).var(0), rtol=1e-7)
  W = np.random.default_rng(0).normal(size=(7, 2))
  p = X.astype(np.float64) @ W
  pm, pc = ridge.projection_moments(stats, W)
  np.testing.assert_allclose(pm, p.mean(0), rtol=1e-9)
  np.testing.assert_allclose(pc, np.cov(p.T, bias=True), rtol=1e-7)
  with pytest.raises(ValueError, match="W must be"):
    ridge.projection_moments(stats, W[:3])
