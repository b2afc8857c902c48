"""Semantic segmentation from a global feature: 0/1 ridge targets per (cell, class) (Table 3, Fig. 5).

  python launch.py --config=configs/segmentation.py                   # offline embedded default
  python launch.py --config=configs/segmentation.py:camvid=DIR        # CamVid (SegNet layout) train -> val
  python launch.py --config=configs/segmentation.py:paper \\
      --config.backbone.weights=bvlc_alexnet.caffemodel \\
      --config.data.train=voc_seg:VOCdevkit/VOC2012:train --config.data.test=voc_seg:VOCdevkit/VOC2012:val

Variants: '' (synthetic scenes, 5 classes incl. background), 'camvid=DIR' (DIR/train -> DIR/val,
labels in DIR/trainannot and DIR/valannot, 11 classes; e.g. ../shared/data/camvid), 'paper' (VOC
2012 train -> val, 21 classes: 30 x 30 x 21 = 18,900 regressors, AlexNet fc6), 'tiny' (a
seconds-long smoke run). Class names come from the data. The fake-21-class memory check: ''
with --config.segmentation.num_classes=21.
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  name, values = config_lib.variant(arg, "configs/segmentation.py", {"camvid": "DIR", "paper": "", "tiny": ""})
  c = config_lib.base("segmentation")
  c.data.train = "synthetic:n=250,seed=0"
  c.data.test = "synthetic:n=100,seed=1"
  c.segmentation = dict(
      size=30,  # S: targets on an S x S grid
      augment=10,  # training variants per image (1 = no augmentation); the paper's tenfold
      min_scale=0.7,  # augmentation crops keep this fraction of each side or more
      ap_stride=4,  # AP over every ap_stride-th pixel in each direction (exact confusion-based IoU)
      class_names=(),  # () = the data's own class names; or the names the data must have
      num_classes=0,  # > number of names: pad with extra (absent) classes, e.g. 21 for a VOC-size run
      logistic=dict(enabled=True, steps=300, batch_size=128, learning_rate=1e-2, l2=0.0),
  )
  if name == "camvid":
    c.data.train, c.data.test = f"camvid:{values[0]}/train", f"camvid:{values[0]}/val"
  elif name == "paper":
    c.data.train = "voc_seg:VOCdevkit/VOC2012:train"
    c.data.test = "voc_seg:VOCdevkit/VOC2012:val"
    c.segmentation.ap_stride = 8
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
    c.batch_size = 64
  elif name == "tiny":
    config_lib.tiny(c, "synthetic:n=12,size=32", "synthetic:n=4,size=32,seed=1")
    c.segmentation.size, c.segmentation.augment = 6, 2
    c.segmentation.logistic.steps = 5
  return c
