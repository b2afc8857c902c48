"""A compiled Caffe graph as a Flax module: `CaffeModule`, and one op per layer type.

`apply({'params': p}, x)` takes Caffe's data blob transposed to NHWC and returns every blob by its
(top) name, 4-D blobs in NHWC and 2-D blobs as (N, C), with Caffe's values: in-place layers
overwrite their blob as in Caffe. Other ranks keep Caffe's axis order. The net runs as in Caffe's
TEST phase (Dropout the identity, BatchNorm with its stored statistics).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from persistent.backbones import caffe_ops
from persistent.backbones.caffe_format import MAX_BLOB, MAX_PARAM, CaffeMismatchError
from persistent.backbones.caffe_graph import SPECS, LayerSpec


_NHWC_AXIS = (0, 3, 1, 2)  # Caffe axis of a 4-D blob -> its axis in NHWC


def _to_caffe(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


def _from_caffe(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def _caffe_shape(x: jax.Array) -> tuple[int, ...]:
  s = tuple(x.shape)
  return (s[0], s[3], s[1], s[2]) if len(s) == 4 else s


def _canonical_axis(spec: LayerSpec, axis: int, ndim: int, what: str = "axis") -> int:
  if not -ndim <= axis < ndim:
    raise CaffeMismatchError(f"{spec.where()}: {what} {axis} is out of range for a {ndim}-D blob")
  return axis % ndim


def _internal_axis(axis: int, ndim: int) -> int:
  return _NHWC_AXIS[axis] if ndim == 4 else axis


def _broadcast(p: jax.Array, axis: int, ndim: int) -> jax.Array:
  """A Caffe-layout array covering Caffe axes [axis, axis + p.ndim) of an ndim-D blob, shaped to
  broadcast against that blob in this module's layout."""
  q = p.reshape((1,) * axis + tuple(p.shape) + (1,) * (ndim - axis - p.ndim))
  return _from_caffe(q) if ndim == 4 else q


def _need_4d(spec: LayerSpec, x: jax.Array) -> None:
  if x.ndim != 4:
    raise CaffeMismatchError(f"{spec.where()}: needs a 4-D input blob, got shape "
                             f"{_caffe_shape(x)}")


def _lecun(key, shape, fan_in):
  return jax.random.normal(key, shape, jnp.float32) / math.sqrt(max(fan_in, 1))


class CaffeModule(nn.Module):
  """A Caffe net as a Flax module: `apply({'params': p}, x)` -> {blob name: array}.

  `x` is the (single) input blob in NHWC (4-D) or (N, C), or a dict {input name: array}.
  """
  layers: tuple[LayerSpec, ...]
  inputs: tuple[str, ...]
  dtype: Any = jnp.float32
  precision: Any = "highest"

  def _param(self, spec: LayerSpec, shapes: Mapping[str, tuple[int, ...]],
             init: Callable[..., dict]) -> dict:
    """The layer's parameters (created by `init(key)` at init), checked against `shapes`."""
    for k, shape in shapes.items():
      if math.prod(shape) > MAX_PARAM:
        raise CaffeMismatchError(f"{spec.where()}: parameter {k!r} would have shape {shape}; "
                                 "refusing an implausibly large layer")
    p = self.param(spec.name, init)
    for k, shape in shapes.items():
      got = tuple(np.shape(p[k])) if k in p else None
      if got != tuple(shape):
        raise CaffeMismatchError(f"{spec.where()}: parameter {k!r} has shape {got} but the layer's "
                                 f"input implies {tuple(shape)}")
    return p

  @nn.compact
  def __call__(self, x: Any) -> dict[str, jax.Array]:
    if isinstance(x, Mapping):
      missing = [n for n in self.inputs if n not in x]
      if missing:
        raise KeyError(f"missing net inputs {missing}; the net takes {list(self.inputs)}")
      blobs = {n: jnp.asarray(x[n], self.dtype) for n in self.inputs}
    else:
      if len(self.inputs) != 1:
        raise ValueError(f"the net takes {len(self.inputs)} inputs {list(self.inputs)}: pass a "
                         "dict")
      blobs = {self.inputs[0]: jnp.asarray(x, self.dtype)}
    for spec in self.layers:
      outs = _OPS[spec.type](self, spec, [blobs[b] for b in spec.bottoms])
      for top, y in zip(spec.tops, outs):
        if math.prod(y.shape) > MAX_BLOB:
          raise CaffeMismatchError(f"{spec.where()}: output {top!r} would have shape "
                                   f"{_caffe_shape(y)}; refusing an implausibly large blob")
        blobs[top] = y
    return blobs


def _op_convolution(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  _need_4d(spec, x)
  c, g, o = x.shape[3], spec["group"], spec["num_output"]
  if c % g:
    raise CaffeMismatchError(f"{spec.where()}: {c} input channels are not divisible by group {g}")
  kh, kw = spec["kernel"]
  (ph, pw), (dh, dw) = spec["pad"], spec["dilation"]
  for size, k, p, d, axis in ((x.shape[1], kh, ph, dh, "height"),
                              (x.shape[2], kw, pw, dw, "width")):
    if size + 2 * p < d * (k - 1) + 1:
      raise CaffeMismatchError(f"{spec.where()}: the input {axis} {size} (padded {size + 2 * p}) "
                               f"is smaller than the kernel extent {d * (k - 1) + 1}")
  shapes = {"kernel": (kh, kw, c // g, o)}
  if spec["bias_term"]:
    shapes["bias"] = (o,)

  def init(key):
    p = {"kernel": _lecun(key, shapes["kernel"], kh * kw * c // g)}
    if spec["bias_term"]:
      p["bias"] = jnp.zeros((o,), jnp.float32)
    return p
  p = m._param(spec, shapes, init)
  y = caffe_ops.conv2d(x, p["kernel"], p.get("bias"), spec["stride"], spec["pad"],
                       spec["dilation"], g, m.precision)
  return [y]


def _op_inner_product(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  xc = _to_caffe(x)
  axis = _canonical_axis(spec, spec["axis"], xc.ndim)
  lead, k, n = xc.shape[:axis], math.prod(xc.shape[axis:]), spec["num_output"]
  shapes = {"kernel": (k, n)}
  if spec["bias_term"]:
    shapes["bias"] = (n,)

  def init(key):
    p = {"kernel": _lecun(key, (k, n), k)}
    if spec["bias_term"]:
      p["bias"] = jnp.zeros((n,), jnp.float32)
    return p
  p = m._param(spec, shapes, init)
  y = jnp.dot(xc.reshape(math.prod(lead), k), p["kernel"].astype(x.dtype), precision=m.precision)
  if spec["bias_term"]:
    y = y + p["bias"].astype(y.dtype)
  return [_from_caffe(y.reshape(*lead, n))]


def _op_pooling(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  _need_4d(spec, x)
  if spec["global_pooling"]:
    kernel, stride, pad = tuple(x.shape[1:3]), (1, 1), (0, 0)
  else:
    kernel, stride, pad = spec["kernel"], spec["stride"], spec["pad"]
  clip = pad[0] > 0 or pad[1] > 0
  for size, k, s, p in zip(x.shape[1:3], kernel, stride, pad):
    if caffe_ops.pool_output_size(size, k, s, p, spec["ceil_mode"], clip) < 1:
      raise CaffeMismatchError(f"{spec.where()}: input {tuple(x.shape[1:3])} is too small for a "
                               f"{kernel} window")
  fn = caffe_ops.max_pool if spec["method"] == "MAX" else caffe_ops.ave_pool
  return [fn(x, kernel, stride, pad, ceil_mode=spec["ceil_mode"], clip=clip)]


def _op_lrn(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  _need_4d(spec, x)
  if spec["region"] == "ACROSS_CHANNELS":
    return [caffe_ops.lrn_across_channels(x, spec["local_size"], spec["alpha"], spec["beta"],
                                          spec["k"])]
  return [caffe_ops.lrn_within_channel(x, spec["local_size"], spec["alpha"], spec["beta"])]


def _op_relu(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  slope = spec["negative_slope"]
  if slope == 0.0:
    return [jnp.maximum(x, 0)]
  return [jnp.maximum(x, 0) + slope * jnp.minimum(x, 0)]


def _op_identity(m: CaffeModule, spec: LayerSpec, ins):
  return [ins[0]] * len(spec.tops)


def _op_concat(m: CaffeModule, spec: LayerSpec, ins):
  ndim = ins[0].ndim
  shapes = [_caffe_shape(x) for x in ins]
  axis = _canonical_axis(spec, spec["axis"], ndim)
  for s in shapes[1:]:
    if len(s) != ndim or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
      raise CaffeMismatchError(f"{spec.where()}: cannot concatenate shapes {shapes} on axis {axis}")
  return [jnp.concatenate(ins, axis=_internal_axis(axis, ndim))]


def _op_eltwise(m: CaffeModule, spec: LayerSpec, ins):
  shapes = {tuple(x.shape) for x in ins}
  if len(shapes) != 1:
    raise CaffeMismatchError(f"{spec.where()}: inputs have different shapes "
                             f"{[_caffe_shape(x) for x in ins]}")
  op = spec["operation"]
  if op == "SUM":
    coeff = spec["coeff"] or (1.0,) * len(ins)
    y = ins[0] * coeff[0] if coeff[0] != 1.0 else ins[0]
    for c, x in zip(coeff[1:], ins[1:]):
      y = y + (x * c if c != 1.0 else x)
    return [y]
  fn = jnp.multiply if op == "PROD" else jnp.maximum
  y = ins[0]
  for x in ins[1:]:
    y = fn(y, x)
  return [y]


def _channels(spec: LayerSpec, x: jax.Array) -> int:
  if x.ndim < 2:
    raise CaffeMismatchError(f"{spec.where()}: needs a blob with a channel axis, got shape "
                             f"{_caffe_shape(x)}")
  return _caffe_shape(x)[1]


def _op_batch_norm(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  c = _channels(spec, x)
  shapes = {"mean": (c,), "var": (c,)}
  p = m._param(spec, shapes, lambda key: {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))})
  mean = _broadcast(p["mean"].astype(x.dtype), 1, x.ndim)
  var = _broadcast(p["var"].astype(x.dtype), 1, x.ndim)
  return [(x - mean) / jnp.sqrt(var + spec["eps"])]


def _affine_shape(spec: LayerSpec, x: jax.Array) -> tuple[int, tuple[int, ...]]:
  """(axis, shape) of a one-input Scale / Bias layer's learned blob (Caffe axis / num_axes)."""
  cs = _caffe_shape(x)
  axis = _canonical_axis(spec, spec["axis"], x.ndim)
  n = spec["num_axes"]
  if n < -1 or (n >= 0 and axis + n > x.ndim):
    raise CaffeMismatchError(f"{spec.where()}: num_axes {n} does not fit a {x.ndim}-D input at "
                             f"axis {axis}")
  return axis, tuple(cs[axis:] if n == -1 else cs[axis:axis + n])


def _operand(spec: LayerSpec, x: jax.Array, y: jax.Array) -> tuple[int, jax.Array]:
  """A second input (Scale / Bias with two bottoms) in Caffe layout, with its axis."""
  yc = _to_caffe(y)
  cs = _caffe_shape(x)
  axis = 0 if yc.ndim == 0 else _canonical_axis(spec, spec["axis"], x.ndim)
  if tuple(cs[axis:axis + yc.ndim]) != tuple(yc.shape):
    raise CaffeMismatchError(f"{spec.where()}: second input of shape {tuple(yc.shape)} does not "
                             f"match the first input {cs} at axis {axis}")
  return axis, yc


def _op_scale(m: CaffeModule, spec: LayerSpec, ins):
  x = ins[0]
  if len(ins) == 2:
    axis, s = _operand(spec, x, ins[1])
    shape = tuple(s.shape)
    shapes = {"bias": shape} if spec["bias_term"] else {}
    p = m._param(spec, shapes, lambda key: {"bias": jnp.zeros(shape)}) if shapes else {}
  else:
    axis, shape = _affine_shape(spec, x)
    shapes = {"scale": shape}
    if spec["bias_term"]:
      shapes["bias"] = shape

    def init(key):
      p = {"scale": jnp.ones(shape)}
      if spec["bias_term"]:
        p["bias"] = jnp.zeros(shape)
      return p
    p = m._param(spec, shapes, init)
    s = p["scale"]
  y = x * _broadcast(s.astype(x.dtype), axis, x.ndim)
  if spec["bias_term"]:
    y = y + _broadcast(p["bias"].astype(x.dtype), axis, x.ndim)
  return [y]


def _op_bias(m: CaffeModule, spec: LayerSpec, ins):
  x = ins[0]
  if len(ins) == 2:
    axis, b = _operand(spec, x, ins[1])
  else:
    axis, shape = _affine_shape(spec, x)
    b = m._param(spec, {"bias": shape}, lambda key: {"bias": jnp.zeros(shape)})["bias"]
  return [x + _broadcast(b.astype(x.dtype), axis, x.ndim)]


def _op_prelu(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  shape = (1,) if spec["channel_shared"] else (_channels(spec, x),)
  p = m._param(spec, {"slope": shape}, lambda key: {"slope": jnp.full(shape, 0.25)})
  slope = p["slope"].astype(x.dtype)
  slope = slope.reshape(()) if spec["channel_shared"] else _broadcast(slope, 1, x.ndim)
  return [jnp.maximum(x, 0) + slope * jnp.minimum(x, 0)]


def _op_softmax(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  axis = _canonical_axis(spec, spec["axis"], x.ndim)
  return [jax.nn.softmax(x, axis=_internal_axis(axis, x.ndim))]


def _op_flatten(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  xc = _to_caffe(x)
  start = _canonical_axis(spec, spec["axis"], xc.ndim)
  end = _canonical_axis(spec, spec["end_axis"], xc.ndim, "end_axis")
  if end < start:
    raise CaffeMismatchError(f"{spec.where()}: end_axis {end} is before axis {start}")
  s = xc.shape
  return [_from_caffe(xc.reshape(*s[:start], math.prod(s[start:end + 1]), *s[end + 1:]))]


def _op_power(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  y = spec["shift"] + spec["scale"] * x
  return [y if spec["power"] == 1.0 else jnp.power(y, spec["power"])]


def _op_elu(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  return [jnp.where(x > 0, x, spec["alpha"] * (jnp.exp(jnp.minimum(x, 0)) - 1))]


_OPS: dict[str, Callable[[CaffeModule, LayerSpec, list], list]] = {
    "Convolution": _op_convolution, "InnerProduct": _op_inner_product, "Pooling": _op_pooling,
    "LRN": _op_lrn, "ReLU": _op_relu, "Dropout": _op_identity, "Split": _op_identity,
    "Concat": _op_concat, "Eltwise": _op_eltwise, "BatchNorm": _op_batch_norm,
    "Scale": _op_scale, "Bias": _op_bias, "Softmax": _op_softmax, "Flatten": _op_flatten,
    "Sigmoid": lambda m, s, ins: [jax.nn.sigmoid(ins[0])],
    "TanH": lambda m, s, ins: [jnp.tanh(ins[0])],
    "AbsVal": lambda m, s, ins: [jnp.abs(ins[0])],
    "Power": _op_power, "ELU": _op_elu, "PReLU": _op_prelu,
}
assert set(_OPS) == set(SPECS)

