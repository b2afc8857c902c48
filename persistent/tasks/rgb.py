"""RGB reconstruction (the paper's Fig. 4): one ridge regressor per pixel and channel.

Each image is resized to SxSx3 (46x46x3: 6,348 targets in [0, 1]); the probe predicts them from
the image's global feature. Reports the mean absolute error of the linear predictions and of the
training-mean image as a baseline.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from persistent import checkpoint, data, figures, probe, ridge, tasks
from persistent.data import images as image_lib


def targets(examples: list[data.Example], size: int) -> np.ndarray:
  """(B, size*size*3) pixel values in [0, 1]."""
  return np.stack([image_lib.resize(ex["image"], (size, size)).reshape(-1) for ex in examples]
                  ).astype(np.float32) / 255.0


@tasks.register("rgb")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  size = config.rgb.size
  backbone = probe.backbone_from_config(config)
  train = data.open_source(config.data.train)
  test = data.open_source(config.data.test)
  to_targets = lambda exs: targets(exs, size)

  if config.restore:
    fits, meta = checkpoint.restore(config.restore)
    fit = fits["rgb"]
    fitted = (meta.get("size"), meta["backbone"]["name"], meta["backbone"]["layer"])
    wanted = (size, config.backbone.name, config.backbone.layer)
    if fitted != wanted:
      raise ValueError(f"checkpoint {config.restore} was fitted for (size, backbone, layer) {fitted}, "
                       f"not {wanted}")
    mean_image = np.asarray(meta["train_mean"], np.float32)
  else:
    fit = probe.fit(config, backbone, train, to_targets)
    mean_image = np.asarray(fit.target_mean, np.float32)  # from the same pass over the data
    checkpoint.save(os.path.join(workdir, "checkpoint"), {"rgb": fit}, {
        "task": "rgb", "size": size, "backbone": config.backbone.to_dict(),
        "train": config.data.train, "train_mean": mean_image.tolist()})

  pred, truth = probe.predict(config, backbone, test, fit, keep=to_targets)
  truth = np.concatenate(truth)
  metrics = {
      "mae": float(np.abs(pred - truth).mean()),
      "mae_clipped": float(np.abs(np.clip(pred, 0, 1) - truth).mean()),
      "mae_mean_image": float(np.abs(mean_image[None] - truth).mean()),
      "n_train": len(train), "n_test": len(test), "num_targets": int(pred.shape[1]),
      "feature_dim": int(fit.weights.shape[0]),
      "alpha_median": float(np.median(np.asarray(fit.alpha))),
      "cv_mse_chosen": float(np.asarray(fit.cv_mse).min(0).mean()),
  }
  k = min(config.num_figure_examples, len(test))
  shape = (size, size, 3)
  fig = figures.image_pairs([t.reshape(shape) for t in truth[:k]], [p.reshape(shape) for p in pred[:k]])
  figures.save(fig, os.path.join(workdir, "reconstructions.png"))
  return metrics
