"""``python -m jaxdistill.audit`` end to end on digits smoke runs (slow): outputs, the same
audit.json for the same seed (bad input: tests/test_audit.py)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.test_main import cli

pytestmark = pytest.mark.slow


def audit(*args):
    return subprocess.run([sys.executable, '-m', 'jaxdistill.audit', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp('audit')
    first = str(root / 'r0')
    assert cli(first, data_dir=data_dir).returncode == 0
    others = []
    for seed in (1, 2):
        w = str(root / f'r{seed}')
        proc = cli(w, f'--config.seed={seed}', f'--config.teacher.checkpoint={first}',
                   data_dir=data_dir)
        assert proc.returncode == 0, proc.stderr[-2000:]
        others.append(w)
    return root, first, others


def test_audit_outputs_and_determinism(runs):
    root, first, others = runs
    args = [f'--teacher={first}/teacher', f'--suspect={first}/student',
            '--references=' + ','.join(f'{w}/baseline' for w in others) + f',{first}/baseline']
    a = audit(*args, f'--out={root}/a')
    b = audit(*args, f'--out={root}/b')
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:]
    ja, jb = (json.load(open(os.path.join(root, d, 'audit.json'))) for d in 'ab')
    wrong = audit(*args[:2], f'--references={others[0]}/baseline,{others[0]}/baseline',
                  f'--out={root}/c')
    assert wrong.returncode == 2 and 'same parameters' in wrong.stderr
    assert wrong.stderr.strip().count('\n') == 0 and not os.path.exists(f'{root}/c')
    for key in ('score', 'p_value', 'method', 'fingerprints'):
        assert key in ja
    assert ja['p_value'] >= 1 / 4 - 1e-9 and ja['min_p_value'] == pytest.approx(0.25)
    ja.pop('out'), jb.pop('out')
    assert ja == jb
    assert set(ja['tests']) == {'logits', 'top1', 'samples'}
    for name in ('audit.md', 'audit.png'):
        assert os.path.getsize(os.path.join(root, 'a', name)) > 0


def test_audit_with_crafted_probes(runs):
    root, first, others = runs
    args = [f'--teacher={first}/teacher', f'--suspect={first}/student',
            '--references=' + ','.join(f'{w}/baseline' for w in others) + f',{first}/baseline',
            f'--anchors={others[0]}/student', '--ambiguous=300']  # (a stand-in anchor)
    a = audit(*args, '--probes=boundary', f'--out={root}/boundary')
    assert a.returncode == 0, a.stderr[-2000:]
    j = json.load(open(os.path.join(root, 'boundary', 'audit.json')))
    assert j['probe']['probes'] == 'boundary' and j['probe']['ambiguous'] == 300
    assert all('p_value_teachers' not in t for t in j['tests'].values())
    assert 'not on crafted probes' in open(os.path.join(root, 'boundary', 'audit.md')).read()
    d = audit(*args, '--probes=divergent', f'--out={root}/divergent')
    assert d.returncode == 0, d.stderr[-2000:]
    kept = json.load(open(os.path.join(root, 'divergent', 'audit.json')))['probe']['ambiguous']
    assert kept == 300
    bad = audit(*args[:3], '--probes=conferrable', f'--out={root}/bad')
    assert bad.returncode == 2 and bad.stderr.strip().count('\n') == 0
    assert '--probes=conferrable needs --anchors' in bad.stderr
    assert not os.path.exists(f'{root}/bad')
