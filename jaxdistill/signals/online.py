"""``teacher_signal='online'`` (the default): the frozen teacher runs inside every step.

The teacher sees the student's own batch (after the task's ``prepare``, so with mixup it
scores the same mixed images) under `jax.lax.stop_gradient`; nothing is stored. It is
`BaseSignal`'s behaviour, and the one signal that distils every task and any ensemble.
"""

from __future__ import annotations

from jaxdistill.signals.base import BaseSignal


class Online(BaseSignal):
    """The teacher in the step: no config section, rows, hook or provenance of its own."""

    name = 'online'

