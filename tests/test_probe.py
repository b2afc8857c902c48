"""The probing pipeline against ridge on arrays: folds and groups, both engine paths, missing
targets, selected heads, several rows per example, cross-fitting without leakage, sums, records."""
import numpy as np
import pytest

from configs import rgb as rgb_config
from persistent import data, features, probe, ridge
from test_features import tiny_backbone

ALPHAS = (0.01, 0.1, 1.0, 10.0)


def pipeline(tmp_path, layer="pooled", **ridge_overrides):
  c = rgb_config.get_config()
  c.backbone.layer, c.batch_size, c.features.cache_dir = layer, 8, str(tmp_path / "cache")
  c.ridge.alphas = ALPHAS
  for k, v in ridge_overrides.items():
    c.ridge[k] = v
  return probe.Pipeline(c, tiny_backbone())


def attrs(examples, names=("red", "green", "radius")):
  return np.array([[e["attributes"][n] for n in names] for e in examples], np.float32)


def reference(pipe, source, y, fold_ids, **kw):
  x = features.extract(pipe.backbone, pipe.layer, source, batch_size=8, progress=False)
  return ridge.fit(x, y, alphas=ALPHAS, num_folds=int(fold_ids.max()) + 1, fold_ids=fold_ids, **kw), x


def close(fit, ref, x, atol=2e-5):
  np.testing.assert_allclose(x @ np.asarray(fit.weights) + np.asarray(fit.bias),
                             x @ np.asarray(ref.weights) + np.asarray(ref.bias), atol=atol)
  np.testing.assert_allclose(np.asarray(fit.cv_mse), np.asarray(ref.cv_mse), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("layer", ["pooled", "map"])  # d = 4 < n (statistics); d = 256 > n (rows)
def test_fit_equals_ridge_on_the_extracted_features(tmp_path, layer):
  src = data.open_source("synthetic:n=30,size=32")
  pipe = pipeline(tmp_path, layer)
  fitted = pipe.fit(src, [probe.Head("a", 3, attrs)])
  y = attrs(list(src))
  ref, x = reference(pipe, src, y, ridge.kfold_ids(30, 4))  # contiguous folds, as KFold
  close(fitted.fits["a"], ref, x)


def test_groups_share_a_fold_and_seeded_folds_are_balanced():
  folds = probe.assign_folds(10, 4, seed=3)
  assert sorted(np.bincount(folds).tolist()) == [2, 2, 3, 3]
  np.testing.assert_array_equal(folds, probe.assign_folds(10, 4, seed=3))
  assert not np.array_equal(folds, probe.assign_folds(10, 4, seed=4))
  np.testing.assert_array_equal(probe.assign_folds(10, 4), ridge.kfold_ids(10, 4))


def test_grouped_folds_equal_ridge_with_those_folds(tmp_path):
  src = data.open_source("synthetic:n=24,size=32")
  pipe = pipeline(tmp_path)
  groups = np.arange(24) // 3  # e.g. three crops per face
  fitted = pipe.fit(src, [probe.Head("a", 3, attrs)], groups=groups, fold_seed=5)
  fold_ids = probe.assign_folds(8, 4, seed=5)[groups]
  assert all(len(set(fold_ids[groups == g])) == 1 for g in range(8))
  ref, x = reference(pipe, src, attrs(list(src)), fold_ids)
  close(fitted.fits["a"], ref, x)
  with pytest.raises(ValueError, match="3 independent examples"):
    pipe.fit(src, [probe.Head("a", 3, attrs)], groups=np.arange(24) // 8)


def test_missing_targets_fit_on_present_rows_and_fall_back_to_the_mean(tmp_path):
  src = data.open_source("synthetic:n=32,size=32")
  pipe = pipeline(tmp_path, "map")
  y = attrs(list(src))
  y[::3, 0] = np.nan  # target 0 present on two rows of three
  y[4:, 2] = np.nan  # target 2 present on 4 rows only: fewer than CV needs
  by_id = dict(zip(src.ids, y))
  fitted = pipe.fit(src, [probe.Head("a", 3, lambda exs: np.stack([by_id[e["id"]] for e in exs]), missing=True)])
  fit = fitted.fits["a"]
  x = features.extract(pipe.backbone, pipe.layer, src, batch_size=8, progress=False)
  folds = ridge.kfold_ids(32, 4)
  rows = ~np.isnan(y[:, 0])
  ref = ridge.fit(x[rows], y[rows, :1], alphas=ALPHAS, num_folds=4, fold_ids=folds[rows])
  np.testing.assert_allclose(x @ np.asarray(fit.weights[:, 0]) + float(fit.bias[0]),
                             (x @ np.asarray(ref.weights) + np.asarray(ref.bias))[:, 0], atol=2e-5)
  np.testing.assert_allclose(np.asarray(fit.weights[:, 2]), 0)
  assert float(fit.bias[2]) == pytest.approx(y[:4, 2].mean(), rel=1e-6) and np.isnan(float(fit.alpha[2]))
  with pytest.raises(ValueError, match="NaN"):
    pipe.fit(src, [probe.Head("b", 3, lambda exs: np.stack([by_id[e["id"]] for e in exs]))])


def test_selected_heads_and_several_rows_per_example(tmp_path):
  src = data.open_source("synthetic:n=40,size=32")
  pipe = pipeline(tmp_path)
  odd = lambda e: int(e["id"].rsplit(":", 1)[1]) % 2 == 1
  # two rows per example: (feature, attribute) and (2 * feature, NaN: not a sample)
  two = probe.Head("two", 1, lambda exs: np.stack([attrs(exs)[:, 0], np.full(len(exs), np.nan)], 1).reshape(-1, 1),
                   inputs=lambda exs, f: np.concatenate([f, 2 * f], 1), input_dim=4, rows_per_example=2)
  fitted = pipe.fit(src, [probe.Head("odd", 3, attrs, select=odd), two])
  x = features.extract(pipe.backbone, pipe.layer, src, batch_size=8, progress=False)
  y = attrs(list(src))
  rows = np.arange(1, 40, 2)
  ref = ridge.fit(x[rows], y[rows], alphas=ALPHAS, num_folds=4, fold_ids=ridge.kfold_ids(40, 4)[rows])
  close(fitted.fits["odd"], ref, x[rows])
  ref_two = ridge.fit(x, y[:, :1], alphas=ALPHAS, num_folds=4)
  close(fitted.fits["two"], ref_two, x)
  preds, recs = pipe.predict(src, [probe.Head("odd", 3, attrs, select=odd), two], fitted.fits,
                             record=lambda b: [e["id"] for e in b.examples])
  assert recs == src.ids  # source order
  assert np.isnan(preds["odd"][::2]).all() and np.isfinite(preds["odd"][1::2]).all()
  assert preds["two"].shape == (40, 2)


def test_crossfit_never_sees_the_predicted_fold(tmp_path):
  src = data.open_source("synthetic:n=24,size=32")
  pipe = pipeline(tmp_path, "map")
  groups = np.arange(24) // 2
  y = attrs(list(src))

  def run(targets):
    by_id = dict(zip(src.ids, targets))
    head = probe.Head("a", 3, lambda exs: np.stack([by_id[e["id"]] for e in exs]))
    fitted = pipe.fit(src, [head], groups=groups, fold_seed=1)
    return pipe.predict(src, [head], {"a": fitted.crossfit("a")}, crossfit=(fitted, groups))[0]["a"], fitted
  oof, fitted = run(y)
  folds = fitted.group_folds[groups]
  x = features.extract(pipe.backbone, pipe.layer, src, batch_size=8, progress=False)
  for f in range(4):
    keep = folds != f
    renumbered = np.unique(folds[keep], return_inverse=True)[1]
    ref = ridge.fit(x[keep], y[keep], alphas=ALPHAS, num_folds=3, fold_ids=renumbered)
    np.testing.assert_allclose(oof[folds == f], np.asarray(ridge.predict(ref, x[folds == f])), atol=2e-5)
  moved = y.copy()
  moved[folds == 0] += 100.0  # a fold's own targets must not move its predictions
  np.testing.assert_allclose(run(moved)[0][folds == 0], oof[folds == 0], atol=1e-5)


def test_sums_and_records_cover_every_example_once(tmp_path):
  src = data.open_source("synthetic:n=19,size=32")
  pipe = pipeline(tmp_path)
  fitted = pipe.fit(src, [probe.Head("a", 3, attrs)], sums={"n": lambda exs: np.array([len(exs)])},
                    collect=lambda b: list(b.index))
  assert int(fitted.sums["n"][0]) == 19 and fitted.records == list(range(19))
  assert pipe.records(src, lambda exs: [e["id"] for e in exs]) == src.ids


def test_moments_of_targets_and_projections(tmp_path):
  src = data.open_source("synthetic:n=30,size=32")
  for layer in ("pooled", "map"):
    pipe = pipeline(tmp_path, layer)
    fitted = pipe.fit(src, [probe.Head("a", 3, attrs)])
    y = attrs(list(src)).astype(np.float64)
    mean, var = fitted.target_moments("a")
    np.testing.assert_allclose(mean, y.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, y.var(0), rtol=1e-3)
    x = features.extract(pipe.backbone, pipe.layer, src, batch_size=8, progress=False).astype(np.float64)
    w = np.random.default_rng(0).normal(size=(x.shape[1], 2))
    m, cov = fitted.projection_moments("a", w)
    np.testing.assert_allclose(m, (x @ w).mean(0), rtol=1e-4)
    np.testing.assert_allclose(cov, np.cov((x @ w).T, bias=True), rtol=1e-3, atol=1e-6)
