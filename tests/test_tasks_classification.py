"""jaxdistill/tasks/classification.py through the CLI: data under other keys, 1-D inputs.

A user's `data.source` and a TFDS dataset whose features are not called image / label,
with signals ``[L, C]`` and with images: each trains the digits smoke job end to end
(teacher, baseline, student) in this process (`jaxdistill.main.run_cli`).
"""

import json

import pytest

from jaxdistill import main as cli_main
from jaxdistill import tasks
from jaxdistill.errors import ConfigError
from tests import user_data
from tests.helpers import ROOT, load_config

FOUR_CLASSES = ['--config.teacher.kwargs.num_classes=4', '--config.student.kwargs.num_classes=4']
RUNS = {
    'source_signals': (['--config.data.source=tests.user_data:signals',
                        '--config.data.image_key=signal', *FOUR_CLASSES],
                       'source:tests.user_data:signals', (32, 2), 96),
    'tfds_signals': (['--config.data.name=user_signals', '--config.data.image_key=signal',
                      '--config.data.label_key=class', *FOUR_CLASSES],
                     'tfds:user_signals/1.0.0', (32, 2), 96),
    'tfds_images': (['--config.data.name=user_images', '--config.data.image_key=pixels',
                     '--config.data.label_key=digit'], 'tfds:user_images/1.0.0', (8, 8, 1), 160),
}


@pytest.fixture(scope='module')
def user_data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('user_tfds'))
    for name in ('user_signals', 'user_images'):
        user_data.prepare(name, path)
    return path


@pytest.mark.parametrize('name', [
    'source_signals',
    pytest.param('tfds_signals', marks=pytest.mark.slow),
    pytest.param('tfds_images', marks=pytest.mark.slow)])
def test_other_keys_train_end_to_end(name, user_data_dir, tmp_path, monkeypatch, capsys):
    args, dataset, shape, train_examples = RUNS[name]
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / 'run'
    status = cli_main.run_cli(['jaxdistill.main', '--config=configs/digits.py:smoke',
                               f'--workdir={workdir}', f'--config.data.data_dir={user_data_dir}',
                               '--host_memory=system', *args])
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    results = json.loads((workdir / 'results.json').read_text())
    assert results['provenance']['dataset'] == dataset
    assert results['provenance']['train_examples'] == train_examples
    assert results['student']['steps'] == 20 and results['test_examples'] in (32, 64)
    for model in ('teacher', 'baseline', 'student'):
        assert 0.0 <= results[model]['accuracy'] <= 1.0
    stages = [line.split()[0] for line in out.splitlines() if ' step ' in line]
    assert sorted(set(stages), key=stages.index) == ['teacher', 'baseline', 'student']
    config = load_config('digits.py', 'smoke')
    config.data.update(data_dir=user_data_dir, **dict(
        a[len('--config.data.'):].split('=', 1) for a in args if a.startswith('--config.data.')))
    assert tasks.build(config).sample.shape == (1, *shape)


def test_inputs_without_spatial_axes_cannot_be_shifted(monkeypatch):
    config = load_config('digits.py', 'smoke')
    config.data.source = 'tests.user_data:features'
    with pytest.raises(ConfigError, match=r"^data.augment='crop' shifts inputs along their "
                                          r'spatial axes, but the inputs .* have shape \[6\]'):
        tasks.build(config)
    config.data.augment = ''
    config.data.image_size = 32
    with pytest.raises(ConfigError, match=r'^data.image_size=32 resizes images \[H, W, C\]'):
        tasks.build(config)
