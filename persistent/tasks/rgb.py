"""RGB reconstruction (the paper's Fig. 4): one ridge regressor per pixel and channel.

Each image is resized to S x S x 3 (46 x 46 x 3: 6,348 targets in [0, 1]); the probe predicts
them from the image's global feature. Reports the mean absolute error of the linear predictions
and of the training-mean image (the infinite-lambda prediction) as a baseline.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from persistent import data, figures, metrics, probe, tasks
from persistent.data import images as image_lib


def targets(examples: list[data.Example], size: int) -> np.ndarray:
  """(B, size*size*3) pixel values in [0, 1]."""
  return np.stack([image_lib.resize(ex["image"], (size, size)).reshape(-1) for ex in examples]
                  ).astype(np.float32) / 255.0


@tasks.register("rgb")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  size = config.rgb.size
  pipe = probe.Pipeline(config)
  head = probe.Head("rgb", 3 * size * size, lambda exs: targets(exs, size))
  layout = {"size": size}
  if config.restore:
    fits, state = pipe.restore(layout)
  else:
    train = pipe.source(config.data.train)
    fits, state = pipe.fit(train, [head]).fits, {"n_train": len(train)}
    pipe.save(workdir, fits, layout, state)
  fit = fits["rgb"]
  test = pipe.source(config.data.test)
  preds, truth = pipe.predict(test, [head], fits, record=lambda b: list(targets(b.examples, size)))
  pred, truth = preds["rgb"], np.stack(truth)
  mean_image = np.asarray(fit.target_mean, np.float32)
  k = min(config.num_figure_examples, len(test))
  shape = (size, size, 3)
  figures.save(figures.image_pairs([t.reshape(shape) for t in truth[:k]], [p.reshape(shape) for p in pred[:k]]),
               os.path.join(workdir, "reconstructions.png"))
  return {
      "mae": metrics.mean_absolute_error(pred, truth),
      "mae_clipped": metrics.mean_absolute_error(np.clip(pred, 0, 1), truth),
      "mae_mean_image": metrics.mean_absolute_error(np.broadcast_to(mean_image, truth.shape), truth),
      "n_train": state["n_train"], "n_test": len(test), "num_targets": int(pred.shape[1]), "feature_dim": int(fit.weights.shape[0]),
      **probe.summary(fit),
  }
