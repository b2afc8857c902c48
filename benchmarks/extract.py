"""AlexNet fc6 feature extraction throughput (images/s) on the default JAX device.

  python benchmarks/extract.py [--batch 32] [--iters 5] [--weights random|PATH] [--dtypes ...]

Times the jitted fc6 tap (uint8 RGB 227x227 in, post-ReLU fc6 out; XLA prunes fc7/fc8) after a
warm-up call, for the `alexnet` backbone (hand-written Flax module) and for the same network built
by the generic Caffe graph builder from a deploy prototxt (`caffe` backbone path), with the same
weights. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from persistent import backbones  # noqa: E402
from persistent.backbones import alexnet, caffe_format, caffe_graph, caffe_module  # noqa: E402


def _time(fn, x, iters: int) -> dict:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(x))
  first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t0)
  batch = x.shape[0]
  return {"images_per_s": round(batch / min(times), 2),
          "median_images_per_s": round(batch / float(np.median(times)), 2),
          "first_call_s": round(first, 2)}


def _generic_fc6(params, dtype):
  """The fc6 tap of the generic Caffe builder on AlexNet's deploy definition."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import caffe_testnets as tn  # the deploy prototxt writer shared with the tests
  with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
    f.write(tn.prototxt(tn.alexnet_layers("alexnet", weights=False), (1, 3, 227, 227)))
  graph = caffe_graph.build_graph(caffe_graph.net_definition(caffe_format.read_prototxt(f.name), f.name))
  os.unlink(f.name)
  module = caffe_module.CaffeModule(graph.layers, graph.inputs, dtype=dtype)

  @jax.jit
  def fc6(params, images):
    return module.apply({"params": params}, alexnet.preprocess(images))["fc6"]
  return lambda images: fc6(params, images)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--weights", default="random",
                      help="'random' (default), a .caffemodel or a convert_caffe folder")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--no-generic", action="store_true", help="skip the generic builder")
  args = parser.parse_args()
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (args.batch, 227, 227, 3), np.uint8))
  results = []
  for name in args.dtypes.split(","):
    dtype = jnp.dtype(name)
    bb = backbones.create("alexnet", weights=args.weights, dtype=dtype)
    results.append({"impl": "alexnet_module", "dtype": name, **_time(bb.tap("fc6"), x, args.iters)})
    if not args.no_generic:
      fn = _generic_fc6(bb.params, dtype)
      results.append({"impl": "caffe_graph_builder", "dtype": name, **_time(fn, x, args.iters)})
  print(json.dumps({"benchmark": "extract", "backbone": "alexnet", "layer": "fc6",
                    "batch": args.batch, "device": str(jax.devices()[0]),
                    "cpu_count": os.cpu_count(), "results": results}))


if __name__ == "__main__":
  main()
