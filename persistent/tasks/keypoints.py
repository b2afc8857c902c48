"""Object keypoints (the paper's Table 2 and Fig. 2b): per-class ridge regressors on box crops.

Each object's box, widened by `context` on every side, is cropped and resized to the backbone's
input; the feature of the crop predicts every keypoint of the object's class as (x, y) relative
to the crop (0..1). As in the paper a separate set of regressors is learnt per class. A keypoint
that is invisible in a training object does not enter that keypoint's training set; keypoints
sharing the same visibility pattern share one ridge solve. A keypoint with fewer visible training
objects than CV folds falls back to its mean position (counted in `num_fallback_keypoints`).

Scores: PCK (`persistent.pck`) over visible test keypoints, per class and its mean over classes
(the paper's "mean PCK"), PCK-vs-alpha curves for alpha in [0, 1], and the same for a baseline
that predicts each keypoint at its mean training position in the box (`*_mean_shape`).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from persistent import checkpoint, data, features, figures, pck, probe, ridge, tasks
from persistent.data import images as image_lib
from persistent.data import keypoints as keypoint_data  # noqa: F401  (registers the formats)

ALPHAS = np.round(np.linspace(0, 1, 101), 2)


def crop_box(box: np.ndarray, context: float) -> np.ndarray:
  """The box (x0, y0, x1, y1) widened by `context` times its size on every side."""
  x0, y0, x1, y1 = (float(v) for v in box)
  w, h = x1 - x0, y1 - y0
  return np.array([x0 - context * w, y0 - context * h, x1 + context * w, y1 + context * h])


def crop_transform(size: tuple[int, int], context: float):
  """(fn, tag) for Source.map: replaces each object's image by its box crop at `size`."""
  def fn(ex: data.Example) -> data.Example:
    return {**ex, "image": image_lib.crop_resize(ex["image"], crop_box(ex["box"], context), size),
            "crop_box": crop_box(ex["box"], context)}
  return fn, f"kpcrop:context={context:g},size={size[0]}x{size[1]}"


def to_crop(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Image coordinates (N, K, 2) -> relative crop coordinates for crop boxes (N, 4)."""
  origin, extent = boxes[:, None, :2], boxes[:, None, 2:] - boxes[:, None, :2]
  return (points - origin) / extent


def from_crop(rel: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  origin, extent = boxes[:, None, :2], boxes[:, None, 2:] - boxes[:, None, :2]
  return origin + rel * extent


def collect(config: ml_collections.ConfigDict, backbone, source: data.Source, keep_images: int = 2
            ) -> dict[str, dict[str, Any]]:
  """Per class: features and keypoint annotations of its objects in a (cropped) source, and the
  first `keep_images` crops for figures. One feature pass serves every class."""
  out: dict[str, dict[str, Any]] = {}
  for examples, f in features.iterate(backbone, config.backbone.layer, source, **probe.feature_options(config)):
    for ex, feat in zip(examples, f):
      c = out.setdefault(ex["class"], {"x": [], "keypoints": [], "visible": [], "boxes": [], "crops": [],
                                       "names": tuple(ex["keypoint_names"]), "images": []})
      if tuple(ex["keypoint_names"]) != c["names"]:
        raise ValueError(f"object {ex['id']!r} has keypoints {ex['keypoint_names']}, other objects of class "
                         f"{ex['class']!r} have {c['names']}")
      c["x"].append(feat)
      c["keypoints"].append(np.asarray(ex["keypoints"], np.float32))
      c["visible"].append(np.asarray(ex["visible"], bool))
      c["boxes"].append(np.asarray(ex["box"], np.float32))
      c["crops"].append(np.asarray(ex["crop_box"], np.float32))
      if len(c["images"]) < keep_images:
        c["images"].append(ex["image"])
  for c in out.values():
    for key in ("x", "keypoints", "visible", "boxes", "crops"):
      c[key] = np.stack(c[key])
  return out


def visibility_groups(visible: np.ndarray) -> list[np.ndarray]:
  """Keypoint indices grouped by identical visibility columns (N, K) -> [indices]."""
  groups: dict[bytes, list[int]] = {}
  for k in range(visible.shape[1]):
    groups.setdefault(np.packbits(visible[:, k]).tobytes() + bytes([visible.shape[0] % 8]), []).append(k)
  return [np.array(g) for g in groups.values()]


def row_space(x: np.ndarray, bucket: int = 64) -> np.ndarray:
  """An orthonormal basis (d, r) of the span of the rows of x, zero-padded to a multiple of `bucket`.

  Ridge on z = x Q is ridge on x restricted to this span, which holds every ridge solution fitted
  on any subset of the rows (with its intercept), so it is exact; with n < d objects it shrinks
  the eigenproblems from d x d to about n x n, and the padding (zero features, zero weights)
  keeps the number of distinct shapes, hence compilations, small.
  """
  _, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  q = vt[s > s[0] * 1e-7].T if s.size and s[0] > 0 else np.zeros((x.shape[1], 0))
  r = max(bucket, -(-q.shape[1] // bucket) * bucket)
  return np.concatenate([q, np.zeros((x.shape[1], r - q.shape[1]))], 1).astype(np.float32)


def fit_class(config: ml_collections.ConfigDict, train: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """Per visibility group: {'keypoints': idx, 'fit': RidgeFit} or {'keypoints': idx, 'mean': (k*2,)}."""
  rel = to_crop(train["keypoints"], train["crops"])  # (N, K, 2)
  q = row_space(train["x"])
  z = train["x"] @ q
  models = []
  for group in visibility_groups(train["visible"]):
    rows = train["visible"][:, group[0]]
    n = int(rows.sum())
    if n < 2 * config.ridge.num_folds:
      mean = rel[rows][:, group].reshape(n, -1).mean(0) if n else np.full(2 * group.size, 0.5)
      models.append({"keypoints": group, "mean": mean.astype(np.float32)})
      continue
    y = rel[rows][:, group].reshape(n, -1)
    fz = ridge.fit(z[rows], y, alphas=config.ridge.alphas, num_folds=config.ridge.num_folds,
                   per_target=config.ridge.per_target, dtype=config.ridge.dtype, batch_size=64)
    fit = fz.replace(weights=jnp.asarray(q @ np.asarray(fz.weights)))  # back to the feature space
    models.append({"keypoints": group, "fit": fit})
  return models


def predict_class(models: list[dict[str, Any]], x: np.ndarray, num_keypoints: int) -> np.ndarray:
  """Relative crop coordinates (N, K, 2) from features (N, d)."""
  out = np.full((x.shape[0], num_keypoints, 2), 0.5, np.float32)
  for m in models:
    g = m["keypoints"]
    if "fit" in m:
      out[:, g] = np.asarray(ridge.predict(m["fit"], x)).reshape(x.shape[0], g.size, 2)
    else:
      out[:, g] = m["mean"].reshape(g.size, 2)
  return out


def _save(workdir: str, config, models: dict[str, list[dict]], means: dict[str, np.ndarray]) -> None:
  fits, groups = {}, {}
  for cls, ms in models.items():
    groups[cls] = []
    for gi, m in enumerate(ms):
      entry = {"keypoints": m["keypoints"].tolist()}
      if "fit" in m:
        fits[f"{cls}.{gi}"] = m["fit"]
        entry["fit"] = f"{cls}.{gi}"
      else:
        entry["mean"] = m["mean"].tolist()
      groups[cls].append(entry)
  checkpoint.save(os.path.join(workdir, "checkpoint"), fits, {
      "task": "keypoints", "layer": config.backbone.layer, "context": config.keypoints.context,
      "backbone": config.backbone.to_dict(), "train": config.data.train, "groups": groups,
      "mean_shape": {c: m.tolist() for c, m in means.items()}})


def _restore(config) -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
  fits, meta = checkpoint.restore(config.restore)
  if meta.get("task") != "keypoints" or meta.get("layer") != config.backbone.layer or \
      meta.get("context") != config.keypoints.context:
    raise ValueError(f"checkpoint {config.restore} is not a keypoint probe for layer "
                     f"{config.backbone.layer!r} and context {config.keypoints.context}")
  models = {cls: [{"keypoints": np.array(e["keypoints"]),
                   **({"fit": fits[e["fit"]]} if "fit" in e else {"mean": np.asarray(e["mean"], np.float32)})}
                  for e in entries] for cls, entries in meta["groups"].items()}
  return models, {c: np.asarray(m, np.float32) for c, m in meta["mean_shape"].items()}


@tasks.register("keypoints")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  kc = config.keypoints
  backbone = probe.backbone_from_config(config)
  fn, tag = crop_transform(backbone.input_size, kc.context)
  test = data.open_source(config.data.test)
  wanted = set(kc.classes.split("+")) if kc.classes else None

  def objects(source: data.Source) -> data.Source:
    if wanted is not None:
      source = source.subset([i for i, e in enumerate(source.ids) if keypoint_data.class_of(e) in wanted])
      if not len(source):
        raise ValueError(f"no object of the classes {kc.classes!r} in {source.spec!r}")
    return source.map(fn, tag)

  if config.restore:
    models, means = _restore(config)
  else:
    train = collect(config, backbone, objects(data.open_source(config.data.train)))
    models, means = {}, {}
    for cls, tr in sorted(train.items()):
      logging.info("keypoints: class %s, %d training objects", cls, tr["x"].shape[0])
      models[cls] = fit_class(config, tr)
      rel = to_crop(tr["keypoints"], tr["crops"])
      vis = tr["visible"][..., None]
      counts = vis.sum(0)
      means[cls] = np.where(counts > 0, (rel * vis).sum(0) / np.maximum(counts, 1), 0.5).astype(np.float32)
    _save(workdir, config, models, means)

  per_class, per_class_prior, curves, curves_prior, examples = {}, {}, {}, {}, []
  all_err, skipped = [], 0
  fallbacks = sum(m["keypoints"].size for ms in models.values() for m in ms if "fit" not in m)
  for cls, te in sorted(collect(config, backbone, objects(test)).items()):
    n = te["x"].shape[0]
    if cls not in models:
      skipped += n
      continue
    k = te["keypoints"].shape[1]
    pred = from_crop(predict_class(models[cls], te["x"], k), te["crops"])
    prior = from_crop(np.broadcast_to(means[cls], (n, k, 2)), te["crops"])
    err = pck.normalised_errors(pred, te["keypoints"], te["boxes"])
    err_prior = pck.normalised_errors(prior, te["keypoints"], te["boxes"])
    per_class[cls] = pck.pck(err, te["visible"], 0.1)
    per_class_prior[cls] = pck.pck(err_prior, te["visible"], 0.1)
    curves[cls] = pck.pck_curve(err, te["visible"], ALPHAS)
    curves_prior[cls] = pck.pck_curve(err_prior, te["visible"], ALPHAS)
    all_err.append(err[te["visible"]])
    if len(examples) < config.num_figure_examples:
      examples.append((cls, te, pred, len(te["images"])))
  if skipped:
    logging.warning("keypoints: %d test objects of classes without a trained probe were not scored", skipped)
  if not per_class:
    raise ValueError(f"no test object of {config.data.test!r} belongs to a trained class")
  pooled = np.concatenate(all_err)
  mean_curve = np.nanmean(np.stack(list(curves.values())), 0)
  metrics = {
      "pck@0.1": float(np.nanmean(list(per_class.values()))),
      "pck@0.1_per_class": per_class,
      "pck@0.1_pooled": float((pooled <= 0.1).mean()),
      "pck@0.1_mean_shape": float(np.nanmean(list(per_class_prior.values()))),
      "pck@0.1_mean_shape_per_class": per_class_prior,
      "pck_curve": {"alpha": ALPHAS.tolist(), "mean": mean_curve.tolist(),
                    **{c: v.tolist() for c, v in curves.items()}},
      "n_test_keypoints": int(pooled.size), "n_test_objects_skipped": skipped,
      "num_classes": len(models), "num_fallback_keypoints": int(fallbacks),
  }
  figures.save(pck_figure(curves, mean_curve, np.nanmean(np.stack(list(curves_prior.values())), 0)),
               os.path.join(workdir, "pck_curves.png"))
  figures.save(examples_figure(examples, backbone.input_size), os.path.join(workdir, "keypoint_examples.png"))
  return metrics


def pck_figure(curves: dict[str, np.ndarray], mean: np.ndarray, prior: np.ndarray):
  """PCK vs alpha for every class (Fig. 2b), with the mean and the mean-shape baseline."""
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  cmap = plt.get_cmap("tab20")
  for i, (cls, c) in enumerate(sorted(curves.items())):
    ax.plot(ALPHAS, c, color=cmap(i % 20), lw=1, label=cls)
  ax.plot(ALPHAS, mean, "k", lw=2, label="mean")
  ax.plot(ALPHAS, prior, "k--", lw=1, label="mean shape")
  ax.set(xlabel="alpha", ylabel="PCK", xlim=(0, 1), ylim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2, loc="lower right")
  return fig


def examples_figure(examples, size: tuple[int, int]):
  """Box crops with true (green) and predicted (red) visible keypoints."""
  import matplotlib.pyplot as plt
  panels = [(cls, te, pred, j) for cls, te, pred, n in examples for j in range(n)][:8]
  fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(1.6 * max(1, len(panels)), 1.9), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (cls, te, pred, j) in zip(axes.flat, panels):
    box = te["crops"][j:j + 1]
    scale = np.array([size[1], size[0]])
    true_rel, pred_rel = to_crop(te["keypoints"][j:j + 1], box)[0], to_crop(pred[j:j + 1], box)[0]
    v = te["visible"][j]
    ax.imshow(te["images"][j])
    ax.scatter(*(true_rel[v] * scale).T, c="g", s=10, label="truth")
    ax.scatter(*(pred_rel[v] * scale).T, c="r", s=10, marker="x", label="prediction")
    for a, b in zip(true_rel[v] * scale, pred_rel[v] * scale):
      ax.plot([a[0], b[0]], [a[1], b[1]], "r-", lw=0.5)
    ax.set_title(cls, fontsize=7)
  fig.tight_layout(pad=0.3)
  return fig
