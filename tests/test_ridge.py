"""Ridge engine against an independent float64 brute force and scikit-learn."""
import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from persistent import ridge

ALPHAS = np.logspace(-3, 3, 7)


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
  with pytest.raises(ValueError, match="samples per fold"):
    stats = ridge.update(ridge.init(3, 2, 4), np.ones((4, 3)), Y[:4], np.zeros(4, int))
    ridge.solve(stats, alphas=ALPHAS)


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
