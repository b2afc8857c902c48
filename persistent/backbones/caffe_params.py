"""Caffe blobs -> Flax parameters of a `CaffeModule`, checked against the net definition.

Parameters are Flax-style: Convolution {'kernel': HWIO (Caffe's (O, I/g, kh, kw) transposed
(2, 3, 1, 0)), 'bias'}, InnerProduct {'kernel': (K, N) = Caffe's weight transposed (inputs
flattened in Caffe's C, H, W order), 'bias'}, BatchNorm {'mean', 'var'} (already divided by
Caffe's scale-factor blob), Scale {'scale', 'bias'}, Bias {'bias'}, PReLU {'slope'}; the last
three keep Caffe's blob shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from persistent.backbones.caffe_format import (CaffeError, CaffeFormatError, CaffeMismatchError,
                                               LayerBlobs, blob_array)
from persistent.backbones.caffe_graph import Graph, LayerSpec, param_blob_names
from persistent.backbones.caffe_module import CaffeModule


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How a layer type's Caffe blobs map to its Flax parameters."""
  to_flax: Callable[[LayerSpec, list[np.ndarray]], dict]
  caffe_shapes: Callable[[LayerSpec, Mapping[str, tuple]], list[tuple[int, ...]]]
  natural_ndim: Callable[[LayerSpec], tuple[int, ...]]          # ranks of the Caffe blobs


def _conv_to_flax(spec, arrays):
  p = {"kernel": np.ascontiguousarray(arrays[0].transpose(2, 3, 1, 0))}
  if spec["bias_term"]:
    p["bias"] = arrays[1].reshape(-1)
  return p


def _conv_caffe_shapes(spec, shapes):
  kh, kw, i, o = shapes["kernel"]
  return [(o, i, kh, kw)] + ([tuple(shapes["bias"])] if spec["bias_term"] else [])


def _ip_to_flax(spec, arrays):
  w = arrays[0]
  p = {"kernel": np.ascontiguousarray(w if spec["transpose"] else w.T)}
  if spec["bias_term"]:
    p["bias"] = arrays[1].reshape(-1)
  return p


def _ip_caffe_shapes(spec, shapes):
  k, n = shapes["kernel"]
  return [(k, n) if spec["transpose"] else (n, k)] + ([(n,)] if spec["bias_term"] else [])


def _bn_to_flax(spec, arrays):
  mean, var, factor = arrays
  if factor.size != 1:
    raise CaffeFormatError(f"{spec.where()}: the scale-factor blob has {factor.size} values, not 1")
  f = float(factor.reshape(-1)[0])
  f = 0.0 if f == 0 else 1.0 / f  # as Caffe: a zero factor zeroes the statistics
  return {"mean": mean * np.float32(f), "var": var * np.float32(f)}


_PARAM_LAYOUTS: dict[str, _Layout] = {
    "Convolution": _Layout(_conv_to_flax, _conv_caffe_shapes,
                           lambda s: (4, 1) if s["bias_term"] else (4,)),
    "InnerProduct": _Layout(_ip_to_flax, _ip_caffe_shapes,
                            lambda s: (2, 1) if s["bias_term"] else (2,)),
    "BatchNorm": _Layout(_bn_to_flax, lambda s, sh: [tuple(sh["mean"]), tuple(sh["var"]), (1,)],
                         lambda s: (1, 1, 1)),
    "Scale": _Layout(lambda s, a: dict(zip(param_blob_names(s), a)),
                     lambda s, sh: [tuple(sh[k]) for k in param_blob_names(s)],
                     lambda s: (None,) * len(param_blob_names(s))),
    "Bias": _Layout(lambda s, a: {"bias": a[0]} if a else {},
                    lambda s, sh: [tuple(sh["bias"])] if "bias" in sh else [],
                    lambda s: () if len(s.bottoms) == 2 else (None,)),
    "PReLU": _Layout(lambda s, a: {"slope": a[0].reshape(-1)},
                     lambda s, sh: [tuple(sh["slope"])], lambda s: (1,)),
}


def _fit_blob(arr: np.ndarray, legacy: bool, expected: tuple[int, ...] | None,
              ndim: int | None) -> np.ndarray | None:
  """The blob in the expected shape (Caffe's legacy 4-D shapes pad leading ones), or None."""
  if expected is not None:
    if arr.shape == expected:
      return arr
    if legacy and len(expected) <= 4 and (1,) * (4 - len(expected)) + expected == arr.shape:
      return arr.reshape(expected)
    return None
  if legacy and ndim is not None and ndim < 4 and all(d == 1 for d in arr.shape[:4 - ndim]):
    return arr.reshape(arr.shape[4 - ndim:])
  return arr



def expected_param_shapes(module: CaffeModule, input_shapes: Sequence[tuple[int, ...]]) -> dict:
  """{layer: {param: shape}} implied by the net for inputs of these Caffe shapes."""
  xs = {n: jax.ShapeDtypeStruct(_nhwc_shape(s), jnp.float32)
        for n, s in zip(module.inputs, input_shapes)}
  x = xs if len(xs) > 1 else next(iter(xs.values()))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  return jax.tree.map(lambda a: tuple(a.shape), dict(variables.get("params", {})))


def _nhwc_shape(caffe_shape: Sequence[int]) -> tuple[int, ...]:
  s = (1,) + tuple(caffe_shape[1:])  # one sample: the batch size of a prototxt is irrelevant
  return (s[0], s[2], s[3], s[1]) if len(s) == 4 else s


def convert_params(graph: Graph, weights: Mapping[str, LayerBlobs], where: str,
                   expected: Mapping[str, Mapping[str, tuple]] | None = None) -> dict:
  """Flax parameters for the graph's layers from stored blobs, checked against `expected`
  ({layer: {param: flax shape}}, from `expected_param_shapes`) when given."""
  params = {}
  missing = []
  for spec in graph.layers:
    layout = _PARAM_LAYOUTS.get(spec.type)
    names = param_blob_names(spec)
    if layout is None or not names:
      continue
    stored = weights.get(spec.name)
    if stored is None:
      missing.append(spec.name)
      continue
    if len(stored.blobs) != len(names):
      raise CaffeMismatchError(
          f"{where}: {spec.where()} needs {len(names)} blobs ({', '.join(names)}) but the "
          f"caffemodel's layer {spec.name!r} ({stored.type}) has {len(stored.blobs)}")
    caffe_shapes = None
    if expected is not None:
      caffe_shapes = layout.caffe_shapes(spec, expected[spec.name])
    ndims = layout.natural_ndim(spec)
    arrays = []
    for i, blob in enumerate(stored.blobs):
      arr, legacy = blob_array(blob, f"{where}: layer {spec.name!r} blob {i} ({names[i]})")
      want = None if caffe_shapes is None else tuple(caffe_shapes[i])
      fitted = _fit_blob(arr, legacy, want, ndims[i])
      if fitted is None:
        raise CaffeMismatchError(
            f"{where}: {spec.where()} blob {i} ({names[i]}) has shape {arr.shape} in the "
            f"caffemodel but the net definition implies {want}")
      if want is None and ndims[i] is not None and fitted.ndim != ndims[i]:
        raise CaffeMismatchError(f"{where}: {spec.where()} blob {i} ({names[i]}) has shape "
                                 f"{arr.shape}, expected a {ndims[i]}-D blob")
      arrays.append(fitted)
    try:
      params[spec.name] = layout.to_flax(spec, arrays)
    except CaffeError as e:
      raise type(e)(f"{where}: {e}") from None
  if missing:
    have = sorted(weights)
    raise CaffeMismatchError(
        f"{where}: no weights in the caffemodel for layer(s) {missing} of the net definition; "
        f"the caffemodel has weights for {have[:20]}{' ...' if len(have) > 20 else ''}")
  return params

