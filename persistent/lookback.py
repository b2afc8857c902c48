"""The look-back cascade (the paper's Sec. 3.1), for facial landmarks and body joints alike.

Points are partitioned into groups (eyes with brows, nose, mouth, jaw halves; or head, arms,
legs, torso). Each stage takes the previous estimate of every object's points, crops a square box
around each group's estimate, padded by the `quantile` of the group's largest per-point training
error (a fraction of the object box's side) plus `min_pad`, extracts features of the crop and
regresses the group's points in that box. Training boxes come from cross-fitted predictions: a
training object's estimate is made by models fitted without its fold (the folds are the same in
every stage), so every stage learns to correct the errors it will meet on new objects and never
sees predictions of its own training objects. Missing points (NaN, e.g. invisible joints) are
neither targets nor errors.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from persistent import data, geometry, probe
from persistent.data import crops

Points = Callable[[data.Example], np.ndarray]  # an example's points (L, 2), NaN where missing


def _pads(pred: np.ndarray, truth: np.ndarray, side: np.ndarray, groups: dict[str, list[int]],
          quantile: float) -> dict[str, float]:
  out = {}
  for name, idx in groups.items():
    err = np.abs(pred[:, idx] - truth[:, idx]).reshape(len(pred), -1)
    worst = np.nanmax(np.where(np.isnan(err), -np.inf, err), 1) / side
    worst = worst[np.isfinite(worst)]
    out[name] = float(np.quantile(worst, quantile)) if worst.size else 0.0
  return out


def _stage(objects: data.Source, pred: np.ndarray, side: np.ndarray, groups: dict[str, list[int]],
           pads: dict[str, float], min_pad: float, size: tuple[int, int], stage: int):
  """The stage's crop source (object-major: the groups of an object are consecutive, so its
  image is decoded once), its owners, the boxes by group, and one head per group."""
  names = list(groups)
  boxes = {g: geometry.group_boxes(pred[:, groups[g]], (pads[g] + min_pad) * side) for g in names}
  n = len(pred)
  owners = np.repeat(np.arange(n), len(names))
  stacked = np.stack([boxes[g] for g in names], 1).reshape(-1, 4)
  src = crops.crop_source(objects, owners, stacked, size, f"lookback{stage}",
                          extra=[{"group": g} for _ in range(n) for g in names])
  return src, owners, boxes


def _heads(stage: int, groups: dict[str, list[int]], points: Points, missing: bool) -> list[probe.Head]:
  def head(name: str, idx: list[int]) -> probe.Head:
    targets = lambda exs: np.stack([geometry.to_crop(points(e)[idx][None], e["box"][None])[0].reshape(-1)
                                    for e in exs])
    return probe.Head(f"stage{stage}:{name}", 2 * len(idx), targets, select=lambda e: e["group"] == name,
                      missing=missing)
  return [head(name, idx) for name, idx in groups.items()]


def _update(pred: np.ndarray, out: dict[str, np.ndarray], boxes: dict[str, np.ndarray], stage: int,
            groups: dict[str, list[int]]) -> np.ndarray:
  """The stage's predictions (per crop, in its box frame) written back as image points."""
  new = pred.copy()
  k = len(groups)
  for j, (name, idx) in enumerate(groups.items()):
    rel = out[f"stage{stage}:{name}"][j::k].reshape(len(pred), len(idx), 2)
    new[:, idx] = geometry.from_crop(rel, boxes[name])
  return new


def fit(pipe: probe.Pipeline, objects: data.Source, truth: np.ndarray, first: np.ndarray,
        object_boxes: np.ndarray, groups: dict[str, list[int]], points: Points, *, stages: int,
        quantile: float, min_pad: float, fold_seed: int,
        on_stage: Callable[[int, dict[str, Any], dict[str, Any]], None] | None = None
        ) -> tuple[dict[str, Any], dict[str, Any], list[np.ndarray]]:
  """Fits `stages` stages on training objects with ground truth (N, L, 2) and cross-fitted first
  estimates `first`; returns (fits, state for `predict`, the training objects' cross-fitted
  estimates that entered each stage: [first, after stage 1, ..., after stage stages - 1]).
  `on_stage(stage, fits, state)` is called after each stage with the cascade so far (e.g. to score
  held-out objects stage by stage while later stages train)."""
  side = object_boxes[:, 2] - object_boxes[:, 0]
  size = tuple(pipe.backbone.input_size)
  missing = bool(np.isnan(truth).any())
  fits, pads_per_stage, pred, train_preds = {}, [], first, [first]
  for stage in range(1, stages + 1):
    pads = _pads(pred, truth, side, groups, quantile)
    src, owners, boxes = _stage(objects, pred, side, groups, pads, min_pad, size, stage)
    heads = _heads(stage, groups, points, missing)
    t0 = time.time()
    fitted = pipe.fit(src, heads, groups=owners, fold_seed=fold_seed)
    took = time.time() - t0
    logging.info("look-back stage %d: %d crops in %.0fs (%.1f crops/s, extraction and ridge); pads %s", stage,
                 len(src), took, len(src) / max(took, 1e-9), {k: round(v, 3) for k, v in pads.items()})
    fits.update(fitted.fits)
    pads_per_stage.append(pads)
    if on_stage is not None:
      on_stage(stage, dict(fits), _state(pads_per_stage, min_pad, groups))
    if stage < stages:
      out, _ = pipe.predict(src, heads, {h.name: fitted.crossfit(h.name) for h in heads}, crossfit=(fitted, owners))
      pred = _update(pred, out, boxes, stage, groups)
      train_preds.append(pred)
  return fits, _state(pads_per_stage, min_pad, groups), train_preds


def _state(pads: list[dict[str, float]], min_pad: float, groups: dict[str, list[int]]) -> dict[str, Any]:
  return {"pads": list(pads), "min_pad": min_pad, "groups": [[k, list(v)] for k, v in groups.items()]}


def predict(pipe: probe.Pipeline, objects: data.Source, first: np.ndarray, object_boxes: np.ndarray,
            fits: dict[str, Any], state: dict[str, Any], points: Points
            ) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
  """Every stage's estimate (the first is `first`) and every stage's group boxes."""
  side = object_boxes[:, 2] - object_boxes[:, 0]
  groups = {k: list(v) for k, v in state["groups"]}  # a list of pairs: JSON keeps their order
  size = tuple(pipe.backbone.input_size)
  preds, all_boxes = [first], []
  for stage, pads in enumerate(state["pads"], start=1):
    src, _, boxes = _stage(objects, preds[-1], side, groups, pads, state["min_pad"], size, stage)
    out, _ = pipe.predict(src, _heads(stage, groups, points, False), fits)
    preds.append(_update(preds[-1], out, boxes, stage, groups))
    all_boxes.append(boxes)
  return preds, all_boxes
