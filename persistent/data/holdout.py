"""A seeded hold-out split of one source, for data that comes without a test split.

`split(source, fraction, seed, groups)` puts round(fraction x number of groups) groups in the test
part and the rest in the training part; every example of a group lands on the same side (e.g. the
people of one image, the crops of one face), so nothing of a test image is seen in training. The
permutation is numpy's `default_rng([seed, 7])` over the groups in order of first appearance.
Both parts keep the source's order; their specs record the indices, so feature caches of either
part are reused by later runs with the same seed. Tasks reach it through `Pipeline.train_test`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from persistent import data


def split(source: data.Source, fraction: float, seed: int, groups: Sequence[object] | None = None
          ) -> tuple[data.Source, data.Source]:
  """(train, test) parts of `source`: a seeded `fraction` of its groups (default: one per example)
  held out."""
  if not 0 < fraction < 1:
    raise ValueError(f"the hold-out fraction must lie in (0, 1), got {fraction}")
  keys = list(range(len(source))) if groups is None else list(groups)
  if len(keys) != len(source):
    raise ValueError(f"{len(keys)} group labels for {len(source)} examples of {source.spec.split('@')[0]!r}")
  first: dict[object, int] = {}  # groups numbered in order of first appearance
  label = np.array([first.setdefault(k, len(first)) for k in keys], np.int64)
  names = list(first)
  perm = np.random.default_rng([seed, 7]).permutation(len(names))
  n_test = int(round(fraction * len(names)))
  if n_test < 1 or n_test >= len(names):
    raise ValueError(f"holding out {fraction} of {len(names)} groups of {source.spec.split('@')[0]!r} "
                     "leaves an empty part")
  held = np.zeros(len(names), bool)
  held[perm[:n_test]] = True
  test = held[label]
  return source.subset(np.flatnonzero(~test)), source.subset(np.flatnonzero(test))
