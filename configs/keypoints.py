"""Object keypoints from box crops, one set of regressors per class (the paper's Table 2, Fig. 2b).

  python launch.py --config=configs/keypoints.py             # offline embedded default
  python launch.py --config=configs/keypoints.py:paper \\
      --config.data.train=voc_keypoints:ANNOT,VOC2011/JPEGImages,list=VOC2011/ImageSets/Main/train.txt \\
      --config.data.test=voc_keypoints:ANNOT,VOC2011/JPEGImages,list=VOC2011/ImageSets/Main/val.txt

Variants: '' (the objects of the synthetic scenes: 4 classes, 4 keypoints each, exact ground truth),
'paper' (PASCAL VOC 2011 keypoints of Bourdev & Malik, 20 classes; train on VOC 2011 train images,
test on val; ANNOT is the folder of per-class XML files, VOC2011 the VOCdevkit/VOC2011 folder),
'tiny' (a seconds-long smoke run).
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  name, _ = config_lib.variant(arg, "configs/keypoints.py", {"paper": "", "tiny": ""})
  c = config_lib.base("keypoints")
  c.data.train = "synthetic_keypoints:n=500,seed=0"
  c.data.test = "synthetic_keypoints:n=120,seed=1"
  # context: the box is widened by this fraction of its size on each side before cropping;
  # classes: 'a+b' restricts the run to some classes ('' = every class in the training data).
  c.keypoints = dict(context=0.1, classes="")
  if name == "paper":
    c.data.train = ("voc_keypoints:voc2011_keypoints/annotations,VOCdevkit/VOC2011/JPEGImages,"
                    "list=VOCdevkit/VOC2011/ImageSets/Main/train.txt")
    c.data.test = ("voc_keypoints:voc2011_keypoints/annotations,VOCdevkit/VOC2011/JPEGImages,"
                   "list=VOCdevkit/VOC2011/ImageSets/Main/val.txt")
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
  elif name == "tiny":
    config_lib.tiny(c, "synthetic_keypoints:n=16,seed=0,size=32", "synthetic_keypoints:n=6,seed=1,size=32")
  return c
