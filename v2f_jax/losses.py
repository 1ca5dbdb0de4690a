"""Named loss terms, as the reference computes them (means over the batch, float32)."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def bce(logits, target: float):
    """Binary cross-entropy of sigmoid(logits) against a constant 0/1 target. logits `[B]`."""
    logits = logits.astype(jnp.float32)
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def xent(logits, labels):
    """Softmax cross-entropy against integer labels. logits `[B, K]`, labels `[B]`."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    ).mean()


def accuracy(logits, labels):
    return (jnp.argmax(logits, -1) == labels).mean()
