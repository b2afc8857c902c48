"""RGB reconstruction end to end (fit, metrics, figure, checkpoint restore) and its targets."""
import json
import os

import numpy as np

from persistent import experiment
from persistent.tasks import rgb
from configs import rgb as rgb_config


def small_config(tmp_path, **overrides):
  c = rgb_config.get_config()
  c.data.train, c.data.test = "synthetic:n=160,size=48", "synthetic:n=24,size=48,seed=1"
  c.rgb.size = 8
  c.features.cache_dir = str(tmp_path / "cache")
  c.batch_size = 16
  for k, v in overrides.items():
    c[k] = v
  return c


def test_targets_are_resized_pixels():
  img = np.zeros((10, 10, 3), np.uint8)
  img[..., 1] = 255
  t = rgb.targets([{"image": img, "id": "x"}], 4)
  assert t.shape == (1, 48)
  np.testing.assert_allclose(t.reshape(4, 4, 3), np.broadcast_to([0, 1, 0], (4, 4, 3)))


def test_end_to_end_beats_mean_image_and_restores(tmp_path):
  work = tmp_path / "run"
  m = experiment.run(small_config(tmp_path), str(work))
  on_disk = json.loads((work / "metrics.json").read_text())
  assert on_disk["mae"] == m["mae"] and m["num_targets"] == 8 * 8 * 3 and m["n_train"] == 160
  assert 0 < m["mae"] < m["mae_mean_image"]
  assert os.path.getsize(work / "reconstructions.png") > 1000
  assert (work / "config.json").exists() and (work / "log.txt").exists()
  again = experiment.run(small_config(tmp_path, restore=str(work / "checkpoint")), str(tmp_path / "restored"))
  np.testing.assert_allclose(again["mae"], m["mae"], rtol=1e-6)
  np.testing.assert_allclose(again["mae_mean_image"], m["mae_mean_image"], rtol=1e-6)
