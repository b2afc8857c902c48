"""Sharded ridge statistics and solves: 1, 2, 4, 8 devices (and 'model' splits) match one device.

The multi-device tests need several JAX devices, which a CPU process gets only from
XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts; `test_on_eight_cpu_devices`
reruns this file in such a subprocess (the inner tests skip in an ordinary run).
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from persistent import config_lib, data, distributed, ridge
from test_ridge import ALPHAS, WIDE, assert_exact_cv, brute_force, clean_problem, edge_problem, problem, separated

INNER = os.environ.get("PERSISTENT_MULTIDEVICE") == "1"
multidevice = pytest.mark.skipif(not INNER, reason="runs inside test_on_eight_cpu_devices")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Meshes compared with one device: pure data parallel, and targets split over 'model'.
MESHES = [dict(devices=1), dict(devices=2), dict(devices=4), dict(devices=8), dict(devices=8, model=2)]


# ----------------------------------------------------------------------------- one process


def test_on_eight_cpu_devices():
  env = dict(os.environ, PERSISTENT_MULTIDEVICE="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         os.path.join("tests", "test_distributed.py"), "-k", "multidevice"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_make_mesh():
  mesh = distributed.make_mesh(None)
  assert mesh.axis_names == ("data", "model") and mesh.size == len(jax.devices())
  assert distributed.make_mesh(dict(devices=1, model=1)).devices.shape == (1, 1)
  with pytest.raises(ValueError, match="available"):
    distributed.make_mesh(dict(devices=len(jax.devices()) + 1))
  with pytest.raises(ValueError, match="divide"):
    distributed.make_mesh(dict(devices=1, model=2))
  with pytest.raises(ValueError, match="unknown mesh keys"):
    distributed.make_mesh(dict(device=1))


def test_config_defaults_and_single_process_initialize():
  c = config_lib.base("rgb")
  assert c.mesh.to_dict() == dict(devices=-1, model=1)
  assert distributed.initialize(c) is False  # no coordinator: one process, nothing started
  assert distributed.mesh_from_config(c).size == len(jax.devices())
  c.distributed.coordinator_address, c.distributed.num_processes, c.distributed.process_id = "h:1", 2, 2
  with pytest.raises(ValueError, match="process_id"):
    distributed.initialize(c)


def test_shard_source_is_a_contiguous_partition():
  src = data.open_source("synthetic:n=11,size=16")
  parts = [distributed.shard_source(src, i, 4) for i in range(4)]
  assert [len(s) for s, _ in parts] == [3, 3, 3, 2] == [len(i) for _, i in parts]
  np.testing.assert_array_equal(np.concatenate([i for _, i in parts]), np.arange(11))
  assert parts[1][0].ids == src.ids[3:6]
  np.testing.assert_array_equal(parts[3][0][1]["image"], src[10]["image"])
  assert distributed.share_size(11, 4) == 3
  assert distributed.shard_source(src, 0, 1)[0] is src
  with pytest.raises(ValueError):
    distributed.shard_source(src, 4, 4)


# ----------------------------------------------------------------------------- several devices


def assert_same_fit(fit, ref, rtol):
  """CV errors agree everywhere; lambdas, weights and biases wherever the best lambda wins clearly
  (on a near tie, float32 rounding may pick the neighbouring lambda, and the weights with it)."""
  assert fit.weights.shape == ref.weights.shape and fit.cv_mse.shape == ref.cv_mse.shape
  b = np.asarray(ref.cv_mse)
  np.testing.assert_allclose(np.asarray(fit.cv_mse), b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg="cv_mse")
  ok = separated(np.asarray(ref.cv_mse, np.float64), margin=1e-4)
  assert ok.mean() > 0.5
  np.testing.assert_array_equal(np.asarray(fit.alpha)[ok], np.asarray(ref.alpha)[ok])
  for name in ("weights", "bias"):
    a, b = np.asarray(getattr(fit, name))[..., ok], np.asarray(getattr(ref, name))[..., ok]
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=name)
  np.testing.assert_array_equal(np.asarray(fit.alphas), np.asarray(ref.alphas))


@multidevice
def test_multidevice_float32_matches_one_device():
  assert len(jax.devices()) == 8
  # n = 103 is not a multiple of the batch size 16 (nor of 8); k = 7 is not a multiple of any mesh.
  X, Y = problem(0, 103, 12, 7)
  ref = ridge.fit(X, Y, alphas=ALPHAS, batch_size=16)
  for spec in MESHES:
    fit = distributed.fit(X, Y, distributed.make_mesh(spec), alphas=ALPHAS, batch_size=16, target_block=2)
    assert_same_fit(fit, ref, rtol=1e-5)
  shared = distributed.fit(X, Y, distributed.make_mesh(dict(devices=8)), alphas=ALPHAS, per_target=False)
  assert_same_fit(shared, ridge.fit(X, Y, alphas=ALPHAS, per_target=False), rtol=1e-5)


@multidevice
def test_multidevice_float64_is_exact():
  X, Y = problem(1, 50, 70, 5)  # n < d: the rank-truncated basis
  w, b, chosen, cv = brute_force(X, Y, ALPHAS, ridge.kfold_ids(50, 4))
  with jax.enable_x64(True):
    for spec in (dict(devices=8), dict(devices=4, model=2)):
      fit = distributed.fit(X.astype(np.float64), Y.astype(np.float64), distributed.make_mesh(spec),
                            alphas=ALPHAS, dtype=np.float64, batch_size=7)
      np.testing.assert_allclose(np.asarray(fit.cv_mse), cv, rtol=1e-9, atol=1e-11 * cv.max())
      np.testing.assert_array_equal(np.asarray(fit.alpha), ALPHAS[chosen])
      np.testing.assert_allclose(np.asarray(fit.weights), w, rtol=1e-8, atol=1e-10 * np.abs(w).max())
      np.testing.assert_allclose(np.asarray(fit.bias), b, rtol=1e-9)


@multidevice
def test_multidevice_target_parallel_solve_of_one_device_stats():
  """Statistics from ridge.update, solved with targets over 8 devices in blocks: many padded columns."""
  X, Y = problem(2, 64, 10, 37)
  Y[:, 3] = 1.5  # a constant target among them
  stats = ridge.init(10, 37, 4)
  for s in range(0, 64, 20):
    stats = ridge.update(stats, X[s:s + 20], Y[s:s + 20], ridge.kfold_ids(64, 4)[s:s + 20])
  ref = ridge.solve(stats, alphas=ALPHAS)
  fit = distributed.solve(stats, distributed.make_mesh(dict(devices=8, model=4)), alphas=ALPHAS, target_block=3)
  assert_same_fit(fit, ref, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(fit.weights[:, 3]), 0, atol=1e-6)


@multidevice
def test_multidevice_accumulator_checks_inputs():
  acc = distributed.Accumulator(distributed.make_mesh(dict(devices=4)), 3, 2, 4)
  with pytest.raises(ValueError, match="shapes"):
    acc.update(np.ones((4, 3)), np.ones((4, 3)), np.zeros(4, int))
  with pytest.raises(ValueError, match="fold ids"):
    acc.update(np.ones((4, 3)), np.ones((4, 2)), np.full(4, 4))
  with pytest.raises(ValueError, match="NaN"):
    acc.update(np.full((4, 3), np.nan), np.ones((4, 2)), np.zeros(4, int))
  acc.update(np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0, int))  # empty first batch: ignored
  acc.update(np.ones((4, 3)), np.full((4, 2), 2.0), np.zeros(4, int))
  fit = acc.solve(alphas=ALPHAS)  # one fold holds rows: nothing to cross-validate, the mean
  assert not np.asarray(fit.fitted).any()
  np.testing.assert_allclose(np.asarray(fit.bias), 2.0)
  np.testing.assert_array_equal(np.asarray(fit.weights), 0)


@multidevice
def test_multidevice_fold_without_rows_left_out():
  """Fold 1 empty: the sharded solve equals the single-device one on the folds that hold rows."""
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(60, 5)), rng.normal(size=(60, 7))
  folds = np.array([0, 2, 3] * 20)
  acc = distributed.Accumulator(distributed.make_mesh(dict(devices=4)), 5, 7, 4)
  acc.update(x, y, folds)
  got, ref = acc.solve(alphas=ALPHAS), ridge.fit(x, y, alphas=ALPHAS, fold_ids=folds, num_folds=4)
  np.testing.assert_allclose(np.asarray(got.cv_mse), np.asarray(ref.cv_mse), rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(got.alpha), np.asarray(ref.alpha))
  np.testing.assert_allclose(np.asarray(got.weights), np.asarray(ref.weights), rtol=1e-3, atol=1e-5)


@multidevice
def test_multidevice_rgb_task_metrics_match(tmp_path, monkeypatch):
  """The RGB task end to end (sharded extraction, accumulation, solve) on 1 vs 4 devices."""
  from configs import rgb as rgb_config
  from persistent import experiment, probe
  from test_features import tiny_backbone
  monkeypatch.setattr(probe, "backbone_from_config", lambda config: tiny_backbone())
  metrics = {}
  for devices, model in ((1, 1), (4, 2)):
    c = rgb_config.get_config()
    c.data.train, c.data.test = "synthetic:n=40,size=32", "synthetic:n=8,size=32,seed=1"
    c.backbone.layer, c.rgb.size, c.batch_size, c.features.cache_dir = "map", 6, 16, ""
    c.num_figure_examples = 2
    c.mesh.devices, c.mesh.model = devices, model
    metrics[devices] = experiment.run(c, str(tmp_path / f"d{devices}"))
  assert metrics[4]["n_train"] == 40 and metrics[4]["num_targets"] == 108
  def leaves(m, prefix=""):
    for key, value in m.items():
      if isinstance(value, dict):
        yield from leaves(value, f"{prefix}{key}/")
      elif key != "seconds":
        yield prefix + key, value

  four = dict(leaves(metrics[4]))
  for key, value in leaves(metrics[1]):
    np.testing.assert_allclose(four[key], value, rtol=1e-4, err_msg=key)


@multidevice
def test_multidevice_float32_recomputes_in_float64():
  """Nearly noise-free targets on 8 devices: the sharded sweep flags them, they are recomputed in
  float64 on gathered columns, and CV errors and lambdas match float64 brute force."""
  X, Y = clean_problem(3, 300, 40, np.logspace(-4, 0, 9))
  ref = brute_force(X, Y, WIDE, ridge.kfold_ids(300, 4))[3]
  one = ridge.fit(X, Y, alphas=WIDE, path="primal")
  for spec in (dict(devices=8), dict(devices=8, model=4)):
    fit = distributed.fit(X, Y, distributed.make_mesh(spec), alphas=WIDE, batch_size=64, target_block=2)
    assert_exact_cv(fit, ref)
    assert np.asarray(fit.float64).any()
    np.testing.assert_array_equal(np.asarray(fit.float64), np.asarray(one.float64))
    assert_same_fit(fit, one, rtol=1e-4)


@multidevice
def test_multidevice_folds_extend_grid_and_moments():
  X, Y = problem(4, 90, 11, 6)
  fold_ids = np.random.default_rng(2).permutation(np.arange(90) % 5)
  ref = ridge.fit(X, Y, alphas=ALPHAS, fold_ids=fold_ids, num_folds=5, folds=[0, 1, 3, 4])
  grid = np.logspace(0, 1, 3)
  ext = ridge.fit(*edge_problem(), alphas=grid, extend_grid=True)
  mesh = distributed.make_mesh(dict(devices=8, model=2))
  acc = distributed.Accumulator(mesh, 11, 6, 5)
  for s, e in [(0, 0), (0, 33), (33, 34), (34, 90)]:  # uneven batches, one empty
    acc.update(X[s:e], Y[s:e], fold_ids[s:e])
  assert_same_fit(acc.solve(alphas=ALPHAS, folds=[4, 0, 1, 3]), ref, rtol=1e-5)
  stats = acc.reduce()
  mean, var = ridge.target_moments(stats)
  np.testing.assert_allclose(mean, Y.astype(np.float64).mean(0), rtol=1e-9)
  np.testing.assert_allclose(var, Y.astype(np.float64).var(0), rtol=1e-7)
  W = np.random.default_rng(0).normal(size=(11, 3))
  pm, pc = ridge.projection_moments(stats, W)
  np.testing.assert_allclose(pc, np.cov((X.astype(np.float64) @ W).T, bias=True), rtol=1e-7)
  got = distributed.fit(*edge_problem(), mesh, alphas=grid, extend_grid=True)
  np.testing.assert_array_equal(np.asarray(got.alphas), np.asarray(ext.alphas))
  assert_same_fit(got, ext, rtol=1e-5)


@multidevice
def test_multidevice_dual_path_with_missing_targets():
  """Kept rows on a mesh (n < d, NaN targets, a fold subset) solve exactly as on one device."""
  X, Y = problem(5, 60, 150, 4)
  Y[::4, 1] = np.nan
  Y[:15, 3] = np.nan  # fold 0 empty: fallback unless fold 0 is left out
  ref = ridge.fit(X, Y, alphas=ALPHAS)
  sub = ridge.fit(X, Y, alphas=ALPHAS, folds=[1, 2, 3])
  assert ref.path == "dual" and not bool(ref.fitted[3]) and bool(sub.fitted[3])
  for spec in (dict(devices=8), dict(devices=4, model=2)):
    mesh = distributed.make_mesh(spec)
    acc = distributed.Accumulator(mesh, 150, 4, 4, n=60)
    assert acc.path == "dual"
    for s in range(0, 60, 16):
      acc.update(X[s:s + 16], Y[s:s + 16], ridge.kfold_ids(60, 4)[s:s + 16])
    for fit, want in ((acc.solve(alphas=ALPHAS), ref), (acc.solve(alphas=ALPHAS, folds=[1, 2, 3]), sub)):
      for a, b in zip(jax.tree.leaves(fit), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- several processes


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one():
  """Two JAX processes (2 CPU devices each, a 2x2 mesh) fit a probe.Pipeline head on their halves
  of a source."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip())
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(i), str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=900)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
    assert "MATCH" in out, out[-2000:]


def _two_process_worker(process_id: int, port: int) -> None:
  from persistent import features, probe
  from persistent.tasks import rgb
  from test_features import tiny_backbone
  c = config_lib.base("rgb")
  c.distributed.coordinator_address, c.distributed.num_processes = f"localhost:{port}", 2
  c.distributed.process_id = process_id
  c.mesh.model = 2
  c.backbone.layer, c.batch_size, c.features.cache_dir, c.features.reduce = "map", 8, "", "flatten"
  c.ridge.dtype = "float64"  # 256 features for 41 images: float32 rounding would dominate the check
  jax.config.update("jax_enable_x64", True)
  assert distributed.initialize(c) and jax.process_count() == 2 and len(jax.devices()) == 4
  src = data.open_source("synthetic:n=41,size=16")  # shares of 21 and 20 rows: 3 steps each
  net = tiny_backbone()
  targets = lambda exs: rgb.targets(exs, 3)
  fit = probe.Pipeline(c, backbone=net).fit(src, [probe.Head("rgb", 27, targets)]).fits["rgb"]
  X = features.extract(net, "map", src, batch_size=8, progress=False, reduce="flatten")
  Y = targets(list(src))
  ref = ridge.fit(X.astype(np.float64), Y.astype(np.float64), alphas=c.ridge.alphas, batch_size=8,
                  dtype=np.float64)
  assert_same_fit(fit, ref, rtol=1e-6)  # n < d, correlated ReLU features: condition ~1e9
  # Small Python objects and uneven rows gathered in process order.
  assert distributed.allgather_objects({"p": process_id, "r": [process_id] * (process_id + 1)}) == [
      {"p": 0, "r": [0]}, {"p": 1, "r": [1, 1]}]
  (got,) = distributed.gather_rows(np.full((3 - process_id, 2), process_id))
  np.testing.assert_array_equal(got[:, 0], [0, 0, 0, 1, 1])
  # Both paths with each process feeding its own half in uneven batches (one process idle at
  # times), NaN targets on the dual path, and a fold subset.
  X, Y = problem(6, 50, 70, 3)
  fold_ids = ridge.kfold_ids(50, 4)
  half = slice(0, 27) if process_id == 0 else slice(27, 50)
  batches = [(0, 10), (10, 10), (10, 27)] if process_id == 0 else [(0, 20), (20, 23), (23, 23)]
  Yd = Y.copy()
  Yd[::5, 2] = np.nan
  for path, targets in (("primal", Y), ("dual", Yd)):
    acc = distributed.Accumulator(distributed.make_mesh(dict(model=2)), 70, 3, 4, dtype=np.float64, path=path)
    xs, ys, fs = X[half].astype(np.float64), targets[half].astype(np.float64), fold_ids[half]
    for s, e in batches:
      acc.update(xs[s:e], ys[s:e], fs[s:e])
    fit = acc.solve(alphas=ALPHAS, folds=[0, 2, 3])
    want = ridge.fit(X.astype(np.float64), targets.astype(np.float64), alphas=ALPHAS, dtype=np.float64,
                     path=path, folds=[0, 2, 3])
    assert fit.path == path
    assert_same_fit(fit, want, rtol=1e-9)
  print("MATCH", process_id, flush=True)


if __name__ == "__main__":
  _two_process_worker(int(sys.argv[1]), int(sys.argv[2]))
