"""End-to-end RGB reconstruction benchmark: JPEG files -> metrics, with images/s per stage.

  python -m benchmarks.end_to_end [--n 300] [--backbone alexnet --weights random --layer fc6]
      [--jpeg-dir DIR] [--rss-n 150,450]

Writes n JPEG files (500x375, smooth random content, like ImageNet's typical size) into a temporary
folder unless --jpeg-dir is given, then measures, each stage on its own:
  decode_resize  Pillow decode + resize to the backbone input and to the 46x46 targets, through
                 data.iterate's thread pool (--workers)
  extract        the jitted layer tap on prepared uint8 batches (host->device copy included)
  ridge_update   ridge.update of the per-fold statistics with a batch of features and targets
  solve          ridge.solve (4-fold CV over the lambda grid, per target) -- seconds, not per image
  end_to_end     the rgb task (launch.py's code path: imagefolder source, streamed features,
                 ridge statistics, solve, test predictions, metrics) on the files, feature cache off;
                 the last 10% of the files are the test set
and, for bounded memory, the peak resident memory of the end-to-end run in a fresh process for each
n in --rss-n (it should not grow with n: features are never kept, only ridge statistics).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_jpegs(directory: str, n: int, size=(375, 500), seed: int = 0) -> list[str]:
  from PIL import Image
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i in range(n):
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC)
    noise = rng.integers(-12, 13, (size[0], size[1], 3))
    arr = np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8)
    path = os.path.join(directory, f"img_{i:06d}.jpg")
    Image.fromarray(arr).save(path, quality=90)
    paths.append(path)
  return paths


def rgb_config(args, folder: str, n: int):
  from configs import rgb as rgb_cfg
  c = rgb_cfg.get_config()
  c.backbone.name, c.backbone.weights, c.backbone.layer = args.backbone, args.weights, args.layer
  test = max(args.num_folds, n // 10)
  c.data.train, c.data.test = f"imagefolder:{folder}[:{n - test}]", f"imagefolder:{folder}[{n - test}:]"
  c.data.workers = args.workers
  c.batch_size, c.features.cache_dir, c.num_figure_examples = args.batch, "", 4
  return c


def end_to_end(args, folder: str, n: int) -> dict:
  from persistent import experiment
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as work:
    m = experiment.run(rgb_config(args, folder, n), work)
  dt = time.perf_counter() - t0
  return {"n": n, "seconds": round(dt, 2), "images_per_s": round(n / dt, 1), "mae": m["mae"],
          "mae_mean_image": m["mae_mean_image"],
          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def stages(args, folder: str) -> dict:
  import jax
  from persistent import backbones, data, features, ridge
  from persistent.tasks import rgb
  source = data.open_source(f"imagefolder:{folder}")
  n, b = len(source), args.batch
  backbone = backbones.create(args.backbone, args.weights)
  out = {}

  t0 = time.perf_counter()
  first = None
  for examples in data.iterate(source, b, workers=args.workers or None):
    batch = features.prepare(examples, backbone.input_size)
    targets = rgb.targets(examples, 46)
    if first is None and len(examples) == b:
      first = (batch, targets)
  dt = time.perf_counter() - t0
  out["decode_resize"] = {"images_per_s": round(n / dt, 1), "workers": args.workers or min(32, (os.cpu_count() or 1) + 2)}

  batch, targets = first
  fn = features._flat_tap(backbone, args.layer, True)
  feats = np.asarray(fn(batch))  # compile
  reps = max(1, n // b)
  t0 = time.perf_counter()
  for _ in range(reps):
    feats = np.asarray(fn(batch))
  dt = time.perf_counter() - t0
  out["extract"] = {"images_per_s": round(reps * b / dt, 1), "feature_dim": int(feats.shape[1])}

  stats = ridge.init(feats.shape[1], targets.shape[1], args.num_folds)
  folds = ridge.kfold_ids(reps * b, args.num_folds)
  stats = ridge.update(stats, feats, targets, folds[:b])  # compile
  jax.block_until_ready(stats)
  t0 = time.perf_counter()
  for r in range(1, reps):
    stats = ridge.update(stats, feats, targets, folds[r * b:(r + 1) * b])
  jax.block_until_ready(stats)
  dt = time.perf_counter() - t0
  out["ridge_update"] = {"images_per_s": round((reps - 1) * b / max(dt, 1e-9), 1), "targets": int(targets.shape[1])}

  from persistent import config_lib
  t0 = time.perf_counter()
  fit = ridge.solve(stats, alphas=config_lib.DEFAULT_ALPHAS)
  jax.block_until_ready(fit)
  out["solve"] = {"seconds": round(time.perf_counter() - t0, 2), "alphas": len(config_lib.DEFAULT_ALPHAS)}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=300)
  p.add_argument("--jpeg-dir", default="")
  p.add_argument("--backbone", default="alexnet")
  p.add_argument("--weights", default="random")
  p.add_argument("--layer", default="fc6")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--workers", type=int, default=0, help="decoding threads (0: cpu_count + 2)")
  p.add_argument("--num-folds", type=int, default=4)
  p.add_argument("--rss-n", default="", help="comma-separated n for peak-memory runs in fresh processes")
  p.add_argument("--only", choices=("all", "stages", "e2e"), default="all")
  args = p.parse_args(argv)
  import jax
  with tempfile.TemporaryDirectory() as tmp:
    folder = args.jpeg_dir or os.path.join(tmp, "jpegs")
    if not args.jpeg_dir:
      write_jpegs(folder, args.n)
    n = len(os.listdir(folder)) if args.jpeg_dir else args.n
    result = {"device": jax.devices()[0].platform, "cpu_count": os.cpu_count(), "backbone": args.backbone,
              "weights": args.weights, "layer": args.layer, "batch": args.batch, "n": n}
    if args.only in ("all", "stages"):
      result["stages"] = stages(args, folder)
    if args.only in ("all", "e2e"):
      result["end_to_end"] = end_to_end(args, folder, n)
    rss = []
    for m in [int(v) for v in args.rss_n.split(",") if v]:
      sub = os.path.join(tmp, f"rss{m}")
      write_jpegs(sub, m, seed=m)
      cmd = [sys.executable, "-m", "benchmarks.end_to_end", "--only", "e2e", "--jpeg-dir", sub,
             "--backbone", args.backbone, "--weights", args.weights, "--layer", args.layer,
             "--batch", str(args.batch), "--workers", str(args.workers)]
      done = subprocess.run(cmd, capture_output=True, text=True, check=True)
      rss.append(json.loads(done.stdout.strip().splitlines()[-1])["end_to_end"])
    if rss:
      result["peak_memory_by_n"] = rss
  print(json.dumps(result))


if __name__ == "__main__":
  main()
