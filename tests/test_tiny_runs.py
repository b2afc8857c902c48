"""Every task's `:tiny` config end to end: run twice in two processes (other hash seeds), on 1 and
on 4 (forced CPU) devices, with byte-identical metrics.json apart from timing fields and 1 device
agreeing with 4; targets split over devices for rgb and segmentation; landmarks and segmentation
on two real processes against one.

The 4-device runs need XLA_FLAGS=--xla_force_host_platform_device_count=4 before JAX starts:
`test_tiny_runs_on_four_devices` reruns this file in such a subprocess (the inner test skips in an
ordinary run); the two-process test starts two launch.py processes on localhost.
"""
import importlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("rgb", "landmarks", "segmentation", "keypoints", "directions")
INNER = os.environ.get("PERSISTENT_TINY_DEVICES") == "1"
NOT_COMPARED = {"seconds", "peak_rss_mb"}


def tiny(task, cache_dir=""):
  c = importlib.import_module(f"configs.{task}").get_config("tiny")
  c.features.cache_dir = cache_dir
  return c


def numbers(tree, prefix=""):
  """{dotted key: float} of every number in a metrics tree."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k not in NOT_COMPARED:
        out.update(numbers(v, f"{prefix}.{k}" if prefix else k))
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      out.update(numbers(v, f"{prefix}[{i}]"))
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and tree is not None:
    out[prefix] = float(tree)
  return out


def assert_same_metrics(got, want, rtol=1e-4):
  a, b = numbers(got), numbers(want)
  assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
  bad = {k: (a[k], b[k]) for k in a
         if not (np.isnan(a[k]) and np.isnan(b[k])) and not np.isclose(a[k], b[k], rtol=rtol, atol=1e-7)}
  assert not bad, bad


def test_tiny_runs_on_four_devices():
  env = dict(os.environ, PERSISTENT_TINY_DEVICES="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         os.path.join("tests", "test_tiny_runs.py"), "-k", "inner"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


@pytest.mark.skipif(not INNER, reason="runs inside test_tiny_runs_on_four_devices")
@pytest.mark.parametrize("task", ["rgb", "segmentation"])
def test_inner_targets_split_over_devices_agree(task, tmp_path):
  """A ('data', 'model') = (2, 2) mesh, targets split, against one device (the pure data-parallel
  (4, 1) mesh of every task is checked by test_same_command_twice_gives_identical_metrics)."""
  import jax
  from persistent import experiment
  assert len(jax.devices()) == 4
  runs = {}
  meshes = ((1, 1), (4, 2))
  for devices, model in meshes:
    c = tiny(task)
    c.mesh.devices, c.mesh.model = devices, model
    runs[devices, model] = experiment.run(c, str(tmp_path / f"{devices}x{model}"))
  for mesh in meshes[1:]:
    assert_same_metrics(runs[mesh], runs[1, 1])


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("task", ["landmarks", "segmentation"])
def test_two_processes_agree_with_one(task, tmp_path):
  """Two launch.py processes (each one CPU device) share the run; process 0's metrics.json equals a
  one-process run's. In float64: float32 rounding, which differs with the threads each process
  gets, would dominate the comparison on these tiny, ill-conditioned problems."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  common = [sys.executable, "launch.py", f"--config=configs/{task}.py:tiny", "--config.features.cache_dir=",
            "--config.ridge.dtype=float64"]
  one = subprocess.run(common + [f"--workdir={tmp_path / 'one'}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
  assert one.returncode == 0, one.stderr[-4000:]
  port = _free_port()
  procs = [subprocess.Popen(common + [f"--workdir={tmp_path / 'two'}",
                                      f"--config.distributed.coordinator_address=localhost:{port}",
                                      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
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
  want = json.loads((tmp_path / "one" / "metrics.json").read_text())
  got = json.loads((tmp_path / "two" / "metrics.json").read_text())
  assert_same_metrics(got, want)
  assert (tmp_path / "two" / "checkpoint" / "metadata.json").exists()
  assert not (tmp_path / "two" / "process_1" / "checkpoint").exists()  # process 0 writes the results


def without_timing(tree):
  """A metrics tree without its timing (and memory) fields, which differ between identical runs."""
  if isinstance(tree, dict):
    return {k: without_timing(v) for k, v in tree.items() if k not in NOT_COMPARED}
  if isinstance(tree, list):
    return [without_timing(v) for v in tree]
  return tree


def run_meshes(task, workdir):
  """Inside a process with 4 CPU devices: the task's tiny run on 1 device and on 4 (uncached), in
  workdir/1 and workdir/4."""
  from persistent import experiment
  for devices in (1, 4):
    c = tiny(task)
    c.mesh.devices = devices
    experiment.run(c, os.path.join(workdir, str(devices)))


@pytest.mark.parametrize("task", TASKS)
def test_same_command_twice_gives_identical_metrics(task, tmp_path):
  """Two processes (other hash seeds) run the same tiny config, on one device and on a forced
  4-device CPU mesh: each metrics.json is byte for byte the other's, timing fields aside."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
  code = f"import sys; sys.path.insert(0, 'tests'); import test_tiny_runs as t; t.run_meshes({task!r}, sys.argv[1])"
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / run)], cwd=ROOT,
                            env=dict(env, PYTHONHASHSEED=str(seed)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for run, seed in (("a", 1), ("b", 2))]
  for p in procs:
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-5000:]
  for devices in ("1", "4"):
    a, b = (json.loads((tmp_path / run / devices / "metrics.json").read_text()) for run in ("a", "b"))
    assert "seconds" in a
    dump = lambda m: json.dumps(without_timing(m), indent=2, sort_keys=True)
    assert dump(a) == dump(b), (devices, sorted(set(numbers(a).items()) ^ set(numbers(b).items()))[:10])
  one, four = (json.loads((tmp_path / "a" / devices / "metrics.json").read_text()) for devices in ("1", "4"))
  assert_same_metrics(four, one)  # and one device agrees with four to float32 rounding
