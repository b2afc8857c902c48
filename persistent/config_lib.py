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
      layer="head", dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(train="synthetic:n=1200,seed=0",
                                          test="synthetic:n=200,seed=1", workers=0))
  c.batch_size = 32
  c.features = ml_collections.ConfigDict(dict(normalize=True, cache_dir="~/.cache/persistent/features"))
  c.ridge = ml_collections.ConfigDict(dict(alphas=DEFAULT_ALPHAS, num_folds=4, per_target=True,
                                           dtype="float32"))
  c.restore = ""  # a previous run's workdir: predict with its probes instead of fitting
  c.num_figure_examples = 8
  return c
