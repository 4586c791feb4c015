"""docs/api.md: its example runs as written (on the 8x8 digits, a few steps)."""

import os
import re

from tests.helpers import ROOT


def test_api_example_runs(data_dir, monkeypatch, capsys):
    text = open(os.path.join(ROOT, 'docs', 'api.md')).read()
    blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
    assert len(blocks) == 1, 'docs/api.md has one runnable example'
    monkeypatch.setenv('TFDS_DATA_DIR', data_dir)  # the digits prepared once per session
    exec(compile(blocks[0], 'docs/api.md', 'exec'), {'__name__': 'docs_api'})
    out = capsys.readouterr().out
    assert re.search(r"loss \d+\.\d{4} \['distill/ce', 'distill/kd'", out), out
    assert 'student accuracy' in out
    assert re.search(r'^[0-9a-f]{12}$', out.strip().splitlines()[-1]), out
