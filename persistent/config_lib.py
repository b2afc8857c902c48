"""Settings shared by every task's config (see configs/*.py)."""
from __future__ import annotations

import ml_collections
import numpy as np

# Log-spaced lambda grid; features are l2-normalised, so useful lambdas sit well inside it.
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


def base(task: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.backbone = ml_collections.ConfigDict(dict(
      name="efficientnet_lite0", weights=ml_collections.FieldReference(None, field_type=str),
      layer="head", dtype="float32", prototxt=""))
  c.data = ml_collections.ConfigDict(dict(train="synthetic:n=1200,seed=0",
                                          test="synthetic:n=200,seed=1", workers=0))
  c.batch_size = 32
  c.features = ml_collections.ConfigDict(dict(normalize=True, cache_dir="~/.cache/persistent/features"))
  # path: 'auto' (dual when the training set has fewer rows than features), 'primal', 'dual'.
  # extend_grid: widen alphas by decades while a target's best lambda sits at an edge.
  c.ridge = ml_collections.ConfigDict(dict(alphas=DEFAULT_ALPHAS, num_folds=4, per_target=True,
                                           dtype="float32", path="auto", extend_grid=False))
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
  c.num_figure_examples = 8
  return c
