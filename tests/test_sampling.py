"""jaxdistill/models/sampling.py: the KV cache against full forwards, and the sampling filters."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.errors import ConfigError, DataError
from jaxdistill.models.decoder import Decoder, init_cache
from jaxdistill.models.sampling import generate, sample_logits
from tests.test_decoder import CFG, random_params

N = 8  # new tokens


@pytest.fixture(scope='module')
def lm():
    model = Decoder(**CFG)
    return model, random_params(model, seed=3)


@functools.cache
def full_forward(model):
    return jax.jit(lambda p, t: model.apply({'params': p}, t))


def prompts_and_lengths():
    prompts = jax.random.randint(jax.random.key(7), (3, 6), 3, CFG['vocab_size'])
    return prompts, jnp.array([6, 3, 1])


@pytest.mark.parametrize('scan', [False, True])
def test_cached_decode_equals_full_forward(lm, scan):
    model, params = lm
    if scan:  # same weights, stacked for nn.scan
        model = Decoder(**CFG, scan_layers=True)
        params = dict(nn.unbox(params))
        layers = [params.pop(f'layer_{i}') for i in range(CFG['num_layers'])]
        params['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, CFG['vocab_size'])
    full = full_forward(model)(params, tokens)

    @jax.jit
    def decode(cache, chunk):
        logits, out = model.apply({'params': params, 'cache': cache}, chunk, decode=True,
                                  mutable=['cache'])
        return logits, out['cache']

    # Prefill 5 positions at once, then one token per call, in a cache longer than needed.
    cache = init_cache(model, 2, 24)
    logits, cache = decode(cache, tokens[:, :5])
    steps = [logits]
    for t in range(5, 16):
        logits, cache = decode(cache, tokens[:, t:t + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
    np.testing.assert_array_equal(cache['index'], [16, 16])


def test_greedy_is_argmax_of_full_forward(lm):
    model, params = lm
    prompts, lengths = prompts_and_lengths()
    tokens, mask = generate(model, params, prompts, lengths, N, jax.random.key(0), greedy=True)
    assert tokens.shape == (3, 6 + N) and mask.shape == (3, 6 + N)
    full = np.asarray(full_forward(model)(params, tokens))
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    for b, length in enumerate(np.asarray(lengths)):
        np.testing.assert_array_equal(tokens[b, :length], prompts[b, :length])
        np.testing.assert_array_equal(np.flatnonzero(mask[b]), np.arange(length, length + N))
        np.testing.assert_array_equal(tokens[b, length:length + N],
                                      full[b, length - 1:length + N - 1].argmax(-1))
        assert not tokens[b, length + N:].any()


def test_top_k_1_is_greedy_and_rng_matters(lm):
    model, params = lm
    prompts, lengths = prompts_and_lengths()
    run = functools.partial(generate, model, params, prompts, lengths, N)
    greedy, _ = run(jax.random.key(0), greedy=True)
    np.testing.assert_array_equal(run(jax.random.key(5), top_k=1)[0], greedy)
    # A nucleus below the top token's probability keeps only that token (traced top_p path).
    np.testing.assert_array_equal(run(jax.random.key(6), top_p=1e-6)[0], greedy)
    a, _ = run(jax.random.key(1), temperature=2.0)
    np.testing.assert_array_equal(a, run(jax.random.key(1), temperature=2.0)[0])
    assert not np.array_equal(a, run(jax.random.key(2), temperature=2.0)[0])


def test_eos_stops_a_row(lm):
    model, params = lm
    prompts, lengths = prompts_and_lengths()
    greedy, _ = generate(model, params, prompts, lengths, N, jax.random.key(0), greedy=True)
    eos = int(greedy[1, 3 + 2])  # row 1's third generated token
    tokens, mask = generate(model, params, prompts, lengths, N, jax.random.key(0), greedy=True,
                            eos_id=eos)
    for b, length in enumerate(np.asarray(lengths)):
        gen = np.asarray(greedy[b, length:length + N])
        stop = int(np.argmax(gen == eos)) + 1 if (gen == eos).any() else N
        np.testing.assert_array_equal(np.flatnonzero(mask[b]), np.arange(length, length + stop))
        np.testing.assert_array_equal(tokens[b, length:length + stop], gen[:stop])
        assert not np.asarray(tokens[b, length + stop:]).any()
    assert int(mask[1].sum()) <= 3


def test_top_k_support():
    logits = jnp.log(jnp.array([0.05, 0.4, 0.1, 0.3, 0.15]))
    draws = jax.jit(jax.vmap(lambda k: sample_logits(logits, k, top_k=3)))(
        jax.random.split(jax.random.key(0), 4000))
    assert set(np.unique(draws).tolist()) == {1, 3, 4}
    freq = np.bincount(np.asarray(draws), minlength=5) / 4000
    np.testing.assert_allclose(freq[[1, 3, 4]], np.array([0.4, 0.3, 0.15]) / 0.85, atol=0.03)


def test_top_p_support():
    # Sorted probabilities 0.5, 0.3, 0.15, 0.05: the nucleus for 0.7 is {0.5, 0.3} (0.5 < 0.7,
    # 0.8 >= 0.7); for 0.85 it also takes 0.15.
    logits = jnp.log(jnp.array([0.15, 0.5, 0.05, 0.3]))
    keys = jax.random.split(jax.random.key(1), 4000)
    for top_p, support, probs in ((0.7, [1, 3], [0.5, 0.3]), (0.85, [0, 1, 3], [0.15, 0.5, 0.3])):
        draws = np.asarray(jax.vmap(lambda k, p=top_p: sample_logits(logits, k, top_p=p))(keys))
        assert sorted(np.unique(draws).tolist()) == support
        freq = np.bincount(draws, minlength=4)[support] / 4000
        np.testing.assert_allclose(freq, np.array(probs) / sum(probs), atol=0.03)
    # Temperature 1/4 samples from p^4 / sum(p^4): the mode's share rises from 0.5 to 0.88.
    temp = jax.vmap(lambda k: sample_logits(logits, k, temperature=0.25))(keys)
    p4 = np.array([0.15, 0.5, 0.05, 0.3]) ** 4
    np.testing.assert_allclose(np.mean(np.asarray(temp) == 1), p4[1] / p4.sum(), atol=0.03)


def test_bad_arguments_are_one_line_errors(lm):
    model, params = lm
    prompts, lengths = prompts_and_lengths()
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match='max_new_tokens=59'):
        generate(model, params, prompts, lengths, 59, key)  # 6 + 59 > max_len 64
    with pytest.raises(ConfigError, match='temperature=0'):
        generate(model, params, prompts, lengths, N, key, temperature=0)
    with pytest.raises(ConfigError, match='top_p=0'):
        generate(model, params, prompts, lengths, N, key, top_p=0)
    with pytest.raises(DataError, match='prompt_lengths'):
        generate(model, params, prompts, jnp.array([6, 0, 1]), N, key)
