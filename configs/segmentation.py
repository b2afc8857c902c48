"""Semantic segmentation from a global feature: 0/1 ridge targets per (cell, class) (Table 3, Fig. 5).

  python launch.py --config=configs/segmentation.py            # offline embedded default
  python launch.py --config=configs/segmentation.py:camvid     # ../shared/data/camvid train -> val
  python launch.py --config=configs/segmentation.py:paper \\
      --config.backbone.weights=bvlc_alexnet.caffemodel \\
      --config.data.train=voc_seg:VOCdevkit/VOC2012:train --config.data.test=voc_seg:VOCdevkit/VOC2012:val

Variants: '' (synthetic scenes, 5 classes incl. background), 'camvid' (CamVid, SegNet version,
11 classes), 'paper' (VOC 2012 train -> val, 21 classes: 30 x 30 x 21 = 18,900 regressors,
AlexNet fc6). The fake-21-class memory check: '' with --config.segmentation.num_classes=21.
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base("segmentation")
  c.data.train = "synthetic:n=250,seed=0"
  c.data.test = "synthetic:n=100,seed=1"
  c.segmentation = dict(
      size=30,  # S: targets on an S x S grid
      augment=10,  # training variants per image (1 = no augmentation); the paper's tenfold
      min_scale=0.7,  # augmentation crops keep this fraction of each side or more
      ap_stride=4,  # AP over every ap_stride-th pixel in each direction (exact confusion-based IoU)
      class_names=(),  # () = from the data (every source names its classes); or the names to expect
      num_classes=0,  # > number of names: pad with extra (absent) classes, e.g. 21 for a VOC-size run
      logistic=dict(enabled=True, steps=300, batch_size=128, learning_rate=1e-2, l2=0.0),
  )
  if arg == "camvid":
    c.data.train = "camvid:../shared/data/camvid/train"
    c.data.test = "camvid:../shared/data/camvid/val"
    c.segmentation.class_names = ()
  elif arg == "paper":
    c.data.train = "voc_seg:VOCdevkit/VOC2012:train"
    c.data.test = "voc_seg:VOCdevkit/VOC2012:val"
    c.segmentation.class_names = ()
    c.segmentation.ap_stride = 8
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
    c.batch_size = 64
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/segmentation.py; variants: camvid, paper")
  return c
