"""Object keypoints from box crops, one set of regressors per class (the paper's Table 2, Fig. 2b).

  python launch.py --config=configs/keypoints.py             # offline embedded default
  python launch.py --config=configs/keypoints.py:paper \\
      --config.data.train=voc_keypoints:ANNOT,VOC2011/JPEGImages,list=VOC2011/ImageSets/Main/train.txt \\
      --config.data.test=voc_keypoints:ANNOT,VOC2011/JPEGImages,list=VOC2011/ImageSets/Main/val.txt
  python launch.py --config=configs/keypoints.py:lspet=../shared/data/lspet   # LSPET people, 20% held out
  python launch.py --config=configs/keypoints.py:coco=ANN.json,IMAGE_DIR      # COCO person keypoints

Variants: '' (the objects of the synthetic scenes: 4 classes, 4 keypoints each, exact ground truth),
'paper' (PASCAL VOC 2011 keypoints of Bourdev & Malik, 20 classes; train on VOC 2011 train images,
test on val; ANNOT is the folder of per-class XML files, VOC2011 the VOCdevkit/VOC2011 folder),
'lspet=DIR' (Leeds Sports Pose Extended in COCO keypoint JSON: DIR/person_keypoints.json and
DIR/images, 14 joints), 'coco=ANN_JSON,IMAGE_DIR' (COCO person keypoints, 17 per person): both
hold out a seeded `keypoints.holdout` of the images for testing and probe a layer that keeps
layout; `--config.keypoints.flip=True` adds the mirror image of every training person (left and
right joints exchanged; it doubles the training rows, and invisible joints make the ridge solve
one n x n eigendecomposition per fold and visibility pattern, so it costs ~8x the solve time);
'tiny' (a seconds-long smoke run).
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  name, values = config_lib.variant(arg, "configs/keypoints.py",
                                    {"paper": "", "lspet": "DIR", "coco": "ANN_JSON,IMAGE_DIR", "tiny": ""})
  c = config_lib.base("keypoints")
  c.data.train = "synthetic_keypoints:n=500,seed=0"
  c.data.test = "synthetic_keypoints:n=120,seed=1"
  # context: the box is widened by this fraction of its size on each side before cropping;
  # classes: 'a+b' restricts the run to some classes ('' = every class in the training data);
  # flip: add a mirrored copy of every training object (left/right keypoints exchanged);
  # holdout: with an empty data.test, this seeded fraction of the training images is the test set.
  c.keypoints = dict(context=0.1, classes="", flip=False, holdout=0.2)
  if name == "paper":
    c.data.train = ("voc_keypoints:voc2011_keypoints/annotations,VOCdevkit/VOC2011/JPEGImages,"
                    "list=VOCdevkit/VOC2011/ImageSets/Main/train.txt")
    c.data.test = ("voc_keypoints:voc2011_keypoints/annotations,VOCdevkit/VOC2011/JPEGImages,"
                   "list=VOCdevkit/VOC2011/ImageSets/Main/val.txt")
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
  elif name in ("lspet", "coco"):
    if name == "lspet":
      root = values[0].rstrip("/")
      c.data.train = f"coco_keypoints:{root}/person_keypoints.json,{root}/images"
    else:
      c.data.train = "coco_keypoints:" + ",".join(values)
    c.data.test = ""
    # Layout matters for body joints: the whole 7x7 head map (see README for each layer tried).
    c.backbone.layer, c.features.reduce = "head_map", "flatten"
  elif name == "tiny":
    config_lib.tiny(c, "synthetic_keypoints:n=16,seed=0,size=32", "synthetic_keypoints:n=6,seed=1,size=32")
  return c
