"""One checkpoint contract for every task: a restored probe reproduces its run's test metrics
exactly, from a workdir or its checkpoint folder, and a checkpoint fitted for anything else than
the running configuration is refused, naming the field and both values."""
import importlib
import re

import pytest

from persistent import checkpoint, experiment

TASKS = ("rgb", "landmarks", "segmentation", "keypoints", "directions")
TIMING = {"seconds", "peak_rss_mb"}


def tiny(task, tmp_path):
  c = importlib.import_module(f"configs.{task}").get_config("tiny")
  c.features.cache_dir = str(tmp_path / "cache")
  return c


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  """Every task's tiny run, fitted once for the tests of this module."""
  root = tmp_path_factory.mktemp("fitted")
  return {task: (root, experiment.run(tiny(task, root), str(root / task))) for task in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_restore_reproduces_the_metrics_exactly(task, fitted, tmp_path):
  root, metrics = fitted[task]
  c = tiny(task, root)
  c.restore = str(root / task) if task != "rgb" else str(root / task / "checkpoint")  # either form
  again = experiment.run(c, str(tmp_path / "restored"))
  assert {k: v for k, v in again.items() if k not in TIMING} == {k: v for k, v in metrics.items() if k not in TIMING}
  assert not (tmp_path / "restored" / "checkpoint").exists()  # nothing fitted, nothing saved


# Settings changed for each field of the identity: (task, {config key: value}, field named in the error).
MISMATCHES = [
    ("rgb", {"backbone.name": "alexnet", "backbone.weights": "random", "backbone.layer": "fc6"}, "backbone"),
    ("rgb", {"backbone.weights": "random"}, "weights"),
    ("rgb", {"backbone.layer": "head_grid2"}, "layer"),
    ("rgb", {"backbone.dtype": "bfloat16"}, "preprocessing.dtype"),
    ("rgb", {"features.normalize": False}, "preprocessing.l2_normalize"),
    ("rgb", {"data.train": "synthetic:n=25,size=32"}, "train"),
    ("rgb", {"ridge.num_folds": 3}, "ridge.num_folds"),
    ("rgb", {"rgb.size": 9}, "layout.size"),
    ("landmarks", {"landmarks.margin": 0.2}, "layout.margin"),
    ("landmarks", {"landmarks.groups": "a:0-33;b:34-67"}, "layout.groups"),
    ("segmentation", {"segmentation.size": 5}, "layout.size"),
    ("segmentation", {"segmentation.augment": 3}, "layout.augment"),
    ("keypoints", {"keypoints.context": 0.2}, "layout.context"),
    ("directions", {"directions.attributes": ("red", "green")}, "layout.attributes"),
]


@pytest.mark.parametrize("task,changes,field", MISMATCHES)
def test_mismatch_is_refused_naming_the_field(task, changes, field, fitted, tmp_path):
  root, _ = fitted[task]
  c = tiny(task, root)
  c.restore = str(root / task)
  for key, value in changes.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(ValueError, match=rf"does not fit this run: (.*; )?{re.escape(field)}: checkpoint has "):
    experiment.run(c, str(tmp_path / "restored"))
  assert not (tmp_path / "restored" / "metrics.json").exists()


def test_another_task_and_a_missing_checkpoint(fitted, tmp_path):
  root, _ = fitted["rgb"]
  c = tiny("directions", root)
  c.restore = str(root / "rgb")
  with pytest.raises(ValueError, match="task: checkpoint has 'rgb', this run has 'directions'"):
    experiment.run(c, str(tmp_path / "a"))
  c.restore = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="no probe checkpoint in .*nowhere"):
    experiment.run(c, str(tmp_path / "b"))


def test_differences_lists_every_leaf():
  saved = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": 0.5}
  running = {"a": 1, "b": {"c": (1, 3), "d": "x"}, "f": 2}
  assert checkpoint.differences(saved, running) == [("b.c", [1, 2], [1, 3]), ("e", 0.5, "<absent>"),
                                                    ("f", "<absent>", 2)]
  assert checkpoint.differences({"alphas": (0.1, 1.0)}, {"alphas": [0.1, 1.0]}) == []
