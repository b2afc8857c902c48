"""Facial landmarks (the paper's Table 1, Fig. 2a and Fig. 3): ridge from a global feature of the
face crop to all 2L landmark coordinates, the paper's baselines, and the look-back cascade.

Settings in config.landmarks (configs/landmarks.py):
  * Face box: the ground-truth landmarks' bounding box made square and enlarged by `margin` per
    side (300-W's ground-truth box protocol). Training faces are also cropped with `jitter_copies`
    seeded jittered boxes (centre shift up to `jitter_shift` x side, scale up to x(1 +
    `jitter_scale`)) so that the probe has to localise rather than memorise the box. With
    `flips`, every training crop also enters mirrored left-right, its landmarks relabelled by the
    layout's mirror permutation (`geometry.mirror_permutation`, 68 and 194 points).
  * Targets: the 2L coordinates in the crop's frame (units of the box side). All crops of a face
    share a fold (seeded per face).
  * Baselines: dataset bias (the training mean shape in the face box), RGB + ridge (raw pixels of
    an `rgb_size`^2 resize of the crop) and ConvNet + ridge.
  * Look-back (`persistent.lookback`), `lookback_stages` stages over `groups` (six by default),
    trained on cross-fitted estimates; `lookback_size` > 0 feeds the group crops to the network at
    that many pixels a side instead of its input size (a fully convolutional layer only): group
    boxes are small, so upsampling them to 224 px costs four times the compute of 112 px.

Metrics: inter-ocular NME (persistent.metrics) per method and stage, per look-back group, per
anatomical part (jaw, brows, eyes, nose, outer and inner mouth: `geometry.PARTS_68/194`), CED
AUC@0.1 and failure rate (NME > 0.1). Figures: `lookback_examples.png` (Fig. 3),
`errors_per_group.png` (Fig. 2a, per part), `ced.png`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from persistent import data, figures, geometry, lookback, metrics, probe, tasks
from persistent.backbones.preprocessing import Preprocessing
from persistent.data import crops
from persistent.data import images as image_lib
from persistent.figures import landmarks as landmark_figures

METHODS = ("dataset_bias", "rgb_ridge", "convnet_ridge", "lookback")


def open_split(pipe: probe.Pipeline) -> tuple[data.Source, data.Source]:
  """Train and test sources; an empty data.test holds out a seeded `holdout` fraction of train."""
  return pipe.train_test(pipe.config.landmarks.holdout)


def points(example: data.Example) -> np.ndarray:
  if "landmarks" not in example:
    raise ValueError(f"example {example['id']!r} has no 'landmarks'")
  pts = np.asarray(example["landmarks"], np.float64)
  if not np.isfinite(pts).all():
    raise ValueError(f"landmarks of {example['id']!r} are not finite")
  return pts


def crop_targets(example: data.Example, idx: Sequence[int] | slice = slice(None),
                 perm: np.ndarray | None = None) -> np.ndarray:
  """Points `idx` of a crop in its frame (len(idx), 2); a flipped crop's (example['flip']) are the
  mirrored points, relabelled by `perm` (the layout's mirror permutation)."""
  pts = points(example)
  if example.get("flip"):
    if perm is None:
      raise ValueError(f"crop {example['id']!r} is flipped but no mirror permutation was given")
    return geometry.flip_crop(geometry.to_crop(pts[None], example["box"][None])[0], perm)[idx]
  return geometry.to_crop(pts[idx][None], example["box"][None])[0]


def _heads(num_points: int, rgb_size: int, rgb_alphas) -> list[probe.Head]:
  perm = geometry.MIRROR.get(num_points)
  coords = lambda exs: np.stack([crop_targets(e, perm=perm).reshape(-1) for e in exs])
  pixels = lambda exs, _: np.stack([image_lib.resize(e["image"], (rgb_size, rgb_size)).reshape(-1)
                                    for e in exs]).astype(np.float32) / 255.0
  return [probe.Head("convnet", 2 * num_points, coords),
          probe.Head("rgb", 2 * num_points, coords, inputs=pixels, input_dim=3 * rgb_size ** 2, alphas=rgb_alphas)]


def stage_pipe(pipe: probe.Pipeline) -> probe.Pipeline:
  """The pipeline of the look-back stages: the same network at `lookback_size` pixels a side."""
  size = pipe.config.landmarks.get("lookback_size", 0)
  net = pipe.backbone
  if not size or tuple(net.input_size) == (size, size):
    return pipe
  pre = net.preprocess
  if isinstance(pre, Preprocessing):
    pre = dataclasses.replace(pre, input_size=(size, size))
  resized = dataclasses.replace(net, input_size=(size, size), preprocess=pre,
                                preprocessing={**(net.preprocessing or {}), "input_size": [size, size]})
  return probe.Pipeline(pipe.config, resized)


def train(pipe: probe.Pipeline, faces: data.Source, groups: dict[str, list[int]], num_points: int,
          on_stage: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
          ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Fits every model on `faces`; returns (fits, state) for `predict`. `on_stage(fits, state)`
  sees the models after every look-back stage (the cascade so far)."""
  config, cfg = pipe.config, pipe.config.landmarks
  n, copies = len(faces), 1 + cfg.jitter_copies
  views = copies * (2 if cfg.flips else 1)  # per face: its boxes, then (flips) the same boxes mirrored
  truth = np.stack(pipe.records(faces, lambda exs: [points(e) for e in exs]))
  if truth.shape[1] != num_points:
    raise ValueError(f"faces of {faces.spec!r} have {truth.shape[1]} landmarks, expected {num_points}")
  base = geometry.face_boxes(truth, cfg.margin)
  boxes = np.repeat(base, copies, axis=0)
  for c in range(1, copies):
    boxes[c::copies] = geometry.jitter_boxes(base, np.random.default_rng([config.seed, 101, c]),
                                             cfg.jitter_shift, cfg.jitter_scale)
  if cfg.flips:
    geometry.mirror_permutation(num_points)  # fails early for a layout without one
    boxes = np.concatenate([boxes.reshape(n, copies, 4)] * 2, 1).reshape(-1, 4)
  owners = np.repeat(np.arange(n), views)
  flips = np.tile(np.repeat([False, True], copies), n) if cfg.flips else None
  src = crops.crop_source(faces, owners, boxes, tuple(pipe.backbone.input_size), "face", flips=flips)
  heads = _heads(num_points, cfg.rgb_size, cfg.rgb_alphas)
  fitted = pipe.fit(src, heads, groups=owners, fold_seed=config.seed)
  fits = dict(fitted.fits)
  state: dict[str, Any] = {"mean_shape": geometry.to_crop(truth, base).mean(0).reshape(-1).tolist(),
                           "n_train": n, "n_train_crops": len(src), "feature_dim": int(fits["convnet"].weights.shape[0])}
  if cfg.lookback_stages:
    oof, _ = pipe.predict(src, heads[:1], {"convnet": fitted.crossfit("convnet")}, crossfit=(fitted, owners))
    first = geometry.from_crop(oof["convnet"][::views].reshape(n, num_points, 2), base)
    more, state["lookback"], train_preds = lookback.fit(
        stage_pipe(pipe), faces, truth, first, base, groups, points, stages=cfg.lookback_stages,
        quantile=cfg.lookback_quantile, min_pad=cfg.lookback_min_pad, fold_seed=config.seed,
        on_stage=None if on_stage is None else
        lambda k, more, lb: on_stage({**fits, **more}, {**state, "lookback": lb}))
    fits.update(more)
    state["train_crossfit_nme_per_stage"] = [metrics.nme(p, truth) for p in train_preds]
  return fits, state


def predict(pipe: probe.Pipeline, fits: dict[str, Any], state: dict[str, Any], faces: data.Source,
            truth: np.ndarray) -> dict[str, Any]:
  """Every method's and stage's predictions (N, L, 2) for faces with ground-truth boxes; the
  truth gives the face box (the protocol) and nothing else."""
  cfg = pipe.config.landmarks
  n, num_points = truth.shape[:2]
  base = geometry.face_boxes(truth, cfg.margin)
  src = crops.crop_source(faces, np.arange(n), base, tuple(pipe.backbone.input_size), "face")
  out, _ = pipe.predict(src, _heads(num_points, cfg.rgb_size, cfg.rgb_alphas), fits)
  shape = lambda y: geometry.from_crop(np.asarray(y).reshape(n, num_points, 2), base)
  methods = {"dataset_bias": shape(np.tile(np.asarray(state["mean_shape"], np.float32), (n, 1))),
             "rgb_ridge": shape(out["rgb"]), "convnet_ridge": shape(out["convnet"])}
  stages, boxes = [methods["convnet_ridge"]], []
  if "lookback" in state:
    stages, boxes = lookback.predict(stage_pipe(pipe), faces, methods["convnet_ridge"], base, fits, state["lookback"], points)
    methods["lookback"] = stages[-1]
  return {"methods": methods, "stages": stages, "boxes": boxes, "face_boxes": base}


def _test_truth(pipe: probe.Pipeline, test_src: data.Source, num_points: int) -> np.ndarray:
  truth = np.stack(pipe.records(test_src, lambda exs: [points(e) for e in exs]))
  if truth.shape[1] != num_points:
    raise ValueError(f"test faces have {truth.shape[1]} landmarks, the model {num_points}")
  return truth


@tasks.register("landmarks")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  cfg = config.landmarks
  pipe = probe.Pipeline(config)
  train_src, test_src = open_split(pipe)
  num_points = len(points(train_src[0] if not config.restore else test_src[0]))
  groups = geometry.parse_groups(cfg.groups, num_points)
  parts = {k: list(v) for k, v in geometry.PARTS.get(num_points, groups).items()}
  layout = {"num_points": num_points, "groups": groups, "holdout": cfg.holdout if not config.data.test else None,
            "seed": config.seed, **({"flips": True} if cfg.flips else {}),
            **{k: cfg[k] for k in ("margin", "jitter_copies", "jitter_shift", "jitter_scale",
                                                      "rgb_size", "rgb_alphas", "lookback_stages",
                                                      "lookback_quantile", "lookback_min_pad")},
            **({"lookback_size": cfg.lookback_size} if cfg.get("lookback_size", 0) else {})}
  if config.restore:
    fits, state = pipe.restore(layout)
  else:
    if cfg.lookback_stages and config.ridge.num_folds < 3:
      raise ValueError("look-back cross-fitting needs ridge.num_folds >= 3 (each held-out fold's "
                       f"model is itself cross-validated); got {config.ridge.num_folds}")
    truth = _test_truth(pipe, test_src, num_points)

    def on_stage(fits_so_far: dict[str, Any], state_so_far: dict[str, Any]) -> None:
      """Scores the cascade so far on the test faces (its crops are cached for the final pass)."""
      so_far = [metrics.nme(p, truth) for p in predict(pipe, fits_so_far, state_so_far, test_src, truth)["stages"]]
      logging.info("landmarks NME per stage so far (test): %s", [round(v, 4) for v in so_far])
      if pipe.process == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "nme_per_stage_so_far.json"), "w") as f:
          json.dump(so_far, f)
    fits, state = train(pipe, train_src, groups, num_points, on_stage if cfg.lookback_stages > 1 else None)
    pipe.save(workdir, fits, layout, state)
  if config.restore:
    truth = _test_truth(pipe, test_src, num_points)
  result = predict(pipe, fits, state, test_src, truth)
  methods = result["methods"]
  logging.info("landmarks NME per stage (test): %s; per method: %s",
               [round(metrics.nme(p, truth), 4) for p in result["stages"]],
               {m: round(metrics.nme(p, truth), 4) for m, p in methods.items()})
  per_face = {m: metrics.nme_per_face(p, truth) for m, p in methods.items()}
  per_group = {m: metrics.nme_per_group(p, truth, groups) for m, p in methods.items()}
  per_part = {m: metrics.nme_per_group(p, truth, parts) for m, p in methods.items()}
  figures.save(landmark_figures.ced(per_face, cfg.ced_max), os.path.join(workdir, "ced.png"))
  figures.save(landmark_figures.errors_per_group(per_part), os.path.join(workdir, "errors_per_group.png"))
  k = min(config.num_figure_examples, len(test_src))
  if k:
    fig = landmark_figures.lookback_triplets(
        [test_src[i]["image"] for i in range(k)], result["face_boxes"][:k], truth[:k], result["stages"][0][:k],
        result["stages"][-1][:k], {g: b[:k] for g, b in result["boxes"][0].items()} if result["boxes"] else None)
    figures.save(fig, os.path.join(workdir, "lookback_examples.png"))
  return {
      "nme": {m: float(v.mean()) for m, v in per_face.items()},
      "nme_per_stage": [metrics.nme(p, truth) for p in result["stages"]],
      "nme_per_group": per_group,
      "nme_per_part": per_part,
      "auc_0.1": {m: metrics.auc(v, 0.1) for m, v in per_face.items()},
      "failure_rate_0.1": {m: float((v > 0.1).mean()) for m, v in per_face.items()},
      "n_train": state["n_train"], "n_train_crops": state["n_train_crops"], "n_test": len(test_src),
      "num_points": num_points, "layer": config.backbone.layer, "feature_dim": state["feature_dim"],
      "lookback_pads": state.get("lookback", {}).get("pads", []), "groups": {k: len(v) for k, v in groups.items()},
      **({"train_crossfit_nme_per_stage": state["train_crossfit_nme_per_stage"]}
         if "train_crossfit_nme_per_stage" in state else {}),
      "alpha_median": {k.replace(":", "/"): probe.summary(f)["alpha_median"] for k, f in fits.items()},
  }
