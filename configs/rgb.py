"""RGB reconstruction from a global feature (the paper's Fig. 4).

  python launch.py --config=configs/rgb.py                  # offline embedded default
  python launch.py --config=configs/rgb.py:paper \\
      --config.backbone.weights=bvlc_alexnet.caffemodel --config.data.train=... --config.data.test=...

Variants: '' (synthetic scenes, EfficientNet-Lite0 head), 'paper' (AlexNet fc6 with Caffe weights,
ImageNet validation: first 49,000 images to train, last 1,000 to test).
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base("rgb")
  c.rgb = dict(size=46)
  if arg == "paper":
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
    c.data.train = "imagefolder:ILSVRC2012_img_val[:49000]"  # the validation images, sorted by name
    c.data.test = "imagefolder:ILSVRC2012_img_val[49000:]"
    c.batch_size = 256
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/rgb.py; variants: paper")
  return c
