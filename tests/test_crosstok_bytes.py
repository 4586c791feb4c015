"""`byte_kl`: the prefix-trie projection against a brute-force float64 reference on hand-made
vocabularies; the host rows against the text; masks, gradients, jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdistill.crosstok import align
from jaxdistill.crosstok import bytes as xb

# teacher: 0 pad, 1 EOS, then strings (a prefix of another, shared prefixes, a unicode one)
T_SURF = [None, None, b'a', b'ab', b'abc', b'b', b'ba', b' ', b' a', 'é'.encode(), b'\xc3',
          b'c', b'\xff', b'\xff\x01']
T_EOS = 1
# student: byte-level (0 pad, 1 BOS, 2 EOS, then the 256 bytes)
S_SURF = [None, None, None] + [bytes([b]) for b in range(256)]
S_EOS = 2


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _teacher_ref(p, prefix: bytes, has=None):
    """Brute force: p(next byte | the current token starts with ``prefix``), float64."""
    out = np.zeros(xb.CATEGORIES)
    for i, s in enumerate(T_SURF):
        if s is None:
            if not prefix:
                out[xb.EOS if i == T_EOS else xb.OTHER] += p[i]
        elif s.startswith(prefix) and len(s) > len(prefix):
            out[s[len(prefix)]] += p[i]
    for i in range(len(T_SURF), len(p)):  # model ids past the tokenizer
        if not prefix:
            out[xb.OTHER] += p[i]
    if has is not None:
        out = np.where(has, out, 0.0)
    return out / out.sum()


def _student_ref(p, surf=S_SURF, eos=S_EOS):
    out = np.zeros(xb.CATEGORIES)
    for i, q in enumerate(p):
        s = surf[i] if i < len(surf) else None
        out[s[0] if s else (xb.EOS if i == eos else xb.OTHER)] += q
    return out


def _vocab():
    teacher_vocab, student_vocab = len(T_SURF) + 2, len(S_SURF)  # 2 ids past the tokenizer
    trie = xb.prefix_trie(T_SURF, T_EOS)
    cats = xb.student_categories(S_SURF, S_EOS, student_vocab)
    return trie, xb.byte_vocab(trie, cats, teacher_vocab)


PREFIXES = [(4, 0), (4, 1), (4, 2), (3, 1), (6, 1), (8, 1), (9, 1), (13, 1), (1, 0), (2, 0)]


def test_teacher_projection_matches_brute_force():
    trie, v = _vocab()
    rng = np.random.default_rng(0)
    z = rng.normal(size=(len(PREFIXES), v.rank.shape[0])).astype(np.float32) * 2
    ids, depth = np.array([i for i, _ in PREFIXES]), np.array([k for _, k in PREFIXES])
    lo, hi = xb.node_ranges(trie, ids, depth)
    got = np.exp(np.asarray(jax.jit(lambda *a: xb.teacher_next_byte(*a, v))(z, depth, lo, hi)))
    for r, (i, k) in enumerate(PREFIXES):
        ref = _teacher_ref(_softmax(z[r]), T_SURF[i][:k] if T_SURF[i] else b'', v.student_has)
        np.testing.assert_allclose(got[r], ref, rtol=1e-5, atol=1e-7, err_msg=str((i, k)))


def test_prefix_ranges_are_the_extending_tokens():
    trie, _ = _vocab()
    for i, s in enumerate(T_SURF):
        for k in range(len(s) if s else 1):
            lo, hi = xb.node_ranges(trie, np.array([i]), np.array([k]))
            inside = {j for j in range(len(T_SURF)) if lo[0] <= trie.rank[j] < hi[0]}
            want = ({j for j, t in enumerate(T_SURF) if t and t.startswith(s[:k])} if k
                    else set(range(len(T_SURF))))
            assert inside == want, (s, k)


def test_student_grouping_and_a_multibyte_student():
    _, v = _vocab()
    z = np.random.default_rng(1).normal(size=(3, len(S_SURF))).astype(np.float32) * 3
    got = np.exp(np.asarray(xb.student_next_byte(z, v)))
    np.testing.assert_allclose(got, np.stack([_student_ref(_softmax(r)) for r in z]), rtol=1e-5,
                               atol=1e-7)
    # a BPE-like student: tokens of several bytes grouped by their first byte
    surf = [None, None, b'a', b'ab', b'b', b'bb', b'\xc3\xa9']
    cats = xb.student_categories(surf, 1, 8)  # one id past the tokenizer
    sv = xb.byte_vocab(xb.prefix_trie(T_SURF, T_EOS), cats, len(T_SURF))
    z = np.random.default_rng(2).normal(size=(8,)).astype(np.float32)
    got = np.exp(np.asarray(xb.student_next_byte(z, sv)))
    np.testing.assert_allclose(got, _student_ref(_softmax(z), surf, 1), rtol=1e-5, atol=1e-7)
    assert not sv.student_has[ord('c')] and sv.student_has[0xc3]


@pytest.mark.parametrize('t', [1.0, 2.0])
def test_byte_kl_value_mask_grad(t):
    trie, v = _vocab()
    rng = np.random.default_rng(3)
    n = len(PREFIXES)
    zt = rng.normal(size=(n, v.rank.shape[0])).astype(np.float32)
    zs = rng.normal(size=(n, len(S_SURF))).astype(np.float32)
    ids, depth = np.array([i for i, _ in PREFIXES]), np.array([k for _, k in PREFIXES])
    lo, hi = xb.node_ranges(trie, ids, depth)
    where = np.arange(n) % 3 != 1
    got = np.asarray(xb.byte_kl(zs, zt, depth, lo, hi, v, temperature=t, where=where))
    for r, (i, k) in enumerate(PREFIXES):
        pt = _teacher_ref(_softmax(zt[r] / t), T_SURF[i][:k] if T_SURF[i] else b'',
                          v.student_has)
        ps = _student_ref(_softmax(zs[r] / t))
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = t * t * np.sum(np.where(pt > 0, pt * (np.log(pt) - np.log(ps)), 0.0))
        want = ref if where[r] else 0.0
        np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-6)
    # the student is the only thing differentiated; masked positions give zero gradient
    f = lambda s: xb.byte_kl(s, zt, depth, lo, hi, v, temperature=t, where=where).sum()
    check_grads(f, (zs,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)
    g = np.asarray(jax.grad(f)(zs))
    assert np.all(g[~where] == 0) and np.all(np.isfinite(g))
    # a byte-level student that *is* the teacher's next-byte distribution has KL 0
    pt = np.exp(np.asarray(xb.teacher_next_byte(zt, depth, lo, hi, v)))
    zs_eq = np.log(np.maximum(np.concatenate(
        [np.stack([pt[:, xb.OTHER] / 2, pt[:, xb.OTHER] / 2, pt[:, xb.EOS]], 1),
         pt[:, :256]], 1), 1e-30)).astype(np.float32)
    assert float(jnp.max(xb.byte_kl(zs_eq, zt, depth, lo, hi, v))) < 1e-5


def test_extreme_logits_are_finite():
    trie, v = _vocab()
    zt = np.full((2, v.rank.shape[0]), -1e4, np.float32)
    zt[:, 4] = 1e4  # all teacher mass on 'abc'
    zs = np.full((2, len(S_SURF)), -1e4, np.float32)
    zs[:, 3 + ord('z')] = 1e4  # the student sure of another byte
    lo, hi = xb.node_ranges(trie, np.array([4, 4]), np.array([0, 2]))
    f = lambda s: xb.byte_kl(s, zt, np.array([0, 2]), lo, hi, v).sum()
    assert np.isfinite(float(f(zs))) and float(f(zs)) > 1e3
    assert np.all(np.isfinite(np.asarray(jax.grad(f)(zs))))


def test_rows_point_at_the_teacher_token_holding_each_byte():
    """On real text: the teacher token at ``xt_byte_pos + 1`` holds the student's next byte
    at ``xt_byte_depth``, and the bytes before it are the text's (unicode, whitespace)."""
    from jaxdistill.data.tokenizer import BPETokenizer, ByteTokenizer

    docs = ['the cat sat on the mat.  naïve café — ünïcode!', 'ab  ab\tab\n\nabc', 'x']
    t_tok = BPETokenizer.train(docs * 20, 300)
    s_tok = ByteTokenizer()
    s = align.encode_stream(s_tok, docs, 'data.tokenizer')
    t = align.encode_stream(t_tok, docs)
    surf = align.vocab_surfaces(t_tok)
    trie = xb.prefix_trie(surf, t_tok.eos_id)
    al = align.Aligner(s, t, 16, 12, align.vocab_map(s_tok, t_tok), t_tok.pad_id, trie=trie)
    rows = np.arange(al.num_rows)
    r = al.rows(rows)
    text = b''.join(b'\x00' + d.encode() + b'\x00' for d in docs)  # virtual units
    checked = 0
    for b, row in enumerate(rows):
        for p in range(16):
            if not r['xt_byte'][b, p]:
                continue
            tid = r['teacher_targets'][b, r['xt_byte_pos'][b, p]]
            k = r['xt_byte_depth'][b, p]
            g = row * 16 + p + 1
            x = s.start[g]
            tok = surf[tid]
            if tok is not None:  # the teacher token's first k bytes end just before x
                assert text[x - k:x] == tok[:k] and tok[k] == text[x], (b, p)
            lo, hi = r['xt_byte_lo'][b, p], r['xt_byte_hi'][b, p]
            assert lo <= trie.rank[tid] < hi
            checked += 1
    # all but the first teacher token of each row and those cut by a row end (16-byte rows)
    assert checked > 0.6 * (len(s.ids) - 1)

