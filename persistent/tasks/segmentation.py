"""Semantic segmentation from a global feature (the paper's Table 3 and Fig. 5).

Targets: each label map is cut into S x S cells (30 x 30 in the paper) and every cell takes its
most frequent non-void class (an all-void cell takes none), giving one 0/1 target per (cell,
class): 18,900 ridge regressors for VOC's 21 classes, fitted on the training set augmented
`augment`-fold (variant 0 the image itself, the others a seeded flip and crop-and-rescale; the
copies of an image share a fold).

Prediction: the regressors give a score vector (C,) per cell; a C x C combiner (with bias), fitted
by ridge in a second pass from the cell scores to the one-hot class of every non-void training
cell, maps it to class scores, which are resized bilinearly to the image; the argmax is the label.
Scores at full resolution, void ignored: per-class AP (Table 3), IoU, pixel accuracy, and the
same for `prior` (each pixel's most frequent training class at its relative position) and for an
optional multinomial logistic probe (`persistent.logistic`) on the same features.
"""
from __future__ import annotations

import logging
import os
import resource
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from persistent import data, figures, logistic, metrics, probe, ridge, tasks
from persistent.data import images as image_lib
from persistent.data.segmentation import VOID
from persistent.figures import segmentation as seg_figures


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


def one_hot(cells: np.ndarray, num_classes: int, void: float = 0.0) -> np.ndarray:
  """(..., n) cell classes with -1 = none -> (..., n * C) 0/1 float32 targets (`void` for none)."""
  out = (cells[..., None] == np.arange(num_classes)).astype(np.float32)
  out[cells < 0] = void
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
  """`copies` consecutive variants of every example."""
  if copies < 1:
    raise ValueError(f"augment must be >= 1, got {copies}")
  spec = f"{source.spec}|segaug:copies={copies},seed={seed},min_scale={min_scale:g},v1"
  ids = [f"{i}#aug{v}" if v else i for i in source.ids for v in range(copies)]
  return data.Source(spec, ids, lambda j: augment(source[j // copies], seed, j // copies, j % copies, min_scale))


def class_names(config: ml_collections.ConfigDict, example: data.Example) -> tuple[str, ...]:
  """The data's class names (or config.segmentation.class_names), padded to num_classes."""
  sc = config.segmentation
  given, own = tuple(sc.class_names), tuple(example.get("classes", ()))
  if given and own and given != own:
    raise ValueError(f"config.segmentation.class_names {given} differ from the classes {own} of {example['id']!r}")
  names = own or given
  if not names and not sc.num_classes:
    raise ValueError(f"data {example['id']!r} does not name its classes: set "
                     "config.segmentation.class_names or num_classes")
  if sc.num_classes:
    if sc.num_classes < len(names):
      raise ValueError(f"num_classes={sc.num_classes} is fewer than the data's {len(names)} classes")
    names = names + tuple(f"class{i}" for i in range(len(names), sc.num_classes))
  return names


def _labels(example: data.Example, size: int, c: int) -> np.ndarray:
  label = np.asarray(example["label"])
  try:
    return cell_labels(label, size, c)
  except ValueError as e:
    raise ValueError(f"example {example['id']!r}: {e}") from None


@tasks.register("segmentation")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  sc = config.segmentation
  size, cells = sc.size, sc.size * sc.size
  pipe = probe.Pipeline(config)
  test = pipe.source(config.data.test)
  names = class_names(config, test[0])
  c = len(names)
  main = probe.Head("segmentation", cells * c, lambda exs: one_hot(np.stack([_labels(e, size, c) for e in exs]), c))

  def combiner(fit: ridge.RidgeFit) -> probe.Head:  # cell score vectors -> one-hot classes, void cells left out
    return probe.Head("combiner", c, lambda exs: one_hot(np.stack([_labels(e, size, c) for e in exs])[..., None], c,
                                                         void=np.nan).reshape(-1, c),
                      inputs=lambda exs, f: f @ np.asarray(fit.weights) + np.asarray(fit.bias), input_dim=c,
                      rows_per_example=cells, per_target=False)
  layout = {"size": size, "classes": list(names), "augment": sc.augment, "min_scale": sc.min_scale,
            "seed": config.seed, "logistic": sc.logistic.to_dict()}
  if config.restore:
    fits, state = pipe.restore(layout)
  else:
    base = pipe.source(config.data.train)
    if class_names(config, base[0]) != names:
      raise ValueError(f"the classes of {config.data.train!r} differ from those of {config.data.test!r} {names}")
    train = augmented(base, sc.augment, config.seed, sc.min_scale)
    groups = np.arange(len(train)) // sc.augment  # the copies of an image share a fold
    prior = lambda exs: sum(cell_counts(np.asarray(e["label"]), size, c) for e in exs if e["variant"] == 0)
    keep = (lambda b: [(f, _labels(e, size, c)) for f, e in zip(b.features, b.examples)]) if sc.logistic.enabled else None
    fitted = pipe.fit(train, [main], groups=groups, sums={"prior": prior}, collect=keep)
    logging.info("segmentation: %d targets fitted; peak RSS %.0f MiB", cells * c, peak_rss_mb())
    fits = {"segmentation": fitted.fits["segmentation"]}
    fits["combiner"] = pipe.fit(train, [combiner(fits["segmentation"])], groups=groups).fits["combiner"]
    if sc.logistic.enabled:
      lc = sc.logistic
      fits["logistic"], loss = logistic.train(
          np.stack([r[0] for r in fitted.records]), np.stack([r[1] for r in fitted.records]), c, steps=lc.steps,
          batch_size=lc.batch_size, learning_rate=lc.learning_rate, l2=lc.l2, seed=config.seed)
      logging.info("segmentation: logistic probe trained, final batch loss %.4f", loss)
    state = {"n_train": len(base), "n_train_augmented": len(train), "prior_counts": fitted.sums["prior"].tolist()}
    pipe.save(workdir, fits, layout, state)

  prior = np.asarray(state["prior_counts"], np.int64)
  prior_cells = np.where(prior.sum(1) > 0, prior.argmax(1), 0).reshape(size, size)
  scorers = {"ridge": metrics.SegmentationScores(c, sc.ap_stride), "no_combiner": metrics.SegmentationScores(c),
             "prior": metrics.SegmentationScores(c)}
  if "logistic" in fits:
    scorers["logistic"] = metrics.SegmentationScores(c, sc.ap_stride)
  show = set(np.linspace(0, len(test) - 1, min(config.num_figure_examples, len(test))).astype(int).tolist())

  def score(batch: probe.Batch) -> list[dict[str, Any]]:
    out = []
    for i, ex in enumerate(batch.examples):
      label = np.asarray(ex["label"])
      if label.shape != ex["image"].shape[:2]:
        raise ValueError(f"label of {ex['id']!r} has shape {label.shape}, its image {ex['image'].shape[:2]}")
      raw = batch.preds["segmentation"][i].reshape(size, size, c)
      shown = {"image": ex["image"], "label": label, "raw": metrics.upsample(raw, label.shape)}
      shown["pred"], parts = scorers["ridge"].score(label, batch.preds["combiner"][i].reshape(size, size, c))
      parts = {"ridge": parts, "no_combiner": scorers["no_combiner"].score(label, pred=shown["raw"].argmax(-1))[1]}
      shown["prior"] = metrics.nearest_cells(prior_cells, label.shape)
      parts["prior"] = scorers["prior"].score(label, pred=shown["prior"])[1]
      if "logistic" in fits:
        probs = logistic.probabilities(fits["logistic"], batch.features[i:i + 1], c)[0].reshape(size, size, c)
        shown["logistic"], parts["logistic"] = scorers["logistic"].score(label, probs)
      out.append((parts, shown if batch.index[i] in show else None))
    return out
  _, records = pipe.predict(test, [main, combiner(fits["segmentation"])], fits, record=score)
  for parts, _ in records:
    for name, part in parts.items():
      scorers[name].add(part)
  shown = [s for _, s in records if s is not None]
  figures.save(seg_figures.probabilities(shown[:4], names), os.path.join(workdir, "segmentation_probabilities.png"))
  figures.save(seg_figures.labels(shown, c), os.path.join(workdir, "segmentation_labels.png"))
  result = scorers["ridge"].summary(names)
  prior_m = scorers["prior"].summary(names)
  fit = fits["segmentation"]
  return {
      **result, "miou_prior": prior_m["miou"], "pixel_acc_prior": prior_m["pixel_acc"],
      "iou_per_class_prior": prior_m["iou_per_class"], "miou_no_combiner": scorers["no_combiner"].summary(names)["miou"],
      **({"logistic": scorers["logistic"].summary(names)} if "logistic" in scorers else {}),
      "n_train": state["n_train"], "n_train_augmented": state["n_train_augmented"], "n_test": len(test),
      "num_classes": c, "num_targets": int(fit.weights.shape[1]), "feature_dim": int(fit.weights.shape[0]),
      "combiner_alpha": float(np.asarray(fits["combiner"].alpha)[0]), **probe.summary(fit),
      "peak_rss_mb": round(peak_rss_mb(), 1),
  }


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
