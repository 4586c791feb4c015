"""jaxdistill/losses/token.py: chunked and vocabulary-sharded paths equal the naive losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import AxisType, Mesh
from scipy.special import softmax

from jaxdistill import losses
from jaxdistill.errors import ConfigError
from jaxdistill.losses import token

RNG = np.random.default_rng(1)
B, T, V, D_S, D_T = 2, 7, 16, 6, 10  # B * T = 14 tokens: chunk_size 4 pads, 7 divides
ZS = (2.0 * RNG.standard_normal((B, T, V))).astype(np.float32)
ZT = (2.0 * RNG.standard_normal((B, T, V))).astype(np.float32)
MASK = RNG.random((B, T)) < 0.7
MASK[0, 0], MASK[1, -1] = True, False
H_S = RNG.standard_normal((B, T, D_S)).astype(np.float32)
H_T = RNG.standard_normal((B, T, D_T)).astype(np.float32)
W_S = RNG.standard_normal((D_S, V)).astype(np.float32)
W_T = RNG.standard_normal((D_T, V)).astype(np.float32)
BIAS_S = RNG.standard_normal(V).astype(np.float32)

CASES = [('kd', {'temperature': 2.0}), ('forward_kl', {}), ('reverse_kl', {}),
         ('jsd', {'beta': 0.3})]
WEIGHTS = RNG.standard_normal(len(CASES)).astype(np.float32)


def naive(zs, zt):
    """Every case on full logits, masked mean per loss: ``[len(CASES)]``."""
    return jnp.stack([losses.token_mean(losses.get(loss)(zs, zt, where=MASK, **hyper), MASK)
                      for loss, hyper in CASES])


def value_and_grad(fn, *args, argnums=0):
    """Per-case values, and the gradient of their random projection (one backward pass)."""
    def projected(*a):
        values = fn(*a)
        return jnp.vdot(WEIGHTS, values), values

    (_, values), grad = jax.jit(jax.value_and_grad(projected, argnums, has_aux=True))(*args)
    return values, grad


@functools.cache
def naive_logits_result():
    return value_and_grad(naive, ZS, ZT)


def assert_same(got, want):
    """Values and gradients agree to 1e-5."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


class ChunkedTest(parameterized.TestCase):

    @parameterized.parameters(4, 7)  # 14 tokens: padded to 4 chunks of 4, or 2 chunks of 7
    def test_logits_path_equals_naive(self, chunk_size):
        def chunked(zs, zt):
            return jnp.stack([
                losses.token_mean(token.chunked_token_loss(
                    zs, zt, loss=loss, where=MASK, chunk_size=chunk_size, **hyper), MASK)
                for loss, hyper in CASES])

        assert_same(value_and_grad(chunked, ZS, ZT), naive_logits_result())

    def test_per_token_outputs_sum_bf16_and_traced_temperature(self):
        def fn(zs, zt, t):  # t traced, as a temperature schedule is under jit
            chunked = functools.partial(token.chunked_token_loss, loss='jsd',
                                        temperature=t, chunk_size=4)
            return (chunked(zs, zt, where=MASK), chunked(zs, zt, where=MASK, reduction='sum'),
                    chunked(zs.astype(jnp.bfloat16), zt.astype(jnp.bfloat16)),
                    losses.jsd(zs, zt, where=MASK, temperature=t))

        per_token, total, bf16, want = jax.jit(fn)(ZS, ZT, 1.5)
        self.assertEqual(per_token.shape, (B, T))
        np.testing.assert_allclose(per_token, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(per_token[~MASK], 0.0)
        np.testing.assert_allclose(total, want.sum(), rtol=1e-6)
        self.assertEqual(bf16.dtype, jnp.float32)

    def test_hidden_path_equals_naive(self):
        def chunked(h_s, w_s, b_s):
            return jnp.stack([
                losses.token_mean(token.chunked_kd_from_hidden(
                    h_s, w_s, H_T, W_T, loss=loss, where=MASK, chunk_size=4, student_bias=b_s,
                    **hyper), MASK)
                for loss, hyper in CASES])

        def reference(h_s, w_s, b_s):
            return naive(h_s @ w_s + b_s, H_T @ W_T)

        args = (H_S, W_S, BIAS_S)
        assert_same(value_and_grad(chunked, *args, argnums=(0, 1, 2)),
                    value_and_grad(reference, *args, argnums=(0, 1, 2)))

    def test_memory_does_not_grow_with_tokens(self):
        """Compiled temp memory: chunked stays flat in B*T, the naive path grows with it."""
        d, v, chunk = 32, 2048, 128

        def temp_bytes(fn, n):
            h = jax.ShapeDtypeStruct((n, d), jnp.float32)
            w = jax.ShapeDtypeStruct((d, v), jnp.float32)
            grad = jax.grad(lambda hs, ws, ht, wt: jnp.sum(fn(hs, ws, ht, wt)), (0, 1))
            return jax.jit(grad).lower(h, w, h, w).compile().memory_analysis().temp_size_in_bytes

        def chunked(hs, ws, ht, wt):
            return token.chunked_kd_from_hidden(hs, ws, ht, wt, chunk_size=chunk)

        def direct(hs, ws, ht, wt):
            return losses.kd(hs @ ws, ht @ wt)

        small, large = 4 * chunk, 16 * chunk
        logits_bytes = large * v * 4
        self.assertLess(temp_bytes(chunked, large), 1.5 * temp_bytes(chunked, small))
        self.assertLess(temp_bytes(chunked, large), logits_bytes / 2)
        self.assertGreater(temp_bytes(direct, large), 2 * logits_bytes)


class ShardedTest(parameterized.TestCase):

    def setUp(self):
        super().setUp()
        if jax.device_count() < 2:
            self.skipTest('needs >= 2 devices: run with '
                          'XLA_FLAGS=--xla_force_host_platform_device_count=8')

    def mesh(self, axis_type=AxisType.Auto):
        """The package's mesh layout, ('data', 'fsdp', 'tensor'), with the vocabulary split."""
        n = jax.device_count()
        tensor = 4 if n % 4 == 0 else n
        devices = np.asarray(jax.devices()).reshape(n // tensor, 1, tensor)
        return Mesh(devices, ('data', 'fsdp', 'tensor'), axis_types=(axis_type,) * 3)

    def sharded(self, mesh, token_axis=('data', 'fsdp')):
        def fn(zs, zt):
            return jnp.stack([
                losses.token_mean(token.vocab_sharded_loss(
                    zs, zt, mesh=mesh, token_axis=token_axis, loss=loss, where=MASK, **hyper),
                    MASK)
                for loss, hyper in CASES])
        return fn

    def test_equals_naive(self):
        assert_same(value_and_grad(self.sharded(self.mesh()), ZS, ZT), naive_logits_result())

    def test_explicit_mesh_equals_naive(self):
        mesh = self.mesh(AxisType.Explicit)
        with jax.set_mesh(mesh):
            got = value_and_grad(self.sharded(mesh, token_axis=None), ZS, ZT)
        assert_same(got, naive_logits_result())

    def test_never_gathers_logits_and_takes_traced_temperature(self):
        def total(zs, t):  # t traced, as a temperature schedule is under jit
            return token.vocab_sharded_loss(zs, ZT, mesh=self.mesh(), temperature=t,
                                                   where=MASK, reduction='sum')

        compiled = jax.jit(jax.value_and_grad(total)).lower(ZS, 1.5).compile()
        hlo = compiled.as_text()
        self.assertNotIn('all-gather', hlo)
        self.assertIn('all-reduce', hlo)
        value, grad = compiled(ZS, 1.5)
        p_s, p_t = softmax(ZS / 1.5, axis=-1), softmax(ZT / 1.5, axis=-1)
        want = 1.5**2 * np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1)
        np.testing.assert_allclose(value, np.sum(want * MASK), rtol=1e-5)
        self.assertTrue(np.all(np.isfinite(grad)))

    def test_vocab_not_divisible(self):
        with pytest.raises(ConfigError, match=r"vocab 15 is not divisible by mesh axis 'tensor'"):
            token.vocab_sharded_loss(ZS[..., :15], ZT[..., :15], mesh=self.mesh())
        with pytest.raises(ConfigError, match=r"vocab_axis='model' is not a mesh axis"):
            token.vocab_sharded_loss(ZS, ZT, mesh=self.mesh(), vocab_axis='model')


class ErrorsTest(parameterized.TestCase):

    def test_bad_arguments_raise_config_error(self):
        cases = [
            (dict(loss='dkd'), r"loss 'dkd' has no chunked/vocab-sharded form"),
            (dict(loss='kdd'), r"unknown loss 'kdd': did you mean 'kd'"),
            (dict(temperature=0.0), r'temperature=0.0 .*must be > 0'),
            (dict(loss='jsd', beta=1.5), r'beta=1.5 .*\[0, 1\]'),
            (dict(chunk_size=0), r'chunk_size=0 is invalid'),
            (dict(reduction='mean'), r"reduction='mean' is invalid"),
            (dict(where=np.ones((B, T, V), bool)), r'where shape .* token mask'),
        ]
        for kwargs, match in cases:
            with pytest.raises(ConfigError, match=match):
                token.chunked_token_loss(ZS, ZT, **kwargs)
        with pytest.raises(ConfigError, match=r'student vocab 16 != teacher vocab 15'):
            token.chunked_token_loss(ZS, ZT[..., :15])
        with pytest.raises(ConfigError, match=r'student_hidden .* does not match student_w'):
            token.chunked_kd_from_hidden(H_S, W_T, H_T, W_T)
        with pytest.raises(ConfigError, match=r'student vocab 16 != teacher vocab 15'):
            token.chunked_kd_from_hidden(H_S, W_S, H_T, W_T[:, :15])


def test_the_old_module_name_still_imports():
    """README and docs name `jaxdistill.token_losses`: the same functions under that name."""
    from jaxdistill import token_losses

    for name in ('TOKEN_LOSSES', 'chunked_token_loss', 'chunked_kd_from_hidden',
                 'vocab_sharded_loss'):
        assert getattr(token_losses, name) is getattr(token, name)


def test_a_registered_pointwise_loss_gets_the_memory_paths():
    """A loss registered with per-entry ``terms`` is chunked like the built-in ones."""
    def half_tvd_terms(logp_s, p_s, logp_t, p_t, *, temperature):
        del temperature
        return 0.25 * jnp.abs(p_t - p_s)

    def half_tvd(student_logits, teacher_logits, *, temperature=1.0, where=None, axis=-1):
        return 0.5 * losses.tvd(student_logits, teacher_logits, temperature=temperature,
                                where=where, axis=axis)

    losses.register('half_tvd', half_tvd, terms=half_tvd_terms)
    try:
        got = token.chunked_token_loss(ZS, ZT, loss='half_tvd', where=MASK, chunk_size=4)
        np.testing.assert_allclose(got, half_tvd(ZS, ZT, where=MASK), rtol=1e-6, atol=1e-7)
    finally:
        losses.unregister('half_tvd')
    with pytest.raises(ConfigError, match="unknown loss 'half_tvd'"):
        token.chunked_token_loss(ZS, ZT, loss='half_tvd')
