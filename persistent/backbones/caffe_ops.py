"""Layer operations with Caffe's exact semantics (NHWC arrays)."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True,
                     clip: bool | None = None) -> int:
  """Caffe's pooling output size.

  Caffe rounds up (`round_mode: CEIL`, the default) or down, then, when the layer has any padding
  (`clip`, default `pad > 0`), drops a last window that would start in the padding.
  """
  span = size + 2 * pad - kernel
  out = (int(math.ceil(span / stride)) if ceil_mode else span // stride) + 1
  if (pad > 0 if clip is None else clip) and (out - 1) * stride >= size + pad:
    out -= 1
  return out


def _pool_padding(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True,
                  clip: bool | None = None) -> tuple[int, int]:
  out = pool_output_size(size, kernel, stride, pad, ceil_mode, clip)
  return pad, max(0, (out - 1) * stride + kernel - size - pad)


def _pool_paddings(x: jax.Array, kernel, stride, pad, ceil_mode, clip):
  (h, w) = x.shape[1:3]
  return ((0, 0), _pool_padding(h, kernel[0], stride[0], pad[0], ceil_mode, clip),
          _pool_padding(w, kernel[1], stride[1], pad[1], ceil_mode, clip), (0, 0))


def max_pool(x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int],
             pad: tuple[int, int] = (0, 0), ceil_mode: bool = True,
             clip: bool | None = None) -> jax.Array:
  """Caffe MAX pooling: ceil-mode output size, windows clipped at the border."""
  padding = _pool_paddings(x, kernel, stride, pad, ceil_mode, clip)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1), padding)


def _ave_pool_counts(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool,
                     clip: bool | None) -> np.ndarray:
  """Caffe's AVE divisor along one axis: the window clipped to [-pad, size + pad)."""
  out = pool_output_size(size, kernel, stride, pad, ceil_mode, clip)
  start = np.arange(out) * stride - pad
  return (np.minimum(start + kernel, size + pad) - start).astype(np.float32)


def ave_pool(x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int],
             pad: tuple[int, int] = (0, 0), ceil_mode: bool = True,
             clip: bool | None = None) -> jax.Array:
  """Caffe AVE pooling.

  The sum runs over the window clipped to the image; it is divided by the window's size clipped to
  the padded image, so zero padding counts but a ceil-mode overhang beyond the padding does not.
  """
  padding = _pool_paddings(x, kernel, stride, pad, ceil_mode, clip)
  summed = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, *kernel, 1),
                                 (1, *stride, 1), padding)
  (h, w) = x.shape[1:3]
  ch = _ave_pool_counts(h, kernel[0], stride[0], pad[0], ceil_mode, clip)
  cw = _ave_pool_counts(w, kernel[1], stride[1], pad[1], ceil_mode, clip)
  return summed / (jnp.asarray(ch[None, :, None, None], x.dtype)
                   * jnp.asarray(cw[None, None, :, None], x.dtype))


# XLA:CPU runs grouped convolutions (feature_group_count) several times slower than the same
# groups as separate convolutions (AlexNet's conv2: ~7x); GPUs do not need the split.
_CPU_SPLIT_GROUPS = 16


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, stride: tuple[int, int],
           pad: tuple[int, int], dilation: tuple[int, int] = (1, 1), groups: int = 1,
           precision: Any = None) -> jax.Array:
  """Caffe convolution on NHWC input with an HWIO kernel (Caffe's (O, I/g, kh, kw) transposed
  (2, 3, 1, 0)); output size floor((size + 2 pad - dilation (k - 1) - 1) / stride) + 1.

  Group g takes input channels [g C/G, (g+1) C/G) to output channels [g O/G, (g+1) O/G), as in
  Caffe."""
  def conv(lhs, rhs, feature_groups):
    return jax.lax.conv_general_dilated(
        lhs, rhs.astype(x.dtype), window_strides=stride,
        padding=[(pad[0], pad[0]), (pad[1], pad[1])], rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=feature_groups,
        precision=precision)
  if 1 < groups <= _CPU_SPLIT_GROUPS and jax.default_backend() == "cpu":
    y = jnp.concatenate([conv(xg, kg, 1) for xg, kg in zip(jnp.split(x, groups, axis=-1),
                                                           jnp.split(kernel, groups, axis=-1))],
                        axis=-1)
  else:
    y = conv(x, kernel, groups)
  return y if bias is None else y + bias.astype(y.dtype)


def lrn_across_channels(x: jax.Array, local_size: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, k: float = 1.0) -> jax.Array:
  """Caffe LRN (ACROSS_CHANNELS): x / (k + alpha/n * sum over a window of n channels of x^2)^beta."""
  half = (local_size - 1) // 2
  sq = jnp.square(x)
  summed = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, local_size), (1, 1, 1, 1),
                                 ((0, 0), (0, 0), (0, 0), (half, local_size - 1 - half)))
  return x / jnp.power(k + (alpha / local_size) * summed, beta)


def lrn_within_channel(x: jax.Array, local_size: int = 5, alpha: float = 1.0,
                       beta: float = 0.75) -> jax.Array:
  """Caffe LRN (WITHIN_CHANNEL): x * (1 + alpha * mean of x^2 over a local_size^2 window)^-beta.

  Caffe builds it from a zero-padded AVE pooling of x^2 (its divisor is local_size^2 everywhere
  for the odd sizes Caffe accepts); `k` plays no part.
  """
  pad = (local_size - 1) // 2
  avg = ave_pool(jnp.square(x), (local_size, local_size), (1, 1), (pad, pad))
  return x * jnp.power(1.0 + alpha * avg, -beta)
