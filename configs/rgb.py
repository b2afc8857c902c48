"""RGB reconstruction from a global feature (the paper's Fig. 4).

  python launch.py --config=configs/rgb.py                  # offline embedded default
  python launch.py --config=configs/rgb.py:paper \\
      --config.backbone.weights=bvlc_alexnet.caffemodel \\
      --config.data.train='imagefolder:ILSVRC2012_img_val[:49000]' \\
      --config.data.test='imagefolder:ILSVRC2012_img_val[49000:]'

Variants: '' (synthetic scenes, EfficientNet-Lite0 head), 'paper' (AlexNet fc6 with Caffe weights,
ImageNet validation: first 49,000 images to train, last 1,000 to test), 'tiny' (a seconds-long
smoke run).
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  name, _ = config_lib.variant(arg, "configs/rgb.py", {"paper": "", "tiny": ""})
  c = config_lib.base("rgb")
  c.rgb = dict(size=46)
  if name == "paper":
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
    c.data.train = "imagefolder:ILSVRC2012_img_val[:49000]"  # the validation images, sorted by name
    c.data.test = "imagefolder:ILSVRC2012_img_val[49000:]"
    c.batch_size = 256
  elif name == "tiny":
    config_lib.tiny(c, "synthetic:n=24,size=32", "synthetic:n=8,size=32,seed=1")
    c.rgb.size = 8
  return c
