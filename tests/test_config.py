"""jaxdistill/config.py: the schema catches typos and wrong types before anything runs."""

import ml_collections
import pytest

from jaxdistill import config as config_lib
from jaxdistill.errors import ConfigError
from tests.helpers import load_config


@pytest.mark.parametrize('name,arg', [
    ('digits.py', None), ('digits.py', 'smoke'), ('cifar10_resnet.py', None),
    ('cifar10_resnet.py', 'smoke'), ('imagenet_resnet.py', None), ('imagenet_resnet.py', 'smoke'),
])
def test_shipped_configs_validate(name, arg):
    config_lib.validate(load_config(name, arg))


def test_unknown_key_names_the_closest():
    c = config_lib.base_config()
    c.train.stpes = 3
    with pytest.raises(ConfigError, match=r"'train.stpes'.*'train.steps'"):
        config_lib.validate(c)


def test_wrong_type_names_key_and_override():
    # A config written from scratch (not from base_config) is not type-safe.
    d = config_lib.base_config().to_dict()
    d['train']['steps'] = 'many'
    c = ml_collections.ConfigDict(d)
    with pytest.raises(ConfigError, match=r"'train.steps' must be int.*--config.train.steps"):
        config_lib.validate(c)


def test_int_accepted_for_float():
    c = config_lib.base_config()
    c.optimizer.learning_rate = 1
    config_lib.validate(c)


def test_user_kwargs_are_free_form():
    c = config_lib.base_config()
    c.student.kwargs = dict(anything_the_module_takes=3)
    config_lib.validate(c)


@pytest.mark.parametrize('key,value,match', [
    ('optimizer.name', 'adamm', "did you mean 'adam"),
    ('train.steps', 0, 'must be positive'),
    ('mesh.data', 0, 'mesh.data=0'),
    ('optimizer.warmup_steps', 5000, 'warmup_steps'),
    ('data.mixup', -1.0, 'data.mixup'),
    ('data.workers_kind', 'forks', r"^data.workers_kind='forks' must be one of"),
])
def test_bad_values(key, value, match):
    c = config_lib.base_config()
    section, name = key.split('.')
    c[section][name] = value
    with pytest.raises(ConfigError, match=match):
        config_lib.validate(c)


def test_to_dict_is_json_ready():
    d = config_lib.to_dict(load_config('digits.py'))
    assert d['distill']['losses'][0]['name'] == 'kd'
    assert d['teacher']['kwargs']['channels'] == [32, 64]
