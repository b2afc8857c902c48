"""experiment.run around a task: the workdir lock, and failures to write that name the path and leave
no metrics.json (the task itself is replaced by a stub: these tests are about the run, not a task)."""
import errno
import json
import os

import pytest

from configs import rgb
from persistent import experiment, locking, tasks
from test_locking import hold, kill


@pytest.fixture
def stub_task(monkeypatch):
  monkeypatch.setattr(tasks, "get", lambda name: lambda config, workdir: {"mae": 0.25})
  return rgb.get_config("tiny")


def test_second_run_in_a_live_runs_workdir_is_refused(tmp_path, stub_task):
  owner = hold(str(tmp_path), workdir=True)  # a first run, alive
  try:
    with pytest.raises(locking.Busy, match=f"workdir {tmp_path} is in use .*pid {owner.pid}.*--workdir"):
      experiment.run(stub_task, str(tmp_path))
  finally:
    kill(owner)
  assert not (tmp_path / "metrics.json").exists()
  assert experiment.run(stub_task, str(tmp_path))["mae"] == 0.25  # the first run died: proceeds
  assert json.loads((tmp_path / "metrics.json").read_text())["mae"] == 0.25
  assert sorted(os.listdir(tmp_path)) == ["config.json", "log.txt", "metrics.json"]  # lock let go


def test_full_disk_at_metrics_names_the_file_and_leaves_none(tmp_path, stub_task, monkeypatch):
  (tmp_path / "metrics.json").write_text('{"mae": 1}')  # an earlier run's result must not survive
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(json, "dump", full)
  message = f"cannot write metrics.json \\(No space left on device\\): '{tmp_path}/metrics.json'"
  with pytest.raises(OSError, match=message):
    experiment.run(stub_task, str(tmp_path))
  assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "metrics.json.tmp").exists()


def test_unwritable_workdir_is_named(tmp_path, stub_task):
  (tmp_path / "file").write_text("not a folder")
  with pytest.raises(OSError, match=f"cannot create the workdir .*{tmp_path}/file/run"):
    experiment.run(stub_task, str(tmp_path / "file" / "run"))


def test_full_disk_in_the_feature_cache_fails_a_real_run_cleanly(tmp_path, monkeypatch):
  """rgb:tiny with a cache on a full disk: the error names the chunk being written, an earlier
  result and no new metrics.json remain, and the cache's earlier entry is untouched."""
  import numpy as np
  from persistent import data, features
  from test_features import tiny_backbone
  cache = tmp_path / "cache"
  features.extract(tiny_backbone(), "pooled", data.open_source("synthetic:n=4,size=32"), batch_size=2,
                   cache_dir=str(cache), progress=False)
  (earlier,) = os.listdir(cache)
  before = (cache / earlier).read_bytes()
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "metrics.json").write_text('{"mae": 1}')
  real_save = np.save

  def full(f, *args, **kwargs):
    real_save(f, *args, **kwargs)
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(np, "save", full)
  c = rgb.get_config("tiny")
  c.features.cache_dir = str(cache)
  with pytest.raises(OSError, match=f"No space left on device\\): '{cache}/[0-9a-f]+.partial/rows_[0-9]+-[0-9]+.npy'"):
    experiment.run(c, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "metrics.json").exists()
  assert sorted(os.listdir(cache)) == [earlier] and (cache / earlier).read_bytes() == before
