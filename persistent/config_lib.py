"""Settings shared by every task's config (see configs/*.py)."""
from __future__ import annotations

import ml_collections
import numpy as np

# Log-spaced lambda grid; features are l2-normalised, so useful lambdas sit well inside it.
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


def variant(arg: str | None, config_file: str, known: dict[str, str]) -> tuple[str, list[str]]:
  """'name' or 'name=A[,B...]' (a config file's argument) -> (name, [A, B, ...]).

  `known` maps each variant name to its usage: '' for none, 'DIR' for one value, 'ANN,IMAGES' for
  two, 'DIR,...' for one or more. An unknown name or a wrong number of values fails naming the
  config file and its variants.
  """
  name, eq, value = (arg or "").partition("=")
  usage = ", ".join(f"{k}={v}" if v else k for k, v in known.items())
  if name and name not in known:
    raise ValueError(f"unknown variant {name!r} of {config_file}; variants: {usage}")
  values = [v for v in value.split(",") if v] if eq else []
  wanted = known.get(name, "")
  required = [u for u in wanted.split(",") if u and u != "..."]
  if not (len(values) == len(required) or (wanted.endswith("...") and len(values) > len(required))):
    raise ValueError(f"variant {name!r} of {config_file} takes " + (f"'{name}={wanted}'" if wanted else "no value")
                     + f", got {arg!r}")
  return name, values


def base(task: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.backbone = ml_collections.ConfigDict(dict(
      name="efficientnet_lite0", weights=ml_collections.FieldReference(None, field_type=str),
      layer="head", dtype="float32", prototxt=""))
  # on_bad: 'raise' (a bad image or annotation stops the run, naming the file and its index) or
  # 'skip' (bad examples are left out when a source is opened, and listed; persistent/data).
  c.data = ml_collections.ConfigDict(dict(train="synthetic:n=1200,seed=0",
                                          test="synthetic:n=200,seed=1", workers=0, on_bad="raise"))
  c.batch_size = 32
  # reduce: how spatial maps become vectors ('' = grid:3 for maps, nothing for vectors; flatten, pool,
  # grid:G; per layer as 'grid:3,head_map=flatten'); see persistent/features.py.
  c.features = ml_collections.ConfigDict(dict(normalize=True, cache_dir="~/.cache/persistent/features", reduce=""))
  # path: 'auto' (dual when the training set has fewer rows than features), 'primal', 'dual'.
  # extend_grid: widen alphas by decades while a target's best lambda sits at an edge.
  # max_bytes: the memory all ridge statistics of one pass may take (0: 3/4 of what is available);
  # a pass over budget is refused before extraction, naming the layers and their sizes.
  c.ridge = ml_collections.ConfigDict(dict(alphas=DEFAULT_ALPHAS, num_folds=4, per_target=True,
                                           dtype="float32", path="auto", extend_grid=False, max_bytes=0))
  # Devices: `devices` of jax.devices() (-1: all, of every process) as a ('data', 'model') mesh
  # with `model` devices splitting the targets of the ridge statistics (1: pure data parallel).
  # One device (any CPU machine) runs exactly the single-device path. See persistent/distributed.py.
  c.mesh = ml_collections.ConfigDict(dict(devices=-1, model=1))
  # Several hosts: coordinator_address 'host:port' of process 0 ('auto': SLURM/MPI/TPU detection),
  # empty for one process. Each process runs the same command with its own process_id;
  # local_device_ids '0,1' restricts a process to some local devices ('' all).
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="", num_processes=1, process_id=0, local_device_ids=""))
  c.restore = ""  # a previous run's workdir: predict with its probes instead of fitting
  c.control = ""  # 'random': with several layers, run the sweep again on seeded random weights
  c.num_figure_examples = 8
  return c


def tiny(c: ml_collections.ConfigDict, train: str, test: str) -> ml_collections.ConfigDict:
  """The seconds-long smoke variant of a task: tiny data, EfficientNet-Lite0's pooled head."""
  c.backbone.name, c.backbone.layer = "efficientnet_lite0", "head"
  c.data.train, c.data.test = train, test
  c.batch_size = 8
  c.num_figure_examples = 2
  return c
