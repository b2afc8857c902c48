"""The README's "Add a task" example, kept working: a sixth task is one file of targets and
metrics plus one config, and everything the pipeline does (folds, devices, processes, cache,
checkpoints) comes with it."""
from typing import Any

import ml_collections
import numpy as np

from persistent import config_lib, experiment, metrics, probe, tasks


def quadrant_brightness(examples) -> np.ndarray:
  """(B, 4) mean brightness of each image's four quadrants, in [0, 1]."""
  out = []
  for e in examples:
    h, w = e["image"].shape[0] // 2, e["image"].shape[1] // 2
    img = e["image"].astype(np.float32) / 255.0
    out.append([img[:h, :w].mean(), img[:h, w:].mean(), img[h:, :w].mean(), img[h:, w:].mean()])
  return np.array(out, np.float32)


@tasks.register("quadrants")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  pipe = probe.Pipeline(config)
  head = probe.Head("quadrants", 4, quadrant_brightness)
  if config.restore:
    fits, _ = pipe.restore(layout={})
  else:
    fits = pipe.fit(pipe.source(config.data.train), [head]).fits
    pipe.save(workdir, fits, layout={})
  preds, truth = pipe.predict(pipe.source(config.data.test), [head], fits,
                              record=lambda batch: list(quadrant_brightness(batch.examples)))
  return {"mae": metrics.mean_absolute_error(preds["quadrants"], np.stack(truth)), **probe.summary(fits["quadrants"])}


def get_config(arg=None):
  c = config_lib.base("quadrants")
  return config_lib.tiny(c, "synthetic:n=24,size=32", "synthetic:n=8,size=32,seed=1")


def test_a_sixth_task_runs_and_restores(tmp_path):
  c = get_config()
  c.features.cache_dir = str(tmp_path / "cache")
  m = experiment.run(c, str(tmp_path / "run"))
  assert 0 < m["mae"] < 0.2 and m["alpha_at_edge"]["fraction"] <= 1
  c.restore = str(tmp_path / "run")
  assert experiment.run(c, str(tmp_path / "again"))["mae"] == m["mae"]
