"""Gathers and means over aligned positions, shared by the cross-tokenizer losses
(`crosstok.losses`: ``uld``, ``aligned_kl``; `crosstok.bytes`: ``byte_kl``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def batch_mean(value: Array, mask: Array) -> Array:
    """Sum over valid entries / their count in the global batch (0 when there are none)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(value * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def at_positions(teacher: Array, pos: Array) -> Array:
    """``[B, U, V]`` teacher values gathered at ``[B, T]`` positions -> ``[B, T, V]``."""
    return jnp.take_along_axis(teacher, pos[..., None].astype(jnp.int32), axis=1)
