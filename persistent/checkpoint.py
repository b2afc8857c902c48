"""Orbax checkpoints of fitted ridge probes, with the metadata needed to use them again."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from persistent import ridge


def save(directory: str, fits: dict[str, ridge.RidgeFit], metadata: dict[str, Any]) -> str:
  """Writes named fits (e.g. {'rgb': fit}) and JSON metadata to directory/ (replacing it)."""
  directory = os.path.abspath(directory)
  fields = [f.name for f in dataclasses.fields(ridge.RidgeFit)]
  tree = {name: {f: np.asarray(getattr(fit, f)) for f in fields} for name, fit in fits.items()}
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(directory, "fits"), tree, force=True)
    ckpt.wait_until_finished()
  with open(os.path.join(directory, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=2, sort_keys=True)
  return directory


def restore(directory: str) -> tuple[dict[str, ridge.RidgeFit], dict[str, Any]]:
  """Inverse of `save`."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, "metadata.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"no probe checkpoint in {directory} (missing metadata.json)")
  with open(meta_path) as f:
    metadata = json.load(f)
  with ocp.StandardCheckpointer() as ckpt:
    tree = ckpt.restore(os.path.join(directory, "fits"))
  fits = {name: ridge.RidgeFit(**{k: np.asarray(v) for k, v in leaves.items()})
          for name, leaves in tree.items()}
  return fits, metadata
