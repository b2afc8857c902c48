"""Converts a PyTorch-ecosystem weights file into an orbax checkpoint of a backbone's parameters.

    python -m persistent.tools.convert_weights --name resnet50 --weights resnet50-0676ba61.pth \
        --out weights/resnet50

reads the file as the backbone does (a `torch.save` state dict in either format, read without
running code, or a `.safetensors` file), checks every tensor, and writes DIR/params (orbax) and
DIR/persistent_weights.json (backbone, weights_id = 'sha1:<hex>' of the file, its name), which
`--config.backbone.name=NAME --config.backbone.weights=DIR` then loads quickly and without torch or
the original file. Works for every backbone that loads such files (resnet18, resnet50, vgg16, the
timm, DINOv2 and CLIP ViTs, efficientnet_lite0). DINOv2's resampled position embeddings are stored
for the input size given (`--input-size`, default the backbone's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

CONVERTIBLE = ("resnet18", "resnet50", "vgg16", "vit_small_patch16_224", "vit_base_patch16_224",
               "dinov2_vits14", "dinov2_vitb14", "clip_vit_b16", "open_clip_vit_b16",
               "efficientnet_lite0")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m persistent.tools.convert_weights",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--name", required=True, choices=CONVERTIBLE, help="the backbone")
  parser.add_argument("--weights", required=True, help="its weights file (.pth, .pt, .bin, "
                      ".safetensors)")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--input-size", type=int, help="input side in pixels (DINOv2 only)")
  parser.add_argument("--force", action="store_true", help="overwrite an earlier conversion")
  args = parser.parse_args(argv)

  import jax
  import numpy as np

  from persistent import backbones
  from persistent.backbones import state_dict as sd_lib
  from persistent.backbones import torch_checkpoint
  if args.input_size and not args.name.startswith("dinov2"):
    parser.error(f"--input-size applies to the DINOv2 backbones only, not {args.name}")
  if os.path.isdir(args.weights):
    parser.error(f"--weights {args.weights} is a folder; give the weights file itself")
  extra = {"input_size": args.input_size} if args.input_size else {}
  try:
    bb = backbones.create(args.name, args.weights, **extra)
    out = sd_lib.save_converted(args.out, bb.params, args.name, bb.weights_id,
                                os.path.basename(args.weights), force=args.force,
                                extra={"input_size": list(bb.input_size)})
    back = backbones.create(args.name, out, **extra)
  except (sd_lib.StateDictError, torch_checkpoint.CheckpointError, FileNotFoundError,
          FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                      bb.params, back.params)
  if not all(jax.tree.leaves(same)) or back.weights_id != bb.weights_id:
    print(f"error: {out}: the parameters did not read back identically", file=sys.stderr)
    return 1
  print(json.dumps({"out": out, "backbone": args.name, "weights_id": bb.weights_id,
                    "use": f"--config.backbone.name={args.name} --config.backbone.weights={out}"}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
