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

Each kernel also returns a rounding scale per (lambda, target), so that `scale * eps(dtype)`
estimates the absolute rounding error of the SSE: the size of the quantities whose difference is
the error (cancellation), plus the effect of the eigenbasis's own rounding (`basis_scale`).
ridge_cv recomputes in float64 the targets where it is not small against the error.

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
EIGENVALUE_ERROR = 1.0  # eigh's eigenvalue errors, in eps * e_max (measured: median 0.05, max 3)


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


def basis_scale(e: jax.Array, z: jax.Array, b: jax.Array, sse: jax.Array, alphas: jax.Array) -> jax.Array:
  """2 ||r|| ||dp|| / eps (L, k): the first-order effect on the SSE of the prediction error dp
  that an eigenbasis computed in this dtype carries.

  Eigenvalues carry absolute errors of up to a few eps * e_max (taken as EIGENVALUE_ERROR * eps *
  e_max), so eigencomponent i of the solution is off by that over (e_i + lambda) relative, and
  its right-hand side z_i by eps ||z|| / sqrt(r) (a sum of r rounded products). Component errors
  add in quadrature, each weighted by b_i, the held-out rows' energy along eigenvector i.
  Calibrated against float64 brute force (tests/test_ridge.py): the actual error stayed below
  this estimate (at most 1.03 times it, for n_t = d, where the Gram is singular).
  """
  finite = jnp.isfinite(e)
  e_max = jnp.max(jnp.where(finite, e, 0))
  shrink = 1.0 / (e[None, :] + alphas[:, None])  # (L, r); 0 on the null space
  amp = shrink * (1 + EIGENVALUE_ERROR * e_max * shrink)
  zz = jnp.sum(z * z, 0)[None] / jnp.maximum(jnp.sum(finite), 1)
  var = matmul(b[None] * amp * amp, z * z) + jnp.sum(b[None] * shrink * shrink, 1)[:, None] * zz
  return 2 * jnp.sqrt(jnp.maximum(sse, 0) * var)


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
  sse = q[None] - 2 * linear + quad
  return sse, q[None] + 2 * jnp.abs(linear) + quad + basis_scale(e, z, jnp.diagonal(a), sse, alphas)


@jax.jit
def residual_errors(e: jax.Array, z: jax.Array, rows: jax.Array, y: jax.Array, mask: jax.Array,
                    alphas: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Held-out SSE (L, k) and rounding scale from held-out rows in the eigenbasis.

  rows (m, r): held-out rows mapped into the eigenbasis (padding rows 0), y (m, k) held-out
  targets minus the training mean (padding rows 0), mask (m,) 1 for real rows.
  Predictions p = rows @ u(lambda) and residuals are formed with errors relative to their own
  size: 2 ||residual|| (||p|| + ||y||) to first order, plus the eigenbasis's (`basis_scale`).
  """
  yy = jnp.sqrt(jnp.sum(y * y, 0))

  def one(alpha):
    p = matmul(rows, z / (e + alpha)[:, None]) * mask[:, None]
    r = y - p
    sse = jnp.sum(r * r, 0)
    return sse, 2 * jnp.sqrt(sse) * (jnp.sqrt(jnp.sum(p * p, 0)) + yy)
  sse, scale = jax.lax.map(one, alphas)
  return sse, scale + basis_scale(e, z, jnp.sum(rows * rows, 0), sse, alphas)


@jax.jit
def scaled_solution(v: jax.Array, e: jax.Array, rhs: jax.Array, alpha: jax.Array) -> jax.Array:
  """V diag(1 / (e + alpha_j)) V^T rhs_j for every column j, each with its own alpha_j."""
  return matmul(v, matmul(v.T, rhs) / (e[:, None] + alpha[None, :]))
