"""Extraction throughput of the ported backbones beside their PyTorch references, one process.

  python benchmarks/extract_torch_backbones.py [--names resnet50,vit_base_patch16_224] [--batch 16]

For each backbone: the Flax backbone (random weights, float32, the jitted 'head' tap on uint8
224x224 images) and the reference model (torchvision / timm / open_clip, random weights, float32,
`torch.inference_mode`, the same batch already normalised) are timed in alternation after a warm-up
call each, `--iters` times; images/s from the median time, and the ratio Flax / torch. Prints one
JSON object. Needs torch, torchvision, timm and open_clip (requirements-dev.txt).
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

NAMES = ("resnet18", "resnet50", "vgg16", "vit_small_patch16_224", "vit_base_patch16_224",
         "dinov2_vits14", "dinov2_vitb14", "clip_vit_b16")


def reference(name: str):
  """The reference model of a backbone, built with random weights (no download)."""
  import open_clip
  import timm
  import torchvision
  if name in ("resnet18", "resnet50", "vgg16"):
    return getattr(torchvision.models, name)(weights=None)
  if name.startswith("dinov2"):
    timm_name = {"dinov2_vits14": "vit_small_patch14_dinov2", "dinov2_vitb14": "vit_base_patch14_dinov2"}
    return timm.create_model(timm_name[name], pretrained=False, img_size=224)
  if name == "clip_vit_b16":
    return open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).visual
  return timm.create_model(name, pretrained=False)


def timed(fn, iters: int) -> list[float]:
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def measure(name: str, batch: int, iters: int) -> dict:
  import torch
  bb = backbones.create(name, "random")
  tap = bb.tap("head")
  images = np.random.default_rng(0).integers(0, 256, (batch, *bb.input_size, 3), np.uint8)
  x = jnp.asarray(images)
  model = reference(name).eval()
  tx = torch.from_numpy(np.asarray(bb.preprocess(images)).transpose(0, 3, 1, 2).copy())

  def run_flax():
    tap(x).block_until_ready()

  def run_torch():
    with torch.inference_mode():
      model(tx)
  t0 = time.perf_counter()
  run_flax()
  first_call = time.perf_counter() - t0
  run_torch()
  flax_t, torch_t = [], []
  for _ in range(iters):  # alternate, so that load on the shared machine hits both alike
    flax_t += timed(run_flax, 1)
    torch_t += timed(run_torch, 1)
  f, t = batch / float(np.median(flax_t)), batch / float(np.median(torch_t))
  return {"backbone": name, "flax_images_per_s": round(f, 2), "torch_images_per_s": round(t, 2),
          "ratio_flax_over_torch": round(f / t, 2), "flax_first_call_s": round(first_call, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--names", default=",".join(NAMES))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--iters", type=int, default=5)
  args = parser.parse_args()
  import torch
  results = [measure(n, args.batch, args.iters) for n in args.names.split(",")]
  print(json.dumps({"benchmark": "extract_torch_backbones", "layer": "head", "dtype": "float32",
                    "batch": args.batch, "iters": args.iters, "device": str(jax.devices()[0]),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
  main()
