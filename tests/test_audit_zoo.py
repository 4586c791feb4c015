"""tools/audit_zoo.py: the tuning and reporting zoos share no training seed, anchors have
no student among the suspects, a digits_wide zoo borrows its digits zoo's teachers."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tools'))
import audit_zoo  # noqa: E402


@pytest.mark.parametrize('domain', ['digits', 'lm', 'digits_wide'])
def test_tuning_and_report_zoos_are_disjoint_in_seeds(domain):
    report = audit_zoo.plan(domain, '/z/zoo_x_wide' if domain == 'digits_wide' else '/z/r', 0)
    tune = audit_zoo.plan(domain, '/z/zoo_x_wide' if domain == 'digits_wide' else '/z/t', 100)
    seeds = [{r['seed'] for r in p} for p in (report, tune)]
    assert seeds[0] and not seeds[0] & seeds[1]
    for r in report:  # the seed each run is named with is the one it trains with
        assert f'--config.seed={r["seed"]}' in r['argv']


def test_anchors_train_a_teacher_only_and_no_suspect_descends_from_them():
    runs = audit_zoo.plan('digits', '/z/r', 0)
    anchors = [r for r in runs if r['signal'] == 'anchor']
    assert [r['name'] for r in anchors] == ['X0', 'X1', 'X2', 'X3']
    for r in anchors:  # the one-step student stage is never audited; flags after the common
        assert r['argv'].index('--config.train.steps=1') > r['argv'].index(
            '--config.train.eval_every=0')
    students = [r for r in runs if r['signal'] != 'anchor']
    assert not {r['teacher'] for r in students} & {r['name'] for r in anchors}


def test_wide_zoo_borrows_teachers_and_anchors(tmp_path):
    root = str(tmp_path / 'zoo_digits_wide')
    runs = audit_zoo.plan('digits_wide', root, 0)
    borrowed = [r for r in runs if r.get('borrowed')]
    assert {r['name'] for r in borrowed} == {'A0', 'A1', 'A2', 'A3', 'X0', 'X1', 'X2', 'X3'}
    assert all(r['workdir'].startswith(str(tmp_path / 'zoo_digits') + os.sep)
               for r in borrowed)
    own = [r for r in runs if not r.get('borrowed')]
    assert all('--config.student.kwargs.channels=(16,)' in r['argv'] for r in own)
    assert all(f'--config.teacher.checkpoint={tmp_path / "zoo_digits"}' in ' '.join(r['argv'])
               for r in own)
    with pytest.raises(SystemExit, match='_wide'):
        audit_zoo.plan('digits_wide', str(tmp_path / 'elsewhere'), 0)


def test_watermark_power_ranks_students_among_unwatermarked_models():
    import audit_summary

    # rank p: (1 + #null >= z) / (n + 1)
    assert audit_summary.rank_p(3.0, [0.5, 1.0, 3.0, -1.0]) == pytest.approx(2 / 5)
    assert audit_summary.rank_p(9.0, [0.5, 1.0, 3.0, -1.0]) == pytest.approx(1 / 5)

    def row(name, signal, zt, zd):
        return {'path': f'/z/{name}/student', 'signal': signal, 'seed': 1,
                'text': {'z': zt, 'p_value': 0.5}, 'distribution': {'z': zd, 'p_value': 0.5}}
    rows = [row('A0_sequence_wm_s1', 'sequence_wm', 3.6, 7.4),
            row('A0_sequence_s1', 'sequence', 1.2, 1.5), row('A0', 'online', -0.3, 0.9)]
    lines = audit_summary.watermark_power(rows)
    table = [line for line in lines if line.startswith('| A0_sequence_wm_s1')]
    assert len(table) == 1 and '| 0.333 |' in table[0]  # first of 3: 1/3 in both modes
    assert any('text z: -0.30 to 1.20' in line for line in lines)
    assert audit_summary.watermark_power(rows[1:]) == []  # no watermarked student


def test_probe_draws_scores_the_zoo_like_the_audit():
    import audit_probe_draws
    import numpy as np

    rng = np.random.default_rng(0)
    task = rng.normal(size=(300, 10)) * 2
    own = {t: task + rng.normal(size=task.shape) for t in ('A0', 'A1', 'X0', 'X1')}
    zoo = [dict(path=f'/z/{t}/teacher', teacher=t, role='teacher' if t[0] == 'A' else 'anchor')
           for t in own]
    outs = {m['path']: own[m['teacher']] for m in zoo}
    for t in ('A0', 'A1'):
        for j in range(3):  # students copy their teacher; baselines learn the task alone
            outs[f'/z/{t}_s{j}/student'] = task + 0.6 * (own[t] - task) + rng.normal(
                size=task.shape)
            outs[f'/z/{t}_s{j}/baseline'] = task + rng.normal(size=task.shape)
            zoo += [dict(path=f'/z/{t}_s{j}/student', teacher=t, role='student'),
                    dict(path=f'/z/{t}_s{j}/baseline', teacher='', role='baseline')]
    mask = np.ones(300, bool)
    for statistic in ('teacher_coef', 'teacher_llr'):
        r = audit_probe_draws.draw_summary(zoo, outs, mask, 'logits', statistic)
        assert (r['positives'], r['negatives']) == (6, 18)
        assert r['auc'] == 1.0 and r['median_p_positive'] <= 0.2


def test_out_file_keeps_the_default_audit_and_compare_groups_seeds(tmp_path):
    import json

    import audit_summary

    assert audit_zoo.out_file('/z') == '/z/audit_zoo.json'
    assert audit_zoo.out_file('/z', 'divergent', 'held') == '/z/audit_zoo_divergent_held.json'
    assert audit_zoo.out_file('/z', 'mixes', 's1') == '/z/audit_zoo_mixes_s1.json'
    assert audit_zoo._settings('radius=0.5,steps=5') == {'radius': 0.5, 'steps': 5}

    def result(probes, seed, auc):
        s = {'auc': auc, 'tpr_at_1pct_fpr': 0.5, 'median_p_positive': 0.1,
             'p_negative_below_0.05': 0.05}
        return {'probes': probes, 'crafting': {'pool': 8} if probes != 'mixes' else {},
                'seed': seed, 'rows': [{'teacher': 'A0'}, {'teacher': 'A1'}],
                'summary': {'logits': {'all': s}}}
    for name, r in {'audit_zoo': result('mixes', 0, 0.7),
                    'audit_zoo_mixes_s1': result('mixes', 1, 0.8),
                    'audit_zoo_divergent_s0': result('divergent', 0, 0.9),
                    'audit_zoo_divergent_s1': result('divergent', 1, 0.8)}.items():
        (tmp_path / f'{name}.json').write_text(json.dumps(r))
    lines = audit_summary.compare(str(tmp_path))
    mixes = [line for line in lines if line.startswith('| mixes')]
    divergent = [line for line in lines if line.startswith('| divergent')]
    assert len(mixes) == len(divergent) == 1
    assert '| 0,1 | 0.750 ± 0.071 |' in mixes[0] and '| 0.850 ± 0.071 |' in divergent[0]
