"""configs/cifar10_resnet.py and configs/imagenet_resnet.py: build and train on mock data.

The real recipes need CIFAR-10 / ImageNet and a TPU; here TFDS's mock data stands in
and each stage runs one or two steps with the recipe's real architectures, objective,
augmentation and mixup (only batch, image size and steps are shrunk by ``:smoke``).
"""

import math

import pytest
import tensorflow_datasets as tfds

from jaxdistill import run
from tests.helpers import load_config


@pytest.mark.slow
@pytest.mark.parametrize('name', ['cifar10_resnet.py', 'imagenet_resnet.py'])
def test_recipe_runs_on_mock_data(name, tmp_path):
    config = load_config(name, 'smoke')
    full = load_config(name)
    # The smoke preset shrinks sizes only: same modules, losses, augmentation, mixup.
    for key in ('teacher.module', 'student.module', 'data.augment', 'data.mixup',
                'optimizer.name', 'data.name'):
        section, leaf = key.split('.')
        assert config[section][leaf] == full[section][leaf], key
    assert config.distill.losses[0].to_dict() == full.distill.losses[0].to_dict()
    with tfds.testing.mock_data(num_examples=16):
        result = run.train_and_evaluate(config, str(tmp_path / 'run'))
    assert result['student']['steps'] == 2
    assert math.isfinite(result['student']['train_loss'])
    assert 0.0 <= result['student']['agreement'] <= 1.0


def test_recipes_have_documented_commands():
    for name in ('cifar10_resnet.py', 'imagenet_resnet.py', 'digits.py'):
        doc = open(f'configs/{name}').read()
        assert 'python -m jaxdistill.main --config=configs/' + name in doc.replace('\\\n', '')
