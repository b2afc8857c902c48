"""A multinomial logistic probe, the classification counterpart of the ridge probes.

Per row group (e.g. a segmentation cell) a softmax over C classes of logits x W + b, trained with
Adam on cross-entropy over the labelled rows (label -1: not scored), from features held in memory.
Returned as a `ridge.RidgeFit`-shaped linear model (weights (d, groups * C), bias) so that it is
saved, restored and applied like any other probe; its ridge-only fields hold NaN.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from persistent import ridge


def train(x: np.ndarray, labels: np.ndarray, num_classes: int, *, steps: int, batch_size: int,
          learning_rate: float, l2: float, seed: int) -> tuple[ridge.RidgeFit, float]:
  """x (n, d), labels (n, groups) in [-1, C): (linear model, final minibatch loss)."""
  n, d = x.shape
  k = labels.shape[1] * num_classes
  params = {"w": jnp.zeros((d, k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}
  opt = optax.adam(learning_rate)
  state = opt.init(params)

  def loss_fn(p, xb, yb):
    logits = (xb @ p["w"] + p["b"]).reshape(xb.shape[0], -1, num_classes)
    valid = yb >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(yb, 0))
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1) + l2 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def step(p, s, xb, yb):
    loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(seed)
  bs = min(batch_size, n)
  order, pos, loss = rng.permutation(n), 0, jnp.nan
  for _ in range(steps):
    if pos + bs > n:
      order, pos = rng.permutation(n), 0
    idx = order[pos:pos + bs]
    pos += bs
    params, state, loss = step(params, state, jnp.asarray(x[idx]), jnp.asarray(labels[idx].astype(np.int32)))
  nan = jnp.full((k,), jnp.nan, jnp.float32)
  fit = ridge.RidgeFit(weights=params["w"], bias=params["b"], alpha=nan, cv_mse=nan[None],
                       alphas=jnp.full((1,), jnp.nan, jnp.float32), target_mean=nan,
                       fitted=jnp.ones((k,), bool), edge=jnp.zeros((k,), jnp.int8),
                       float64=jnp.zeros((k,), bool), dual=jnp.asarray(False))
  return fit, float(loss)


def probabilities(fit: ridge.RidgeFit, x: Any, num_classes: int) -> np.ndarray:
  """Softmax probabilities (n, groups, C) of a trained probe."""
  logits = np.asarray(ridge.predict(fit, x)).reshape(np.shape(x)[0], -1, num_classes)
  return np.asarray(jax.nn.softmax(logits, -1))
