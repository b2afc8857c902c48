"""The seeded hold-out split (persistent/data/holdout.py)."""
import numpy as np
import pytest

from persistent import data
from persistent.data import holdout


def _source(n):
  return data.Source(f"toy:{n}", [f"person/{i // 3}_{i}" for i in range(n)], lambda i: {"id": i})


def test_split_is_seeded_disjoint_and_complete():
  src = _source(50)
  train, test = holdout.split(src, 0.2, seed=0)
  a, b = [int(i.rpartition("_")[2]) for i in train.ids], [int(i.rpartition("_")[2]) for i in test.ids]
  assert len(b) == 10 and sorted(a + b) == list(range(50)) and a == sorted(a) and b == sorted(b)
  assert [e["id"] for e in test] == b  # the parts load the source's own examples
  again = holdout.split(src, 0.2, seed=0)[1]
  assert again.ids == test.ids and again.spec == test.spec  # same seed, same split, same cache key
  assert holdout.split(src, 0.2, seed=1)[1].ids != test.ids


def test_groups_stay_on_one_side():
  src = _source(30)  # ten groups of three ('person/G_i')
  groups = [i.partition("/")[2].partition("_")[0] for i in src.ids]
  train, test = holdout.split(src, 0.3, seed=3, groups=groups)
  side = {}
  for part, ids in (("train", train.ids), ("test", test.ids)):
    for i in ids:
      assert side.setdefault(i.partition("/")[2].partition("_")[0], part) == part
  assert len(test) == 9  # round(0.3 x 10 groups) = 3 groups of 3


def test_bad_fractions_and_group_counts():
  src = _source(4)
  for frac in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match="must lie in"):
      holdout.split(src, frac, 0)
  with pytest.raises(ValueError, match="leaves an empty part"):
    holdout.split(src, 0.05, 0)
  with pytest.raises(ValueError, match="3 group labels for 4 examples"):
    holdout.split(src, 0.5, 0, groups=[1, 2, 3])
