"""Semantic segmentation from a global feature (the paper's Table 3 and Fig. 5).

Targets: each label map is cut into S x S cells (30 x 30 in the paper) and every cell takes its
most frequent non-void class (a cell that is all void takes no class: all zeros), giving one 0/1
target per (cell, class) -- 18,900 ridge regressors for VOC's 21 classes. They are fitted from
streamed statistics (memory independent of the number of images) on the training set augmented
`augment`-fold (variant 0 is the image itself, the others a seeded random flip and crop-and-rescale).

Prediction: the regressors give a score vector s (C,) per cell; a C x C combiner M (with bias),
fitted by ridge from s to the one-hot class on all non-void training cells, maps it to class
scores; these are resized bilinearly to the image and the argmax is the label. Scores at the
original resolution, void ignored: per-class average precision of the pixel scores (Table 3),
IoU, pixel accuracy, and the same for `prior` (each pixel's most frequent training class at its
relative position). With `segmentation.logistic.enabled`, a multinomial logistic probe (softmax
per cell, trained with optax on the same features) is scored beside the ridge probe.
"""
from __future__ import annotations

import logging
import os
import resource
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from persistent import checkpoint, data, features, figures, probe, ridge, seg_metrics, tasks
from persistent.data import images as image_lib
from persistent.data import segmentation as seg_data  # noqa: F401  (registers the formats)

VOID = seg_data.VOID


# ---------------------------------------------------------------------------------------------
# Targets and augmentation.


def cell_counts(label: np.ndarray, size: int, num_classes: int) -> np.ndarray:
  """Pixels of each class in each of size x size cells: (size*size, C); void is not counted.

  Pixel (i, j) of an H x W map falls in cell (i * size // H, j * size // W).
  """
  h, w = label.shape
  cell = ((np.arange(h) * size) // h)[:, None] * size + ((np.arange(w) * size) // w)[None, :]
  keep = label != VOID
  lab = label[keep].astype(np.int64)
  if lab.size and lab.max() >= num_classes:
    raise ValueError(f"label ids {sorted(set(np.unique(lab[lab >= num_classes]).tolist()))[:10]} outside "
                     f"the {num_classes} classes")
  counts = np.bincount(cell[keep] * num_classes + lab, minlength=size * size * num_classes)
  return counts.reshape(size * size, num_classes)


def cell_labels(label: np.ndarray, size: int, num_classes: int) -> np.ndarray:
  """The majority class of every cell (size*size,), -1 for cells without a non-void pixel."""
  counts = cell_counts(label, size, num_classes)
  return np.where(counts.sum(1) > 0, counts.argmax(1), -1)


def one_hot(cells: np.ndarray, num_classes: int) -> np.ndarray:
  """(..., n) cell classes with -1 = none -> (..., n * C) 0/1 float32 targets."""
  out = (cells[..., None] == np.arange(num_classes)).astype(np.float32)
  return out.reshape(*cells.shape[:-1], -1)


def augment(example: data.Example, seed: int, index: int, variant: int, min_scale: float) -> data.Example:
  """Variant 0: the example itself; otherwise a seeded flip and a crop of relative side
  in [min_scale, 1] (independently per axis) resized back to the original size."""
  if variant == 0:
    return {**example, "variant": 0}
  rng = np.random.default_rng([seed, index, variant])
  image, label = example["image"], example["label"]
  h, w = label.shape
  sy, sx = rng.uniform(min_scale, 1.0, 2)
  ch, cw = sy * h, sx * w
  y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
  box = (x0, y0, x0 + cw, y0 + ch)
  image = image_lib.crop_resize(image, box, (h, w))
  label = image_lib.crop_resize(label, box, (h, w), resample=Image.NEAREST)
  if rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  return {**example, "image": np.ascontiguousarray(image), "label": np.ascontiguousarray(label),
          "variant": variant, "id": f"{example['id']}#aug{variant}"}


def augmented(source: data.Source, copies: int, seed: int, min_scale: float) -> data.Source:
  """`copies` consecutive variants of every example (so that CV folds keep them together)."""
  if copies < 1:
    raise ValueError(f"augment must be >= 1, got {copies}")
  if copies == 1:
    return source.map(lambda ex: {**ex, "variant": 0}, "segaug:1")
  spec = f"{source.spec}|segaug:copies={copies},seed={seed},min_scale={min_scale:g},v1"
  ids = [f"{i}#aug{v}" for i in source.ids for v in range(copies)]
  return data.Source(spec, ids, lambda j: augment(source[j // copies], seed, j // copies, j % copies,
                                                  min_scale))


# ---------------------------------------------------------------------------------------------
# Resizing scores back to the image.


def _interp_matrix(out: int, inp: int) -> np.ndarray:
  """(out, inp) bilinear weights with pixel centres aligned (half-pixel convention)."""
  pos = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, inp - 1)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, inp - 1)
  t = (pos - lo).astype(np.float32)
  m = np.zeros((out, inp), np.float32)
  np.add.at(m, (np.arange(out), lo), 1 - t)
  np.add.at(m, (np.arange(out), hi), t)
  return m


def upsample(scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of (S1, S2, C) class scores to (H, W, C)."""
  ry, rx = _interp_matrix(shape[0], scores.shape[0]), _interp_matrix(shape[1], scores.shape[1])
  t = np.tensordot(ry, scores.astype(np.float32), axes=(1, 0))  # (H, S2, C)
  return np.matmul(rx, t)  # (H, W, C)


def nearest_cells(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """A (S, S) map of cell values blown up to (H, W) with the cell assignment of `cell_counts`."""
  s = cells.shape[0]
  return cells[((np.arange(shape[0]) * s) // shape[0])][:, ((np.arange(shape[1]) * s) // shape[1])]


class Scorer:
  """Scores one predictor: full-resolution confusion and a pixel sample for per-class AP."""

  def __init__(self, num_classes: int, ap_stride: int):
    self.confusion = seg_metrics.Confusion(num_classes)
    self.stride = ap_stride
    self.scores: list[np.ndarray] = []
    self.labels: list[np.ndarray] = []

  def add(self, scores: np.ndarray | None, label: np.ndarray, pred: np.ndarray | None = None) -> np.ndarray:
    """scores (S, S, C) cell scores (or None with a given label map `pred`); returns the prediction."""
    if scores is not None:
      full = upsample(scores, label.shape)
      pred = full.argmax(-1)
      s = self.stride
      self.scores.append(full[s // 2::s, s // 2::s].reshape(-1, full.shape[-1]).astype(np.float32))
      self.labels.append(label[s // 2::s, s // 2::s].ravel())
    self.confusion.add(pred, label)
    return pred

  def metrics(self, names: tuple[str, ...]) -> dict[str, Any]:
    iou = self.confusion.iou()
    out = {"miou": seg_metrics.nanmean(iou), "pixel_acc": self.confusion.pixel_accuracy(),
           "iou_per_class": _named(names, iou)}
    if self.scores:
      ap = seg_metrics.class_average_precisions(np.concatenate(self.scores), np.concatenate(self.labels))
      out.update(mean_ap=seg_metrics.nanmean(ap), ap_per_class=_named(names, ap))
    return out


def _named(names, values) -> dict[str, float | None]:
  return {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, values)}


# ---------------------------------------------------------------------------------------------
# Probes.


def fit_combiner(config: ml_collections.ConfigDict, fit: ridge.RidgeFit, x: np.ndarray, cells: np.ndarray,
                 num_classes: int) -> ridge.RidgeFit:
  """Ridge map (C -> C, with bias) from cell score vectors to one-hot classes on non-void cells."""
  c = num_classes
  stats = ridge.init(c, c, config.ridge.num_folds, config.ridge.dtype)
  fold_ids = ridge.kfold_ids(x.shape[0], config.ridge.num_folds)
  for s in range(0, x.shape[0], config.batch_size):
    scores = np.asarray(ridge.predict(fit, x[s:s + config.batch_size])).reshape(-1, c)
    lab = cells[s:s + config.batch_size].reshape(-1)
    folds = np.repeat(fold_ids[s:s + config.batch_size], cells.shape[1])
    keep = lab >= 0
    if keep.any():
      stats = ridge.update(stats, scores[keep], one_hot(lab[keep, None], c), folds[keep])
  return ridge.solve(stats, alphas=config.ridge.alphas, per_target=False)


def train_logistic(lc: ml_collections.ConfigDict, x: np.ndarray, cells: np.ndarray, num_classes: int,
                   seed: int) -> tuple[jax.Array, jax.Array, float]:
  """Softmax per cell: logits (n, cells, C) = x @ W + b; cross-entropy on non-void cells, Adam.

  Returns (W (d, cells*C), b, final training loss)."""
  n, d = x.shape
  k = cells.shape[1] * num_classes
  params = {"w": jnp.zeros((d, k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}
  opt = optax.adam(lc.learning_rate)
  state = opt.init(params)

  def loss_fn(p, xb, yb):
    logits = (xb @ p["w"] + p["b"]).reshape(xb.shape[0], -1, num_classes)
    valid = yb >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(yb, 0))
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1) + lc.l2 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def step(p, s, xb, yb):
    loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(seed)
  bs = min(lc.batch_size, n)
  order, pos, loss = rng.permutation(n), 0, jnp.nan
  for _ in range(lc.steps):
    if pos + bs > n:
      order, pos = rng.permutation(n), 0
    idx = order[pos:pos + bs]
    pos += bs
    params, state, loss = step(params, state, jnp.asarray(x[idx]), jnp.asarray(cells[idx].astype(np.int32)))
  return params["w"], params["b"], float(loss)


# ---------------------------------------------------------------------------------------------
# The task.


def class_names(config: ml_collections.ConfigDict, example: data.Example) -> tuple[str, ...]:
  sc = config.segmentation
  names = tuple(example.get("classes", ())) or tuple(sc.class_names)
  if not names and not sc.num_classes:
    raise ValueError(f"data {example['id']!r} does not name its classes: set "
                     "config.segmentation.class_names or num_classes")
  if sc.class_names and example.get("classes") and tuple(sc.class_names) != tuple(example["classes"]):
    raise ValueError(f"config.segmentation.class_names {tuple(sc.class_names)} differ from the data's "
                     f"classes {tuple(example['classes'])}")
  if sc.num_classes:
    if sc.num_classes < len(names):
      raise ValueError(f"num_classes={sc.num_classes} is fewer than the data's {len(names)} classes")
    names = names + tuple(f"class{i}" for i in range(len(names), sc.num_classes))
  return names


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _train(config, backbone, train: data.Source, num_classes: int):
  """One streamed pass: ridge statistics, the features (kept for the combiner and the logistic
  probe: n x d floats), every cell's class and the class counts of the original images."""
  sc = config.segmentation
  size = sc.size
  fold_ids = ridge.kfold_ids(len(train), config.ridge.num_folds)
  stats, start = None, 0
  xs, cells = [], []
  prior = np.zeros((size * size, num_classes), np.int64)
  for examples, feats in features.iterate(backbone, config.backbone.layer, train, **probe.feature_options(config)):
    batch_cells = []
    for ex in examples:
      try:
        counts = cell_counts(np.asarray(ex["label"]), size, num_classes)
      except ValueError as e:
        raise ValueError(f"example {ex['id']!r}: {e}") from None
      if ex.get("variant", 0) == 0:
        prior += counts
      batch_cells.append(np.where(counts.sum(1) > 0, counts.argmax(1), -1))
    batch_cells = np.stack(batch_cells).astype(np.int16)
    y = one_hot(batch_cells, num_classes)
    if stats is None:
      stats = ridge.init(feats.shape[1], y.shape[1], config.ridge.num_folds, config.ridge.dtype)
    stats = ridge.update(stats, feats, y, fold_ids[start:start + len(examples)])
    start += len(examples)
    xs.append(feats)
    cells.append(batch_cells)
  logging.info("segmentation: %d x %d ridge statistics accumulated; peak RSS %.0f MiB",
               stats.xy.shape[1], stats.xy.shape[2], peak_rss_mb())
  fit = ridge.solve(stats, alphas=config.ridge.alphas, per_target=config.ridge.per_target)
  del stats
  return fit, np.concatenate(xs), np.concatenate(cells), prior


@tasks.register("segmentation")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  sc = config.segmentation
  size = sc.size
  backbone = probe.backbone_from_config(config)
  test = data.open_source(config.data.test)
  names = class_names(config, test[0])
  c = len(names)
  logistic = None

  if config.restore:
    fits, meta = checkpoint.restore(config.restore)
    if meta.get("task") != "segmentation" or meta.get("size") != size or meta.get("num_classes") != c \
        or meta.get("layer") != config.backbone.layer:
      raise ValueError(f"checkpoint {config.restore} is not a segmentation probe of size {size}, {c} classes "
                       f"and layer {config.backbone.layer!r}")
    fit, combiner = fits["segmentation"], fits["combiner"]
    prior = np.asarray(meta["prior_counts"], np.int64).reshape(size * size, c)
    n_train = n_aug = 0
  else:
    base = data.open_source(config.data.train)
    train = augmented(base, sc.augment, config.seed, sc.min_scale)
    n_train, n_aug = len(base), len(train)
    fit, x_train, cells_train, prior = _train(config, backbone, train, c)
    combiner = fit_combiner(config, fit, x_train, cells_train, c)
    if sc.logistic.enabled:
      w, b, loss = train_logistic(sc.logistic, x_train, cells_train, c, config.seed)
      logistic = (w, b)
      logging.info("segmentation: logistic probe trained, final batch loss %.4f", loss)
    del x_train
    checkpoint.save(os.path.join(workdir, "checkpoint"), {"segmentation": fit, "combiner": combiner}, {
        "task": "segmentation", "size": size, "num_classes": c, "classes": list(names),
        "layer": config.backbone.layer, "backbone": config.backbone.to_dict(), "train": config.data.train,
        "augment": sc.augment, "prior_counts": prior.reshape(-1).tolist()})

  prior_cells = np.where(prior.sum(1) > 0, prior.argmax(1), 0).reshape(size, size)
  scorers = {"ridge": Scorer(c, sc.ap_stride), "no_combiner": Scorer(c, 0), "prior": Scorer(c, 0)}
  if logistic is not None:
    scorers["logistic"] = Scorer(c, sc.ap_stride)
  shown, seen = [], 0
  show = set(np.linspace(0, len(test) - 1, min(config.num_figure_examples, len(test))).astype(int).tolist())
  for examples, feats in features.iterate(backbone, config.backbone.layer, test, **probe.feature_options(config)):
    raw = np.asarray(ridge.predict(fit, feats)).reshape(len(examples), size, size, c)
    comb = np.asarray(ridge.predict(combiner, raw.reshape(-1, c))).reshape(raw.shape)
    if logistic is not None:
      logits = (jnp.asarray(feats) @ logistic[0] + logistic[1]).reshape(len(examples), size, size, c)
      probs = np.asarray(jax.nn.softmax(logits, -1))
    for i, ex in enumerate(examples):
      label = np.asarray(ex["label"])
      if label.shape != ex["image"].shape[:2]:
        raise ValueError(f"label of {ex['id']!r} has shape {label.shape}, its image {ex['image'].shape[:2]}")
      if ((label >= c) & (label != VOID)).any():
        raise ValueError(f"label of {ex['id']!r} holds ids outside the {c} classes")
      pred = scorers["ridge"].add(comb[i], label)
      raw_up = upsample(raw[i], label.shape)
      scorers["no_combiner"].add(None, label, raw_up.argmax(-1))
      scorers["prior"].add(None, label, nearest_cells(prior_cells, label.shape))
      pred_logistic = scorers["logistic"].add(probs[i], label) if logistic is not None else None
      seen += 1
      if seen - 1 in show:
        shown.append({"image": ex["image"], "label": label, "raw": raw_up, "pred": pred,
                      "prior": nearest_cells(prior_cells, label.shape), "logistic": pred_logistic})

  ridge_m = scorers["ridge"].metrics(names)
  prior_m = scorers["prior"].metrics(names)
  metrics = {
      "mean_ap": ridge_m["mean_ap"], "miou": ridge_m["miou"], "pixel_acc": ridge_m["pixel_acc"],
      "ap_per_class": ridge_m["ap_per_class"], "iou_per_class": ridge_m["iou_per_class"],
      "miou_prior": prior_m["miou"], "pixel_acc_prior": prior_m["pixel_acc"],
      "iou_per_class_prior": prior_m["iou_per_class"],
      "miou_no_combiner": scorers["no_combiner"].metrics(names)["miou"],
      "n_train": n_train, "n_train_augmented": n_aug, "n_test": len(test), "num_classes": c,
      "num_targets": int(np.asarray(fit.weights).shape[1]), "feature_dim": int(np.asarray(fit.weights).shape[0]),
      "alpha_median": float(np.median(np.asarray(fit.alpha))),
      "combiner_alpha": float(np.asarray(combiner.alpha)[0]),
      "peak_rss_mb": round(peak_rss_mb(), 1),
  }
  if logistic is not None:
    metrics["logistic"] = scorers["logistic"].metrics(names)
  figures.save(probability_figure(shown[:4], names), os.path.join(workdir, "segmentation_probabilities.png"))
  figures.save(label_figure(shown, c), os.path.join(workdir, "segmentation_labels.png"))
  return metrics


# ---------------------------------------------------------------------------------------------
# Figures.


def _palette(num_classes: int) -> np.ndarray:
  import matplotlib.pyplot as plt
  cmap = plt.get_cmap("tab20")
  colours = np.array([cmap(i % 20)[:3] for i in range(num_classes)])
  return np.concatenate([colours, np.zeros((256 - num_classes, 3))])  # void (255) is black


def colour_labels(label: np.ndarray, num_classes: int) -> np.ndarray:
  return _palette(num_classes)[label]


def probability_figure(shown: list[dict[str, Any]], names: tuple[str, ...]):
  """Fig. 5: per example, the image, the background map and every class map, one intensity scale."""
  import matplotlib.pyplot as plt
  c = len(names)
  cols = 2 + (c - 1)
  fig, axes = plt.subplots(max(1, len(shown)), cols, figsize=(cols * 0.9, max(1, len(shown)) * 0.95),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for r, s in enumerate(shown):
    maps = np.clip(s["raw"], 0, None)
    vmax = max(float(maps.max()), 1e-6)  # the same scale for every mask of the example
    axes[r, 0].imshow(s["image"])
    for k in range(c):
      axes[r, 1 + k].imshow(maps[..., k], cmap="gray", vmin=0, vmax=vmax)
      if r == 0:
        axes[r, 1 + k].set_title(names[k], fontsize=5)
  fig.tight_layout(pad=0.2)
  return fig


def label_figure(shown: list[dict[str, Any]], num_classes: int):
  """Per example: image, ground truth, ridge prediction, logistic prediction (if any), prior."""
  import matplotlib.pyplot as plt
  keys = [("label", "ground truth"), ("pred", "ridge"), ("logistic", "logistic"), ("prior", "prior")]
  keys = [(k, t) for k, t in keys if shown and shown[0].get(k) is not None]
  cols = 1 + len(keys)
  fig, axes = plt.subplots(max(1, len(shown)), cols, figsize=(cols * 1.4, max(1, len(shown)) * 1.1),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for r, s in enumerate(shown):
    axes[r, 0].imshow(s["image"])
    for j, (k, title) in enumerate(keys):
      axes[r, 1 + j].imshow(colour_labels(s[k], num_classes), interpolation="nearest")
      if r == 0:
        axes[r, 1 + j].set_title(title, fontsize=7)
  fig.tight_layout(pad=0.2)
  return fig
