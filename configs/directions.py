"""Semantic directions in representation space (the paper's Section 4, Fig. 6).

  python launch.py --config=configs/directions.py            # offline embedded default
  python launch.py --config=configs/directions.py:lfw \\
      --config.backbone.weights=bvlc_alexnet.caffemodel \\
      --config.data.train='lfw_attributes:lfw,lfw_attributes.txt[:-200]' \\
      --config.data.test='lfw_attributes:lfw,lfw_attributes.txt[-200:]'
  python launch.py --config=configs/directions.py:celeba --config.backbone.weights=bvlc_alexnet.caffemodel
  python launch.py --config=configs/directions.py:attributes=../shared/data/mtfl_lfw  # MTFL's LFW faces

Variants: '' (synthetic scenes of one object: directions for its red, green, blue and radius;
EfficientNet-Lite0 head), 'lfw' (LFW with Kumar et al.'s attributes: Male, Eyeglasses; AlexNet fc6),
'celeba' (tfds:celeb_a: Male, Eyeglasses and the pose proxies yaw and roll from the five landmarks;
AlexNet fc6), 'attributes=DIR' (an attribute table, DIR/attributes.csv keyed by the files of
DIR/images, e.g. MTFL's LFW faces: Male, Smiling, Eyeglasses and the 1..5 head pose; a seeded
`directions.holdout` of the faces held out for testing; EfficientNet-Lite0 head_grid3), 'tiny' (a
seconds-long smoke run). With an empty `data.test` a seeded `directions.holdout` fraction of the
training source is the test set (seed: `config.seed`). `directions.steps` are in standard deviations of
the training features' projections onto each direction.
"""
from persistent import config_lib


def get_config(arg: str | None = None):
  name, values = config_lib.variant(arg, "configs/directions.py", {"lfw": "", "celeba": "", "attributes": "DIR",
                                                                         "tiny": ""})
  c = config_lib.base("directions")
  c.directions = dict(attributes=("red", "green", "blue", "radius"), steps=(-3.0, -1.5, 0.0, 1.5, 3.0),
                      size=46, readout_size=12, renormalize=False, num_examples=64,
                      holdout=0.2)  # used only when data.test is empty
  c.num_figure_examples = 2
  # One object per scene, so that its colour, position and size are the scene's attributes.
  c.data.train, c.data.test = "synthetic:n=1200,seed=0,max_objects=1", "synthetic:n=200,seed=1,max_objects=1"
  if name in ("lfw", "celeba"):
    c.backbone.name, c.backbone.layer = "alexnet", "fc6"
    c.batch_size = 128
  if name == "lfw":
    c.data.train = "lfw_attributes:lfw,lfw_attributes.txt[:-200]"  # LFW_DIR,ATTR_FILE
    c.data.test = "lfw_attributes:lfw,lfw_attributes.txt[-200:]"
    c.directions.attributes = ("Male", "Eyeglasses")
  elif name == "celeba":
    c.data.train = "tfds:celeb_a:train[:20000]"
    c.data.test = "tfds:celeb_a:test[:200]"
    c.directions.attributes = ("Male", "Eyeglasses", "yaw", "roll")
  elif name == "attributes":
    root = values[0].rstrip("/")
    c.data.train, c.data.test = f"attributes:{root}/images,{root}/attributes.csv", ""
    c.directions.attributes = ("Male", "Smiling", "Eyeglasses", "pose")
    # The 3x3 grid of the head map keeps where things are: the pooled 'head' cannot read the pose,
    # a left/right mirror symmetry (MTFL-LFW held out: pose correlation -0.03 with 'head', 0.46
    # with 'head_grid3'; gender AUC 0.959 / 0.967).
    c.backbone.layer = "head_grid3"
  elif name == "tiny":
    config_lib.tiny(c, "synthetic:n=32,size=32,max_objects=1", "synthetic:n=4,size=32,seed=1,max_objects=1")
    c.directions.attributes, c.directions.size, c.directions.readout_size = ("red", "radius"), 8, 6
  return c
