"""Facial landmarks with baselines and look-back (the paper's Table 1, Fig. 2a, Fig. 3).

  python launch.py --config=configs/landmarks.py              # offline: synthetic cartoon faces
  python launch.py --config=configs/landmarks.py:300w=DIR,DIR  # 300-W folders, a seeded 20% held out
  python launch.py --config=configs/landmarks.py:helen194=IMAGES,ANNOTATIONS  # Helen 194 points, 20% held out
  python launch.py --config=configs/landmarks.py:paper \\
      --config.backbone.weights=bvlc_alexnet.caffemodel \\
      --config.data.train=helen:HELEN/trainset,HELEN/annotation \\
      --config.data.test=helen:HELEN/testset,HELEN/annotation

Other data: --config.data.train=300w:DIR[,DIR...] --config.data.test=300w:DIR (an empty test
source holds out landmarks.holdout of the training faces, seeded by config.seed).

Variants: '' (synthetic_faces, EfficientNet-Lite0 stage5 averaged to 6x6 cells), '300w=DIR,...' (300-W folders of
images with .pts files, a seeded 20% of the faces held out for testing; the development data:
300w=../shared/data/faces300w/helen_train,../shared/data/faces300w/afw), 'helen194=IMAGES,ANNOTATIONS'
(Helen's original 194-point annotation as the paper's Table 1 used it, a seeded 20% of the faces
held out; the development data: helen194=../shared/data/faces300w/helen_train,
../shared/data/helen194/annotation), 'paper' (AlexNet fc6,
like the paper; point the data at Helen's 194-point annotation), 'tiny' (a seconds-long smoke run).
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  name, values = config_lib.variant(arg, "configs/landmarks.py", {"300w": "DIR,...", "helen194": "IMAGES,ANNOTATIONS",
                                                                   "paper": "", "tiny": ""})
  c = config_lib.base("landmarks")
  # Layout is what landmarks need: the global average 'head' loses most of it (300w variant:
  # ConvNet + ridge 0.174 with 'head', 0.107 with the 3x3 grid 'head_grid3'), and the 14x14 map of
  # stage5 averaged to 6x6 cells keeps far more (Helen 194: 0.0946 head_grid3, 0.0585 stage5
  # grid:6; README, "Landmarks: Helen 194 points and the look-back cascade").
  c.backbone.layer = "stage5"
  c.features.reduce = "grid:6"
  # Each look-back head sees one group's crops, a sixth of its source's rows, so 'auto' (which
  # counts the source) would pick the primal path and a d x d eigenbasis per fold and head; the
  # dual path on the head's own rows gives the same fit far faster (the features are wider).
  c.ridge.path = "dual"
  c.data.train = "synthetic_faces:n=240,seed=0"
  c.data.test = "synthetic_faces:n=60,seed=1"
  c.landmarks = dict(
      margin=0.15,  # face box: square landmark box enlarged by this fraction of its side per side
      jitter_copies=1,  # extra training crops per face with jittered boxes
      jitter_shift=0.05,  # jitter of the box centre, fraction of the side
      jitter_scale=0.1,  # jitter of the box side: x exp(U(-log 1.1, log 1.1))
      flips=False,  # every training crop also mirrored, landmarks relabelled (68 or 194 points)
      rgb_size=24,  # RGB + ridge baseline: raw pixels of a rgb_size x rgb_size resize of the crop
      rgb_alphas=tuple(float(10 ** e) for e in range(-2, 7)),
      lookback_stages=2,  # cascade length; 0 disables look-back (2: best on Helen 194 and 300-W, README)
      lookback_size=112,  # look-back crops' side in pixels fed to the network (0: its input size)
      groups="",  # '' = six default groups; or 'name:a-b,c;name2:...' (0-based, a partition)
      lookback_quantile=0.9,  # group box pad: this quantile of the group's max training error
      lookback_min_pad=0.02,  # plus this fraction of the face box side
      holdout=0.2,  # used only when data.test is empty
      ced_max=0.2,  # x range of the CED figure
  )
  if name == "300w":
    c.data.train, c.data.test = "300w:" + ",".join(values), ""
  elif name == "helen194":
    c.data.train, c.data.test = "helen:" + ",".join(values), ""
    c.landmarks.flips = True  # ConvNet + ridge 0.0585 -> 0.0553 on the development split
  elif name == "paper":
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
    c.landmarks.lookback_size = 0  # fc6 takes 227 x 227 inputs only
    c.data.train = "helen:HELEN/trainset,HELEN/annotation"
    c.data.test = "helen:HELEN/testset,HELEN/annotation"
  elif name == "tiny":
    config_lib.tiny(c, "synthetic_faces:n=18,seed=0,size=64", "synthetic_faces:n=6,seed=1,size=64")
    c.ridge.num_folds = 3
  return c
