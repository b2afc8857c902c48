"""EfficientNet-Lite0 feature extraction throughput (images/s) on the default JAX device.

  python benchmarks/extract_efficientnet.py [--batch 32] [--iters 5] [--layer head]

Times the jitted tap (uint8 RGB 224x224 in, one layer out) after a warm-up call, in float32 and
bfloat16 compute, and prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from persistent import backbones  # noqa: E402


def measure(dtype, args) -> dict:
  bb = backbones.create("efficientnet_lite0", weights=args.weights, dtype=dtype)
  fn = bb.tap(args.layer)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (args.batch, *bb.input_size, 3), np.uint8))
  t0 = time.perf_counter()
  fn(x).block_until_ready()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    fn(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  best = min(times)
  return {"dtype": jnp.dtype(dtype).name, "images_per_s": round(args.batch / best, 2),
          "median_images_per_s": round(args.batch / float(np.median(times)), 2),
          "first_call_s": round(compile_s, 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--layer", default="head")
  parser.add_argument("--weights", default="random", help="'random' (default), None for the package's")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args()
  if args.weights == "None":
    args.weights = None
  results = [measure(jnp.dtype(d), args) for d in args.dtypes.split(",")]
  print(json.dumps({"benchmark": "extract_efficientnet", "backbone": "efficientnet_lite0",
                    "layer": args.layer, "batch": args.batch, "device": str(jax.devices()[0]),
                    "cpu_count": os.cpu_count(), "results": results}))


if __name__ == "__main__":
  main()
