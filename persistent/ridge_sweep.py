"""The lambda sweep in an eigenbasis: the numerical kernels shared by both ridge paths.

Both paths reduce a CV fold to an eigendecomposition of a centred training Gram matrix,
G_t = V diag(e) V^T, and the right-hand sides Z = V^T C_t, so that the ridge solution for every
lambda is a diagonal scaling, u(lambda) = Z / (e + lambda). Held-out errors then come either

  * from the held-out Gram in the eigenbasis (`quadratic_errors`: memory independent of n):
        err(lambda) = q_v - 2 u^T (V^T C_v) + u^T A u,   A = V^T G_v V,
    whose terms cancel when the held-out error is tiny against q_v, or
  * from held-out rows in the eigenbasis (`residual_errors`: B = held-out rows mapped into it):
        err(lambda) = ||Y_v - B u||^2,
    which forms the residuals themselves and cancels far less.

Each kernel also returns a rounding scale per (lambda, target): the size of the quantities whose
difference is the error. `scale * eps(dtype)` bounds the absolute rounding error up to a modest
constant; ridge_cv recomputes in float64 the targets where it is not small against the error.

Every function here is pure and jitted; callers choose the dtype (float32 sweeps, float64
recomputation) by the dtype of the arrays they pass. Float64 arrays need JAX's x64 mode, which
`float64_context()` turns on locally.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
BLOCK_BYTES = 1 << 28  # working set of one target block of a sweep
RESIDUAL_SCALE = 4.0  # see residual_errors


def float64_context():
  """A context in which JAX creates and computes float64 arrays (JAX's x64 mode, locally)."""
  return jax.enable_x64(True)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=HIGHEST)


def block_size(k: int, per_target_bytes: int, target_block: int | None = None) -> int:
  """Targets per block: `target_block`, or as many as fit BLOCK_BYTES, spread evenly over k."""
  size = target_block or max(1, BLOCK_BYTES // max(1, per_target_bytes))
  size = min(size, k)
  blocks = -(-k // size)
  return -(-k // blocks)


def block_starts(k: int, size: int) -> list[int]:
  """Starts of equal-size blocks covering [0, k); the last one may overlap its neighbour."""
  return sorted({min(s, k - size) for s in range(0, k, size)})


@functools.partial(jax.jit, static_argnames="rank")
def eigenbasis(g: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """The top-`rank` eigenpairs (e, V) of a symmetric PSD matrix, in its dtype.

  Eigenvalues at rounding level (below eps * size * e_max, the usual numerical-rank cut) span the
  null space of a rank-deficient Gram matrix (n < d, or a centred kernel); they are set to +inf so
  that their noise cannot enter the solution: there every scaling 1 / (e + lambda) is 0.
  """
  e, v = jnp.linalg.eigh((g + g.T) / 2)
  e, v = e[-rank:], v[:, -rank:]
  tol = e[-1] * g.shape[0] * jnp.finfo(g.dtype).eps
  return jnp.where(e > tol, e, jnp.inf), v


@jax.jit
def quadratic_errors(e: jax.Array, z: jax.Array, b: jax.Array, a: jax.Array, q: jax.Array,
                     alphas: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Held-out SSE (L, k) and rounding scale from the held-out Gram in the eigenbasis.

  e (r,) eigenvalues, z = V^T C_t and b = V^T C_v (r, k), a = V^T G_v V (r, r), q (k,) held-out
  sums of squares, everything centred at the training means.
  """
  shrink = 1.0 / (e[None, :] + alphas[:, None])  # (L, r); 0 on the null space (e = inf)
  linear = matmul(shrink, z * b)  # u^T V^T C_v for every lambda: (L, k)
  u = shrink[:, :, None] * z[None]  # (L, r, k)
  quad = jnp.einsum("ldk,ldk->lk", u, jnp.einsum("de,lek->ldk", a, u, precision=HIGHEST),
                    precision=HIGHEST)
  return q[None] - 2 * linear + quad, q[None] + 2 * jnp.abs(linear) + quad


@jax.jit
def residual_errors(e: jax.Array, z: jax.Array, rows: jax.Array, y: jax.Array, mask: jax.Array,
                    alphas: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Held-out SSE (L, k) and rounding scale from held-out rows in the eigenbasis.

  rows (m, r): held-out rows mapped into the eigenbasis (padding rows 0), y (m, k) held-out
  targets minus the training mean (padding rows 0), mask (m,) 1 for real rows.
  Predictions p = rows @ u(lambda) and residuals carry errors relative to their own size, so the
  scale is 2 ||residual|| (||p|| + ||y||), the first-order effect of those errors on the SSE,
  times RESIDUAL_SCALE for the eigenbasis's own error (calibrated against float64 brute force).
  """
  yy = jnp.sqrt(jnp.sum(y * y, 0))

  def one(alpha):
    p = matmul(rows, z / (e + alpha)[:, None]) * mask[:, None]
    r = y - p
    sse = jnp.sum(r * r, 0)
    return sse, 2 * RESIDUAL_SCALE * jnp.sqrt(sse) * (jnp.sqrt(jnp.sum(p * p, 0)) + yy)
  return jax.lax.map(one, alphas)


@jax.jit
def scaled_solution(v: jax.Array, e: jax.Array, rhs: jax.Array, alpha: jax.Array) -> jax.Array:
  """V diag(1 / (e + alpha_j)) V^T rhs_j for every column j, each with its own alpha_j."""
  return matmul(v, matmul(v.T, rhs) / (e[:, None] + alpha[None, :]))
