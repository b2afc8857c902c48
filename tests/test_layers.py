"""Several layers in one pass (persistent/experiment.py, probe.py, sweep.py, features.py).

A multi-layer run must give each layer exactly what a run of that layer alone gives; the memory
guard must refuse before any image is decoded; the compare tool's table must be the workdirs'
numbers.
"""
import json
import os

import numpy as np
import pytest

from configs import landmarks as landmarks_config
from configs import rgb as rgb_config
from persistent import experiment, features, tasks
from persistent.tools import compare


def _numbers(metrics, prefix=""):
  """Flattened numeric leaves of a metrics dict, timing and nested layer results left out."""
  out = {}
  for k, v in metrics.items():
    if k in ("seconds", "layers", "control") or "seconds" in k or "per_second" in k:
      continue
    if isinstance(v, dict):
      out.update(_numbers(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      out[prefix + k] = float(v)
  return out


def _assert_same(a, b, where):
  na, nb = _numbers(a), _numbers(b)
  assert na.keys() == nb.keys(), where
  for k in na:
    assert na[k] == pytest.approx(nb[k], rel=1e-4, abs=1e-6), f"{where}: {k}"


def _tiny(module, arg, layer, cache=""):
  c = module.get_config(arg)
  c.backbone.layer = layer
  c.features.cache_dir = cache
  return c


@pytest.mark.parametrize("module,arg,layers", [(rgb_config, "tiny", "stage5,head_map,head"),
                                               (landmarks_config, "tiny", "head_grid3,head")])
def test_multi_layer_run_equals_single_layer_runs(tmp_path, module, arg, layers):
  many = experiment.run(_tiny(module, arg, layers), str(tmp_path / "many"))
  names = layers.split(",")
  assert list(many["layers"]) == names
  _assert_same(many, many["layers"][names[0]], "top-level keys are the first layer's")
  for layer in names:
    single = experiment.run(_tiny(module, arg, layer), str(tmp_path / layer))
    _assert_same(many["layers"][layer], single, layer)
  assert os.path.exists(tmp_path / "many" / "depth.png")
  log = open(tmp_path / "many" / "log.txt").read()
  assert all(f"| {layer} |" in log for layer in names)


def test_one_forward_pass_for_all_layers(tmp_path, monkeypatch):
  """Every batch is decoded and run through the network once however many layers are asked."""
  calls = []
  real = features.iterate_layers

  def counting(backbone, layers, source, **kw):
    calls.append((tuple(layers), source.spec))
    return real(backbone, layers, source, **kw)

  monkeypatch.setattr(features, "iterate_layers", counting)
  experiment.run(_tiny(rgb_config, "tiny", "stage5,head_map,head"), str(tmp_path / "w"))
  assert calls and all(set(layers) == {"stage5", "head_map", "head"} for layers, _ in calls)
  per_source = [spec for _, spec in calls]
  assert len(per_source) == len(set(per_source)), f"a source was extracted twice: {per_source}"


def test_all_means_every_tap_in_network_order():
  c = rgb_config.get_config("tiny")
  c.backbone.layer = "all"
  from persistent import probe
  backbone = probe.backbone_from_config(c)
  assert experiment.requested_layers(c, backbone) == list(backbone.layers)
  c.backbone.layer = "head,head"
  with pytest.raises(ValueError, match="distinct"):
    experiment.requested_layers(c)


def test_memory_guard_refuses_before_extraction(tmp_path, monkeypatch):
  def no_extraction(*a, **k):
    raise AssertionError("extraction started before the memory check")

  monkeypatch.setattr(features, "iterate_layers", no_extraction)
  c = _tiny(rgb_config, "tiny", "head_map,head")
  c.features.reduce = "flatten"  # head_map: 7 * 7 * 1280 features, over a 1 MiB budget
  c.ridge.path = "primal"
  c.ridge.max_bytes = 1 << 20
  with pytest.raises(MemoryError) as err:
    experiment.run(c, str(tmp_path / "w"))
  message = str(err.value)
  assert "head_map" in message and "head:" in message and "GiB" in message and "max_bytes" in message
  assert not os.path.exists(tmp_path / "w" / "metrics.json")


def test_reduction_rules():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  np.testing.assert_allclose(features.reduce_map(x, "pool"), x.mean((1, 2)))
  np.testing.assert_allclose(features.reduce_map(x, "flatten"), x.reshape(2, -1))
  grid2 = np.asarray(features.reduce_map(x, "grid:2")).reshape(2, 2, 2, 3)
  np.testing.assert_allclose(grid2[:, 1, 0], x[:, 2:, :2].mean((1, 2)))  # layout kept: (row, column, channel)
  assert features.reduction("pool,head_map=flatten", "head_map") == "flatten"
  assert features.reduction("pool,head_map=flatten", "stage5") == "pool"
  assert np.asarray(features.reduce_map(x, "")).shape == (2, 3 * 3 * 3)  # default grid:3
  v = np.ones((2, 5), np.float32)
  assert np.asarray(features.reduce_map(v, "")).shape == (2, 5)  # vectors untouched
  with pytest.raises(ValueError, match="grid:0"):
    features.reduction("grid:0", "stage5")


def test_random_control_and_compare_tool(tmp_path, capsys):
  c = _tiny(rgb_config, "tiny", "stage5,head")
  c.control = "random"
  metrics = experiment.run(c, str(tmp_path / "trained"))
  assert list(metrics["control"]["random"]) == ["stage5", "head"]
  assert os.path.exists(tmp_path / "trained" / "control_random" / "layers" / "head")
  other = _tiny(rgb_config, "tiny", "head")
  experiment.run(other, str(tmp_path / "single"))
  compare.main([str(tmp_path / "trained"), str(tmp_path / "single"), "--out", str(tmp_path / "cmp.png")])
  table = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
  header = [h.strip() for h in table[0].strip("|").split("|")]
  rows = {r.strip("|").split("|")[0].strip(): [v.strip() for v in r.strip("|").split("|")[1:]] for r in table[2:]}
  assert header[0] == "layer" and len(header) == 4  # trained, its random control, the single run
  assert list(rows) == ["stage5", "head"]
  runs = [json.load(open(tmp_path / "trained" / "metrics.json"))["layers"],
          json.load(open(tmp_path / "trained" / "metrics.json"))["control"]["random"],
          {"head": json.load(open(tmp_path / "single" / "metrics.json"))}]
  for layer, values in rows.items():
    for run, value in zip(runs, values):
      expected = tasks.lookup(run.get(layer, {}), "mae")
      assert value == ("" if expected is None else f"{expected:.4g}")
  assert os.path.exists(tmp_path / "cmp.png")
