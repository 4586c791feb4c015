"""A keyed green-list watermark in the teacher's sampling, and its radioactivity detector.

**Watermark** (Kirchenbauer et al. 2023, "A Watermark for Large Language Models", the
"soft" scheme with a context of one token): before sampling token ``x_i``, the logit of
every token ``v`` on the *green list* of the previous token ``x_{i-1}`` gets ``+delta``.
Token ``v`` is green after ``h`` when ``hash(key, h, v) < gamma * 2^32``: each (context,
token) pair is green independently with probability ``gamma`` for anyone without the key.
Switched on with ``distill.sampling.watermark.key`` (0: off) for the teacher's samples of
``distill.teacher_signal='sequence'``.

**Detection** (Sander et al. 2024, "Watermarking Makes Language Models Radioactive"): a
student trained on watermarked text inherits a preference for green tokens.

* `detect_text`: the suspect's generated tokens; each distinct (previous token, token)
  pair is scored once (repeated pairs are not independent draws: de-duplication keeps the
  null exact), ``G`` green among ``n`` pairs; ``z = (G - gamma n) / sqrt(n gamma (1 -
  gamma))`` and the exact binomial tail ``p = P(Binomial(n, gamma) >= G)``.
* `detect_distribution`: the suspect's next-token probabilities (an open model). For each
  distinct previous token ``h`` the mean next-token distribution ``q_h`` over the contexts
  ending in ``h`` puts mass ``m_h`` on ``h``'s green list; with no key, ``m_h`` has mean
  ``gamma`` and variance ``gamma (1 - gamma) sum_v q_h(v)^2``, independently over ``h`` (every
  ``h`` has its own list), so ``z = sum_h (m_h - gamma) / sqrt(sum_h var_h)`` is standard
  normal under the null; ``p`` is its upper tail.

The hash is integer arithmetic on uint32 that numpy and jax compute identically.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxdistill.errors import ConfigError

_C1, _C2, _C3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D


def _fmix(h, xp):
    """murmur3's 32-bit finaliser (every input bit affects every output bit)."""
    h = h ^ (h >> xp.uint32(16))
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> xp.uint32(13))
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> xp.uint32(16))


def green(prev, vocab_size: int, key: int, gamma: float, xp=np):
    """``[..., V]`` bool: is token ``v`` green after token ``prev [...]``? (numpy or jax.numpy
    as ``xp``; the same bits either way)."""
    with np.errstate(over='ignore'):
        k = _fmix(xp.asarray(key, xp.uint32) * xp.uint32(_C1), xp)
        h = _fmix(xp.asarray(prev).astype(xp.uint32)[..., None] * xp.uint32(_C2) + k, xp)
        v = xp.arange(vocab_size, dtype=xp.uint32)
        h = _fmix(v * xp.uint32(_C3) + h, xp)
    return h < xp.uint32(min(int(gamma * 2 ** 32), 2 ** 32 - 1))


def check(cfg, key: str = 'distill.sampling.watermark') -> None:
    """Config-time checks of a watermark block ``{key, gamma, delta}``."""
    if not isinstance(cfg.key, int) or cfg.key < 0:
        raise ConfigError(f'{key}.key={cfg.key!r} must be an int >= 0 (0: no watermark)')
    if not 0 < cfg.gamma < 1:
        raise ConfigError(f'{key}.gamma={cfg.gamma} must be in (0, 1) (the green share, '
                          'e.g. 0.25)')
    if not cfg.delta >= 0:
        raise ConfigError(f'{key}.delta={cfg.delta} must be >= 0 (the green logit bias, e.g. 2)')


def spec(cfg) -> tuple[int, float, float] | None:
    """``(key, gamma, delta)`` of a watermark block, or None when it is off (key 0)."""
    if cfg is None or not cfg.key:
        return None
    return int(cfg.key), float(cfg.gamma), float(cfg.delta)


def bias(logits, prev, watermark: tuple[int, float, float] | None):
    """``logits [B, V]`` with ``+delta`` on the green list of ``prev [B]`` (jax)."""
    if watermark is None:
        return logits
    import jax.numpy as jnp

    key, gamma, delta = watermark
    mask = green(prev, logits.shape[-1], key, gamma, xp=jnp)
    return logits.astype(jnp.float32) + delta * mask.astype(jnp.float32)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def detect_text(tokens: np.ndarray, scored: np.ndarray, key: int, gamma: float,
                vocab_size: int) -> dict[str, Any]:
    """Scores ``tokens [B, L]`` at positions ``scored [B, L]`` (position 0 never: it has no
    previous token); each distinct (previous, token) pair once."""
    from scipy import stats as sps

    tokens = np.asarray(tokens, np.int64)
    scored = np.asarray(scored, bool).copy()
    scored[:, 0] = False
    prev, cur = tokens[:, :-1][scored[:, 1:]], tokens[:, 1:][scored[:, 1:]]
    pairs = np.unique(np.stack([prev, cur], 1), axis=0) if len(prev) else np.zeros((0, 2), int)
    n = len(pairs)
    if n == 0:
        return {'z': float('nan'), 'p_value': 1.0, 'green': 0, 'scored': 0, 'tokens': 0}
    is_green = green(pairs[:, 0], vocab_size, key, gamma)[np.arange(n), pairs[:, 1]]
    g = int(is_green.sum())
    z = (g - gamma * n) / math.sqrt(n * gamma * (1 - gamma))
    return {'z': float(z), 'p_value': float(sps.binom.sf(g - 1, n, gamma)), 'green': g,
            'scored': n, 'tokens': int(len(prev)), 'green_fraction': g / n}


def detect_distribution(prev: np.ndarray, probs: np.ndarray, key: int,
                        gamma: float) -> dict[str, Any]:
    """Scores next-token distributions ``probs [N, V]`` after tokens ``prev [N]``."""
    prev = np.asarray(prev, np.int64)
    probs = np.asarray(probs, np.float64)
    hs, inverse = np.unique(prev, return_inverse=True)
    q = np.zeros((len(hs), probs.shape[-1]))
    np.add.at(q, inverse, probs)
    q /= np.bincount(inverse)[:, None]
    mass = np.sum(q * green(hs, probs.shape[-1], key, gamma), -1)
    var = gamma * (1 - gamma) * np.sum(q * q, -1)
    z = float(np.sum(mass - gamma) / math.sqrt(np.sum(var)))
    return {'z': z, 'p_value': _normal_sf(z), 'contexts': int(len(hs)),
            'positions': int(len(prev)), 'green_mass': float(np.mean(mass))}
