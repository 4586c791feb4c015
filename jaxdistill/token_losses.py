"""Moved to `jaxdistill.losses.token`; this name keeps working (README, docs, user code)."""

from jaxdistill.losses.token import (  # noqa: F401
    TOKEN_LOSSES,
    chunked_kd_from_hidden,
    chunked_token_loss,
    vocab_sharded_loss,
)
