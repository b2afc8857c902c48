"""Flax building blocks shared by the backbones ported from PyTorch."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def precision(dtype: Any) -> Any:
  """Full float32 matmuls/convs for float32 compute (exact also on GPUs whose default is TF32)."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class FrozenBatchNorm(nn.Module):
  """Batch norm in inference mode with its statistics as parameters (scale, bias, mean, var)."""
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    mul = scale * jax.lax.rsqrt(var + self.eps)
    return x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)


def adaptive_avg_pool(x: jax.Array, cells: int | tuple[int, int]) -> jax.Array:
  """NHWC -> (N, ch, cw, C) with PyTorch's adaptive bins [floor(iH/n), ceil((i+1)H/n))."""
  ch, cw = (cells, cells) if isinstance(cells, int) else cells
  def bins(size, n):
    return [(i * size // n, -(-(i + 1) * size // n)) for i in range(n)]
  if x.shape[1] == ch and x.shape[2] == cw:
    return x
  rows = [jnp.mean(x[:, a:b], axis=1, dtype=jnp.float32) for a, b in bins(x.shape[1], ch)]
  out = [[jnp.mean(r[:, a:b], axis=1) for a, b in bins(x.shape[2], cw)] for r in rows]
  return jnp.stack([jnp.stack(r, axis=1) for r in out], axis=1).astype(x.dtype)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """NHWC -> (N, C), averaged in float32."""
  return jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(x.dtype)
