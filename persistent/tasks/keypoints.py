"""Object keypoints (the paper's Table 2 and Fig. 2b): per-class ridge regressors on box crops.

Each object's box, widened by `context` on every side, is cropped and resized to the backbone's
input; the crop's feature predicts every keypoint of the object's class in the crop's frame. As in
the paper a separate set of regressors is learnt per class. An invisible keypoint is neither a
target nor scored: each keypoint is fitted on the objects where it is visible; a keypoint visible
in too few training objects for cross-validation is predicted at its mean position (counted in
`num_fallback_keypoints`).

Data: data.train and data.test, or with an empty data.test a seeded `holdout` fraction of the
images of data.train (all objects of an image on one side; persistent.data.holdout). `flip`
adds a mirrored copy of every training object (`keypoints.flip_example`: left and right joints
exchange places, so the flipped left wrist is a left wrist); an object and its mirror share a
cross-validation fold. Test objects are never flipped.

Scores: PCK (persistent.metrics) over visible test keypoints per class and its mean over classes
(the paper's "mean PCK"), per keypoint (`pck@0.1_per_keypoint`), PCK-vs-alpha curves, and the
same for a baseline that predicts each keypoint at its mean training position in the box
(`*_mean_shape`). Invisible (unlabelled) keypoints are neither fitted nor scored.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections
import numpy as np

from persistent import data, figures, geometry, metrics, probe, tasks
from persistent.data import images as image_lib
from persistent.data import keypoints as keypoint_data
from persistent.figures import keypoints as keypoint_figures

ALPHAS = np.round(np.linspace(0, 1, 101), 2)


def crops(source: data.Source, size: tuple[int, int], context: float, classes: set[str] | None) -> data.Source:
  """The objects of `classes` (all: None) as crops of their widened boxes, with `crop_box`."""
  if classes is not None:
    kept = [i for i, e in enumerate(source.ids) if keypoint_data.class_of(e) in classes]
    if not kept:
      raise ValueError(f"no object of the classes {sorted(classes)} in {source.spec!r}")
    source = source.subset(kept)

  def crop(ex: data.Example) -> data.Example:
    box = geometry.context_boxes(ex["box"], context)[0]
    return {**ex, "image": image_lib.crop_resize(ex["image"], box, size), "crop_box": box}
  return source.map(crop, f"kpcrop:v2,context={context:g},size={size[0]}x{size[1]}")


def with_flips(source: data.Source) -> data.Source:
  """The source followed by the mirror of each of its examples (ids + '/flip')."""
  n = len(source)
  load = lambda i: source[i] if i < n else keypoint_data.flip_example(source[i - n])
  return data.Source(f"{source.spec}|flips:v1", source.ids + [f"{e}/flip" for e in source.ids], load,
                     skipped=source.skipped, on_bad=source.on_bad)


def open_split(pipe: probe.Pipeline) -> tuple[data.Source, data.Source]:
  """Train and test sources; an empty data.test holds out a seeded `holdout` fraction of the
  images of train."""
  return pipe.train_test(pipe.config.keypoints.holdout, lambda ids: [keypoint_data.image_of(e) for e in ids])


def relative(ex: data.Example) -> np.ndarray:
  """(K*2,) keypoints in the crop's frame, NaN where invisible."""
  rel = geometry.to_crop(np.asarray(ex["keypoints"], np.float64)[None], ex["crop_box"][None])[0]
  return np.where(np.asarray(ex["visible"], bool)[:, None], rel, np.nan).reshape(-1)


def class_heads(source: data.Source) -> list[probe.Head]:
  """One head per class of the objects in `source` (its keypoints from its first object)."""
  first = {}
  for i, e in enumerate(source.ids):
    first.setdefault(keypoint_data.class_of(e), i)
  heads = []
  for cls, i in sorted(first.items()):
    k = len(source[i]["keypoint_names"])
    heads.append(probe.Head(cls, 2 * k, lambda exs: np.stack([relative(e) for e in exs]),
                            select=lambda e, cls=cls: e["class"] == cls, missing=True))
  return heads


def _finite(v: float) -> float | None:
  return float(v) if np.isfinite(v) else None


@tasks.register("keypoints")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  kc = config.keypoints
  pipe = probe.Pipeline(config)
  wanted = set(kc.classes.split("+")) if kc.classes else None
  size = tuple(pipe.backbone.input_size)
  flip = bool(kc.get("flip", False))
  train_src, test_src = open_split(pipe)
  test = crops(test_src, size, kc.context, wanted)
  layout = {"context": kc.context, "classes": kc.classes, "flip": flip}
  if not config.data.test:
    layout.update(holdout=kc.holdout, seed=config.seed)
  if config.restore:
    fits, state = pipe.restore(layout)
  else:
    if flip:  # mirror the whole image before cropping, so that box and keypoints stay with it
      train_src = with_flips(train_src)
    train = crops(train_src, size, kc.context, wanted)
    heads = class_heads(train)
    # an object and its mirror in one fold group
    groups = np.unique([e.removesuffix("/flip") for e in train.ids], return_inverse=True)[1] if flip else None
    fits = pipe.fit(train, heads, groups=groups).fits
    for h in heads:
      logging.info("keypoints: class %s, %d keypoints", h.name, h.num_targets // 2)
    names = {}
    for i, e in enumerate(train.ids):
      names.setdefault(keypoint_data.class_of(e), i)
    state = {"num_keypoints": {h.name: h.num_targets // 2 for h in heads}, "n_train": len(train),
             "keypoint_names": {cls: list(train[i]["keypoint_names"]) for cls, i in names.items()}}
    pipe.save(workdir, fits, layout, state)
  heads = [probe.Head(cls, 2 * k, relative, select=lambda e, cls=cls: e["class"] == cls)
           for cls, k in state["num_keypoints"].items()]
  shown = min(config.num_figure_examples, len(test), 8)
  preds, recs = pipe.predict(test, heads, fits, record=lambda b: [
      {**{k: e[k] for k in ("class", "keypoints", "visible", "box", "crop_box")},
       "image": e["image"] if i < shown else None} for e, i in zip(b.examples, b.index)])
  classes = np.array([r["class"] for r in recs])
  image_points = [None] * len(recs)
  per_class, per_class_prior, curves, curves_prior, pooled, skipped = {}, {}, {}, {}, [], 0
  per_keypoint, per_keypoint_prior = {}, {}
  names = state.get("keypoint_names", {})
  for cls in sorted(set(classes)):
    rows = np.flatnonzero(classes == cls)
    if cls not in fits:
      skipped += len(rows)
      continue
    get = lambda key: np.stack([recs[i][key] for i in rows])
    truth, visible, boxes, crop_boxes = get("keypoints"), get("visible").astype(bool), get("box"), get("crop_box")
    n, k = truth.shape[:2]
    mean = np.nan_to_num(np.asarray(fits[cls].target_mean, np.float64), nan=0.5)
    pred = geometry.from_crop(preds[cls][rows].reshape(n, k, 2), crop_boxes)
    prior = geometry.from_crop(np.broadcast_to(mean.reshape(k, 2), (n, k, 2)), crop_boxes)
    err, err_prior = metrics.normalised_errors(pred, truth, boxes), metrics.normalised_errors(prior, truth, boxes)
    per_class[cls], per_class_prior[cls] = metrics.pck(err, visible, 0.1), metrics.pck(err_prior, visible, 0.1)
    curves[cls], curves_prior[cls] = metrics.pck_curve(err, visible, ALPHAS), metrics.pck_curve(err_prior, visible, ALPHAS)
    pooled.append(err[visible])
    kn = names.get(cls, [f"kp{j}" for j in range(k)])
    # None: no test object shows the keypoint
    per_keypoint[cls] = {kn[j]: _finite(metrics.pck(err[:, j], visible[:, j], 0.1)) for j in range(k)}
    per_keypoint_prior[cls] = {kn[j]: _finite(metrics.pck(err_prior[:, j], visible[:, j], 0.1)) for j in range(k)}
    for j, i in enumerate(rows):
      image_points[i] = pred[j]
  if skipped:
    logging.warning("keypoints: %d test objects of classes without a trained probe were not scored", skipped)
  if not per_class:
    raise ValueError(f"no test object of {config.data.test!r} belongs to a trained class")
  pooled = np.concatenate(pooled)
  mean_curve = np.nanmean(np.stack(list(curves.values())), 0)
  figures.save(keypoint_figures.pck_curves(ALPHAS, curves, mean_curve, np.nanmean(np.stack(list(curves_prior.values())), 0)),
               os.path.join(workdir, "pck_curves.png"))
  ex = [i for i in range(shown) if image_points[i] is not None]
  px = lambda pts, i: geometry.to_crop(np.asarray(pts, np.float64)[None], recs[i]["crop_box"][None])[0] * np.array(size[::-1]) - 0.5
  figures.save(keypoint_figures.predictions([recs[i]["image"] for i in ex], [px(recs[i]["keypoints"], i) for i in ex],
                                            [px(image_points[i], i) for i in ex],
                                            [np.asarray(recs[i]["visible"], bool) for i in ex], [classes[i] for i in ex]),
               os.path.join(workdir, "keypoint_examples.png"))
  fallback = sum(int(np.isnan(np.asarray(f.alpha)).sum()) // 2 for f in fits.values())
  return {
      "pck@0.1": float(np.nanmean(list(per_class.values()))), "pck@0.1_per_class": per_class,
      "pck@0.1_pooled": float((pooled <= 0.1).mean()),
      "pck@0.1_mean_shape": float(np.nanmean(list(per_class_prior.values()))),
      "pck@0.1_mean_shape_per_class": per_class_prior,
      "pck@0.1_per_keypoint": per_keypoint, "pck@0.1_mean_shape_per_keypoint": per_keypoint_prior,
      "pck_curve_mean_shape": np.nanmean(np.stack(list(curves_prior.values())), 0).tolist(),
      "pck_curve": {"alpha": ALPHAS.tolist(), "mean": mean_curve.tolist(), **{c: v.tolist() for c, v in curves.items()}},
      "n_train": state["n_train"], "n_test": len(test), "n_test_keypoints": int(pooled.size),
      "n_test_objects_skipped": skipped, "num_classes": len(fits), "num_fallback_keypoints": fallback,
      "n_train_flipped": state["n_train"] // 2 if flip else 0,
  }
