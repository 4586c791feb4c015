"""Reduction: per-token losses to one number, over the valid tokens of the global batch."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxdistill.losses.core import upcast


def token_mean(per_token: ArrayLike, where: ArrayLike | None = None, *,
               normalizer: ArrayLike | None = None) -> Array:
    r"""Sum over valid tokens divided by the number of valid tokens, in float32.

    ``sum(per_token[where]) / max(count, 1)`` with ``count = sum(where)``, or divided by
    ``normalizer`` when given. Padding never enters the denominator, and an all-padding batch
    gives 0, not NaN.

    Global normalisation: call it on the *global* batch. Under ``jax.jit`` with arrays sharded
    over a mesh (``jax.Array`` with a ``NamedSharding``), the plain ``sum / count`` here *is*
    the global one: XLA inserts the cross-device reductions, so no per-device mean (which
    would weight devices with more padding more) is ever taken. With gradient accumulation,
    pass ``normalizer`` = the valid-token count of the whole accumulation window to every
    micro-batch and *sum* the results (or their gradients): that equals the full-batch mean
    exactly, however the window is split.

    Args:
      per_token: per-token losses, e.g. ``[B, T]``.
      where: boolean mask broadcastable to ``per_token``; None counts every entry.
      normalizer: explicit denominator (a token count), e.g. the window's total.

    Returns:
      A float32 scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
      >>> valid = jnp.array([[True, True, False], [True, False, False]])
      >>> print(f'{losses.token_mean(per_token, valid):.4f}')  # (1 + 2 + 4) / 3
      2.3333
      >>> print(losses.token_mean(per_token, valid, normalizer=7))  # a window of 7 tokens
      1.0
    """
    x = upcast(per_token)
    if where is None:
        total, count = jnp.sum(x), x.size
    else:
        mask = jnp.broadcast_to(jnp.asarray(where, bool), x.shape)
        total, count = jnp.sum(jnp.where(mask, x, 0.0)), jnp.sum(mask)
    denom = count if normalizer is None else normalizer
    return total / jnp.maximum(jnp.asarray(denom, x.dtype), 1.0)


