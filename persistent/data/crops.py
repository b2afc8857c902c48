"""Sources of box crops of another source's examples: face boxes, object boxes, look-back boxes."""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from persistent import data
from persistent.data import images as image_lib


def crop_source(source: data.Source, parents: Sequence[int], boxes: np.ndarray, size: tuple[int, int],
                name: str, extra: Sequence[dict[str, Any]] | None = None,
                flips: Sequence[bool] | None = None) -> data.Source:
  """Example i is box boxes[i] (x0, y0, x1, y1, pixel corners) of example parents[i], resized to
  `size`, with the parent's annotations, `box`, `parent`, `flip` and the fields of extra[i].
  With `flips`, crop i is mirrored left-right where flips[i] (its `flip` is True; annotations stay
  the parent's, in the unflipped frame: the task mirrors its targets).

  Boxes are snapped to 1/64 px: float rounding in the estimates that place them (which differ in
  the last bits between device layouts) then cannot change a crop's uint8 pixels, and the spec,
  which digests every box, keys the feature cache by exactly the crops made. Recently decoded
  parents are reused, so crops of one parent should be consecutive.
  """
  parents = np.asarray(parents, np.int64)
  boxes = np.round(np.asarray(boxes, np.float64).reshape(-1, 4) * 64) / 64
  if len(parents) != len(boxes) or (extra is not None and len(extra) != len(parents)):
    raise ValueError(f"crops {name!r}: {len(parents)} parents, {len(boxes)} boxes"
                     + (f", {len(extra)} extra records" if extra is not None else ""))
  flip = np.zeros(len(parents), bool) if flips is None else np.asarray(flips, bool).reshape(-1)
  if len(flip) != len(parents):
    raise ValueError(f"crops {name!r}: {len(parents)} parents, {len(flip)} flips")
  # Unflipped sources keep the digest (and feature cache keys) they had before flips existed.
  digest = data.digest((parents.tolist(), boxes.tolist(), size, extra) if not flip.any() else
                       (parents.tolist(), boxes.tolist(), size, extra, flip.tolist()))
  ids = [f"{source.ids[int(p)]}#{name}:{i}" for i, p in enumerate(parents)]

  parent = functools.lru_cache(maxsize=32)(lambda p: source[p])

  def load(i: int) -> data.Example:
    ex = parent(int(parents[i]))
    crop = image_lib.crop_resize(ex["image"], boxes[i], size)
    if flip[i]:
      crop = np.ascontiguousarray(crop[:, ::-1])
    return {**ex, **(extra[i] if extra is not None else {}), "image": crop, "box": boxes[i].copy(),
            "parent": int(parents[i]), "flip": bool(flip[i]), "id": ids[i]}
  return data.Source(f"{source.spec}|crops:v1,{name},size={size[0]}x{size[1]},{digest}", ids, load)
