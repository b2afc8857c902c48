"""Facial landmarks (the paper's Table 1, Fig. 2a and Fig. 3): ridge from a global feature of the
face crop to all 2L landmark coordinates, the paper's baselines, and the look-back cascade.

Pipeline (all settings in config.landmarks, see configs/landmarks.py):
  * Face box: the ground-truth landmarks' bounding box made square and enlarged by `margin` per
    side (the usual ground-truth box protocol of 300-W). Training faces are also cropped with
    `jitter_copies` seeded jittered boxes (centre shift up to `jitter_shift` x side, scale up to
    x(1 + `jitter_scale`)) so that the probe has to localise rather than memorise the box.
  * Targets: the 2L coordinates in the crop's frame (units of the box side); one ridge fit.
  * Baselines in the same run: dataset bias (the training mean shape in the face box), RGB + ridge
    (raw pixels of an `rgb_size`^2 resize of the crop) and ConvNet + ridge.
  * Look-back, `lookback_stages` times: for each group of landmarks (`groups`, six by default:
    two jaw halves, each eye with its brow, nose, mouth), a square box around the group's current
    predictions, padded by the `lookback_quantile` quantile of the group's largest per-point
    training error (as a fraction of the face box side), is cropped and fed to the backbone; a
    ridge fit per group regresses the group's points in that box. The training boxes come from
    predictions for training faces made by models fitted on the other folds (cross-fitting, with
    all crops of a face in one fold), so the stage learns to correct the errors it will meet.

Metrics: inter-ocular NME (see persistent.landmark_metrics) per method and per look-back stage,
per group, CED-curve AUC@0.1 and failure rate (NME > 0.1). Figures: `lookback_examples.png`
(Fig. 3 triplets), `errors_per_group.png` (Fig. 2a), `ced.png`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from persistent import checkpoint, data, features, figures, probe, ridge, tasks
from persistent import landmark_geometry as geo
from persistent import landmark_metrics as lm
from persistent.data import faces as _faces  # noqa: F401  (registers 300w, helen)
from persistent.data import images as image_lib
from persistent.data import synthetic_faces as _synthetic_faces  # noqa: F401

METHODS = ("dataset_bias", "rgb_ridge", "convnet_ridge", "lookback")


# ----------------------------------------------------------------------------------------------
# Data


def open_split(config: ml_collections.ConfigDict) -> tuple[data.Source, data.Source]:
  """Train and test sources; an empty data.test holds out a seeded `holdout` fraction of train."""
  train = data.open_source(config.data.train)
  if config.data.test:
    return train, data.open_source(config.data.test)
  frac = config.landmarks.holdout
  if not 0 < frac < 1:
    raise ValueError(f"data.test is empty, so landmarks.holdout must lie in (0, 1); got {frac}")
  perm = np.random.default_rng([config.seed, 7]).permutation(len(train))
  n_test = int(round(frac * len(train)))
  if n_test < 1 or n_test >= len(train):
    raise ValueError(f"holdout {frac} of {len(train)} faces leaves an empty split")
  return train.subset(np.sort(perm[n_test:])), train.subset(np.sort(perm[:n_test]))


def all_landmarks(source: data.Source, workers: int | None) -> np.ndarray:
  """(N, L, 2) landmarks of every example, with the example named when they differ in shape."""
  marks = []
  for exs in data.iterate(source, 64, workers=workers):
    for ex in exs:
      if "landmarks" not in ex:
        raise ValueError(f"example {ex['id']!r} of {source.spec!r} has no 'landmarks'")
      m = np.asarray(ex["landmarks"], np.float32)
      if marks and m.shape != marks[0].shape:
        raise ValueError(f"landmarks of {ex['id']!r} have shape {m.shape}, expected {marks[0].shape}")
      if not np.isfinite(m).all():
        raise ValueError(f"landmarks of {ex['id']!r} are not finite")
      marks.append(m)
  return np.stack(marks)


def crop_source(faces: data.Source, face_idx: np.ndarray, boxes: np.ndarray, size: tuple[int, int],
                name: str) -> data.Source:
  """Crops boxes[i] of face face_idx[i] at `size`; the spec digests every box (feature cache)."""
  face_idx, boxes = np.asarray(face_idx), np.asarray(boxes, np.float64)
  tag = f"facecrop:v1,{name},size={size[0]}x{size[1]},{data._digest((face_idx.tolist(), np.round(boxes, 3).tolist()))}"

  def load(i: int) -> data.Example:
    ex = faces[int(face_idx[i])]
    return {"image": image_lib.crop_resize(ex["image"], boxes[i], size), "id": f"{ex['id']}#{name}:{i}"}
  ids = [f"{faces.ids[int(f)]}#{name}:{i}" for i, f in enumerate(face_idx)]
  return data.Source(f"{faces.spec}|{tag}", ids, load)


def crop_features(config, backbone, source: data.Source, rgb_size: int = 0):
  """ConvNet features (M, D) of a crop source, and raw RGB vectors (M, rgb_size^2*3) in [0, 1]."""
  feats, rgb = [], []
  for examples, f in features.iterate(backbone, config.backbone.layer, source,
                                      **probe.feature_options(config)):
    feats.append(f)
    if rgb_size:
      rgb += [image_lib.resize(ex["image"], (rgb_size, rgb_size)).reshape(-1) for ex in examples]
  return np.concatenate(feats), (np.stack(rgb).astype(np.float32) / 255.0 if rgb_size else None)


def lookback_features(config, backbone, faces: data.Source, boxes: dict[str, np.ndarray],
                      size: tuple[int, int], stage: int) -> dict[str, np.ndarray]:
  """Features of every group's look-back crops, extracted in one pass (one crop source)."""
  names = list(boxes)
  n = len(boxes[names[0]])
  src = crop_source(faces, np.tile(np.arange(n), len(names)), np.concatenate([boxes[k] for k in names]),
                    size, f"lookback{stage}")
  X, _ = crop_features(config, backbone, src)
  return {k: X[i * n:(i + 1) * n] for i, k in enumerate(names)}


# ----------------------------------------------------------------------------------------------
# Fitting


def face_folds(n: int, num_folds: int, seed: int) -> np.ndarray:
  """A seeded balanced fold per face."""
  return ridge.kfold_ids(n, num_folds)[np.argsort(np.random.default_rng([seed, 11]).permutation(n))]


def row_space(X: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
  """An orthonormal basis (d, r) of the span of the rows of X (n, d), from the n x n Gram."""
  g = np.asarray(X, np.float64) @ np.asarray(X, np.float64).T
  e, u = np.linalg.eigh(g)
  keep = e > rtol * max(e.max(), 1e-30)
  return ((X.T.astype(np.float64) @ u[:, keep]) / np.sqrt(e[keep])).astype(np.float32)


def fit_ridge(config, X: np.ndarray, Y: np.ndarray, folds: np.ndarray, alphas) -> ridge.RidgeFit:
  """Ridge with lambda by CV over the given (face-grouped) folds, renumbered to 0..F-1.

  With fewer samples than features the fit runs on the coordinates X V of the samples in their
  row space V: ridge solutions (and every CV fold's, whose rows span a subspace of it) lie in
  that space and the penalty is rotation invariant, so the result, mapped back as weights V W,
  is the same model at a fraction of the cost (an r x r instead of a d x d problem).
  """
  uniq, folds = np.unique(folds, return_inverse=True)
  kw = dict(alphas=alphas, num_folds=len(uniq), per_target=config.ridge.per_target, fold_ids=folds,
            dtype=config.ridge.dtype)
  if X.shape[0] >= X.shape[1]:
    return ridge.fit(X, Y, **kw)
  v = row_space(X)
  fit = ridge.fit(X @ v, Y, **kw)
  return fit.replace(weights=jnp.asarray(v) @ fit.weights)


def cross_fit(config, X, Y, sample_folds, target_rows, alphas) -> np.ndarray:
  """Out-of-fold predictions for rows `target_rows` of X: each from a model fitted without the
  fold of that row (and so without any crop of the same face)."""
  out = np.zeros((len(target_rows), Y.shape[1]), np.float32)
  for f in np.unique(sample_folds):
    keep = sample_folds != f
    fit = fit_ridge(config, X[keep], Y[keep], sample_folds[keep], alphas)
    sel = sample_folds[target_rows] == f
    out[sel] = np.asarray(ridge.predict(fit, X[target_rows[sel]]))
  return out


def _alpha_summary(fit: ridge.RidgeFit) -> float:
  return float(np.median(np.asarray(fit.alpha)))


def train(config, backbone, faces: data.Source, truth: np.ndarray,
          groups: dict[str, list[int]]) -> dict[str, Any]:
  """Fits every model; returns {'fits': {name: RidgeFit}, 'meta': {...}} for `predict`."""
  cfg = config.landmarks
  n, num_points = truth.shape[:2]
  size = tuple(backbone.input_size)
  folds = face_folds(n, config.ridge.num_folds, config.seed)
  base = geo.face_boxes(truth, cfg.margin)
  copies = 1 + cfg.jitter_copies
  face_idx = np.repeat(np.arange(n), copies)
  boxes = np.repeat(base, copies, axis=0)
  for c in range(1, copies):
    rng = np.random.default_rng([config.seed, 101, c])
    boxes[c::copies] = geo.jitter_boxes(base, rng, cfg.jitter_shift, cfg.jitter_scale)
  t0 = time.time()
  X, R = crop_features(config, backbone, crop_source(faces, face_idx, boxes, size, "face"), cfg.rgb_size)
  logging.info("stage 0 features %s for %d crops in %.0fs", X.shape, len(X), time.time() - t0)
  Y = geo.to_crop(truth[face_idx], boxes).reshape(len(face_idx), -1).astype(np.float32)
  sample_folds = folds[face_idx]
  fits = {"convnet": fit_ridge(config, X, Y, sample_folds, config.ridge.alphas),
          "rgb": fit_ridge(config, R, Y, sample_folds, cfg.rgb_alphas)}
  # Everything `predict` needs besides the fits, so that a restored model predicts the same.
  meta: dict[str, Any] = {"mean_shape": Y[::copies].mean(0).tolist(), "margins": [],
                          "margin": cfg.margin, "rgb_size": cfg.rgb_size,
                          "lookback_min_pad": cfg.lookback_min_pad,
                          "groups": groups, "num_points": num_points, "feature_dim": int(X.shape[1]),
                          "n_train_crops": int(len(X))}
  if not cfg.lookback_stages:
    return {"fits": fits, "meta": meta}
  # Stage-0 predictions for the training faces (the unjittered crop), fitted without their fold.
  originals = np.arange(n) * copies
  pred = geo.from_crop(cross_fit(config, X, Y, sample_folds, originals, config.ridge.alphas)
                       .reshape(n, num_points, 2), base)
  side = base[:, 2] - base[:, 0]
  meta["train_oof_nme"] = [lm.nme(pred, truth)]
  for stage in range(1, cfg.lookback_stages + 1):
    margins = {name: float(np.quantile(np.abs(pred[:, idx] - truth[:, idx]).max(axis=(1, 2)) / side,
                                       cfg.lookback_quantile)) for name, idx in groups.items()}
    gboxes = {name: geo.group_boxes(pred[:, idx], (margins[name] + cfg.lookback_min_pad) * side)
              for name, idx in groups.items()}
    t0 = time.time()
    feats = lookback_features(config, backbone, faces, gboxes, size, stage)
    logging.info("look-back stage %d: %d crops in %.0fs; margins %s", stage, n * len(groups),
                 time.time() - t0, {k: round(v, 3) for k, v in margins.items()})
    new_pred = pred.copy()
    for name, idx in groups.items():
      Yg = geo.to_crop(truth[:, idx], gboxes[name]).reshape(n, -1).astype(np.float32)
      fits[f"stage{stage}:{name}"] = fit_ridge(config, feats[name], Yg, folds, config.ridge.alphas)
      if stage < cfg.lookback_stages:
        oof = cross_fit(config, feats[name], Yg, folds, np.arange(n), config.ridge.alphas)
        new_pred[:, idx] = geo.from_crop(oof.reshape(n, len(idx), 2), gboxes[name])
    meta["margins"].append(margins)
    pred = new_pred
    if stage < cfg.lookback_stages:
      meta["train_oof_nme"].append(lm.nme(pred, truth))
  return {"fits": fits, "meta": meta}


def predict(config, backbone, model: dict[str, Any], faces: data.Source, truth: np.ndarray) -> dict[str, Any]:
  """Predictions (N, L, 2) of every method and look-back stage for faces with ground-truth boxes.

  The ground truth is used only for the face box (the protocol) and never for the look-back.
  """
  fits, meta = model["fits"], model["meta"]
  n, num_points = truth.shape[:2]
  size = tuple(backbone.input_size)
  base = geo.face_boxes(truth, meta["margin"])
  side = base[:, 2] - base[:, 0]
  pad = lambda margin: (margin + meta["lookback_min_pad"]) * side
  X, R = crop_features(config, backbone, crop_source(faces, np.arange(n), base, size, "face"),
                       meta["rgb_size"])
  shape = lambda y: geo.from_crop(np.asarray(y).reshape(n, num_points, 2), base)
  out = {"dataset_bias": shape(np.tile(np.asarray(meta["mean_shape"], np.float32), (n, 1))),
         "rgb_ridge": shape(ridge.predict(fits["rgb"], R)),
         "convnet_ridge": shape(ridge.predict(fits["convnet"], X))}
  stages, boxes = [out["convnet_ridge"]], []
  for stage, margins in enumerate(meta["margins"], start=1):
    gboxes = {name: geo.group_boxes(stages[-1][:, idx], pad(margins[name]))
              for name, idx in meta["groups"].items()}
    feats = lookback_features(config, backbone, faces, gboxes, size, stage)
    pred = stages[-1].copy()
    for name, idx in meta["groups"].items():
      y = np.asarray(ridge.predict(fits[f"stage{stage}:{name}"], feats[name])).reshape(n, len(idx), 2)
      pred[:, idx] = geo.from_crop(y, gboxes[name])
    stages.append(pred)
    boxes.append(gboxes)
  if len(stages) > 1:
    out["lookback"] = stages[-1]
  return {"methods": out, "stages": stages, "boxes": boxes, "face_boxes": base}


# ----------------------------------------------------------------------------------------------
# Task


def _save(workdir: str, config, model) -> None:
  meta = dict(model["meta"], task="landmarks", backbone=config.backbone.to_dict(),
              landmarks=config.landmarks.to_dict(), train=config.data.train)
  checkpoint.save(os.path.join(workdir, "checkpoint"), model["fits"], meta)


def _restore(config) -> dict[str, Any]:
  path = config.restore  # a previous run's workdir, or its checkpoint folder
  if os.path.isdir(os.path.join(path, "checkpoint")):
    path = os.path.join(path, "checkpoint")
  fits, meta = checkpoint.restore(path)
  want = {k: config.backbone[k] for k in ("name", "weights", "layer")}
  got = {k: meta.get("backbone", {}).get(k) for k in want}
  if got != want:
    raise ValueError(f"checkpoint {config.restore} was fitted on backbone {got}, not {want}")
  meta["groups"] = {k: list(v) for k, v in meta["groups"].items()}
  return {"fits": fits, "meta": meta}


@tasks.register("landmarks")
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  cfg = config.landmarks
  backbone = probe.backbone_from_config(config)
  train_src, test_src = open_split(config)
  workers = config.data.workers or None
  truth_test = all_landmarks(test_src, workers)
  if config.restore:
    model = _restore(config)
    n_train = None
  else:
    truth_train = all_landmarks(train_src, workers)
    groups = geo.parse_groups(cfg.groups, truth_train.shape[1])
    if cfg.lookback_stages and config.ridge.num_folds < 3:
      raise ValueError("look-back cross-fitting needs ridge.num_folds >= 3 (each held-out fold's "
                       f"model is itself cross-validated); got {config.ridge.num_folds}")
    if len(train_src) < 2 * config.ridge.num_folds:
      raise ValueError(f"{len(train_src)} training faces are too few for {config.ridge.num_folds}-fold ridge")
    model = train(config, backbone, train_src, truth_train, groups)
    _save(workdir, config, model)
    n_train = len(train_src)
  if truth_test.shape[1] != model["meta"]["num_points"]:
    raise ValueError(f"test faces have {truth_test.shape[1]} landmarks, the model {model['meta']['num_points']}")
  result = predict(config, backbone, model, test_src, truth_test)
  groups = model["meta"]["groups"]
  methods = result["methods"]
  per_face = {m: lm.nme_per_face(p, truth_test) for m, p in methods.items()}
  metrics: dict[str, Any] = {
      "nme": {m: float(v.mean()) for m, v in per_face.items()},
      "nme_per_stage": [lm.nme(p, truth_test) for p in result["stages"]],
      "nme_per_group": {m: lm.nme_per_group(p, truth_test, groups) for m, p in methods.items()},
      "auc_0.1": {m: lm.auc(v, 0.1) for m, v in per_face.items()},
      "failure_rate_0.1": {m: float((v > 0.1).mean()) for m, v in per_face.items()},
      "n_train": n_train, "n_test": len(test_src), "num_points": int(truth_test.shape[1]),
      "layer": config.backbone.layer, "feature_dim": model["meta"]["feature_dim"],
      "lookback_margins": model["meta"]["margins"],
      "groups": {k: len(v) for k, v in groups.items()},
  }
  if "train_oof_nme" in model["meta"]:
    metrics["train_crossfit_nme_per_stage"] = model["meta"]["train_oof_nme"]
  if "n_train_crops" in model["meta"] and not config.restore:
    metrics["n_train_crops"] = model["meta"]["n_train_crops"]
  metrics["alpha_median"] = {k.replace(":", "/"): _alpha_summary(f) for k, f in model["fits"].items()}
  make_figures(config, workdir, test_src, truth_test, result, per_face, groups)
  return metrics


# ----------------------------------------------------------------------------------------------
# Figures


def make_figures(config, workdir, faces, truth, result, per_face, groups) -> None:
  import matplotlib.pyplot as plt  # figures sets the Agg backend on import

  methods = result["methods"]
  labels = {"dataset_bias": "dataset bias", "rgb_ridge": "RGB + ridge",
            "convnet_ridge": "ConvNet + ridge", "lookback": "ConvNet + look-back"}
  # CED curves (all methods).
  t = np.linspace(0, config.landmarks.ced_max, 201)
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  for m, v in per_face.items():
    ax.plot(t, lm.ced(v, t), label=f"{labels[m]} ({v.mean():.3f})")
  ax.set_xlabel("NME (inter-ocular)")
  ax.set_ylabel("fraction of test faces")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  figures.save(fig, os.path.join(workdir, "ced.png"))
  # Per-group errors (Fig. 2a).
  names = list(groups)
  fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.2))
  width = 0.8 / len(methods)
  for j, (m, p) in enumerate(methods.items()):
    errs = lm.nme_per_group(p, truth, groups)
    ax.bar(np.arange(len(names)) + (j - (len(methods) - 1) / 2) * width, [errs[g] for g in names],
           width, label=labels[m])
  ax.set_xticks(np.arange(len(names)), names, rotation=20, fontsize=7)
  ax.set_ylabel("NME")
  ax.legend(fontsize=7)
  figures.save(fig, os.path.join(workdir, "errors_per_group.png"))
  # Fig. 3 triplets: ground truth | ConvNet + ridge with look-back boxes | look-back result.
  k = min(config.num_figure_examples, len(faces))
  if not k:
    return
  final = result["stages"][-1]
  cols = 2
  rows = int(np.ceil(k / cols))
  fig, axes = plt.subplots(rows, 3 * cols, figsize=(3 * cols * 1.6, rows * 1.7), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  view = result["face_boxes"][:k]
  side = view[:, 2] - view[:, 0]
  view = view + np.stack([-0.1 * side, -0.1 * side, 0.1 * side, 0.1 * side], 1)  # a little context
  px = 160
  for i in range(k):
    image = image_lib.crop_resize(faces[i]["image"], view[i], (px, px))
    to_px = lambda p: geo.to_crop(p[None], view[i:i + 1])[0] * px - 0.5
    r, c = divmod(i, cols)
    panels = [(truth[i], "ground truth", "lime", None), (result["stages"][0][i], "ConvNet + ridge", "yellow",
              result["boxes"][0] if result["boxes"] else None), (final[i], "look-back", "cyan", None)]
    for j, (pts, title, colour, boxes) in enumerate(panels):
      ax = axes[r, 3 * c + j]
      ax.imshow(image)
      q = to_px(pts)
      ax.scatter(q[:, 0], q[:, 1], s=2, c=colour, linewidths=0)
      if boxes is not None:
        for name, b in boxes.items():
          corners = to_px(np.array([[b[i, 0] - 0.5, b[i, 1] - 0.5], [b[i, 2] - 0.5, b[i, 3] - 0.5]]))
          ax.add_patch(plt.Rectangle(corners[0], *(corners[1] - corners[0]), fill=False, lw=0.6,
                                     ec="red"))
      ax.set_xlim(0, px)
      ax.set_ylim(px, 0)
      if r == 0:
        ax.set_title(title, fontsize=7)
  fig.tight_layout(pad=0.3)
  figures.save(fig, os.path.join(workdir, "lookback_examples.png"))
