"""Layer operations with Caffe's exact semantics (NHWC arrays)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def pool_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
  """Caffe's ceil-mode pooling size, dropping a last window that would start in the padding."""
  out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
  if pad > 0 and (out - 1) * stride >= size + pad:
    out -= 1
  return out


def _pool_padding(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
  out = pool_output_size(size, kernel, stride, pad)
  return pad, max(0, (out - 1) * stride + kernel - size - pad)


def max_pool(x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int],
             pad: tuple[int, int] = (0, 0)) -> jax.Array:
  """Caffe MAX pooling: ceil-mode output size, windows clipped at the border."""
  (h, w) = x.shape[1:3]
  padding = ((0, 0), _pool_padding(h, kernel[0], stride[0], pad[0]),
             _pool_padding(w, kernel[1], stride[1], pad[1]), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1), padding)


def lrn_across_channels(x: jax.Array, local_size: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, k: float = 1.0) -> jax.Array:
  """Caffe LRN (ACROSS_CHANNELS): x / (k + alpha/n * sum over a window of n channels of x^2)^beta."""
  half = (local_size - 1) // 2
  sq = jnp.square(x)
  summed = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, local_size), (1, 1, 1, 1),
                                 ((0, 0), (0, 0), (0, 0), (half, local_size - 1 - half)))
  return x / jnp.power(k + (alpha / local_size) * summed, beta)
