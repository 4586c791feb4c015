"""Recipes inside the package, found by name; the console script; a non-editable wheel."""

import glob
import importlib.util
import os
import shutil
import site as sitelib
import subprocess
import sys
import zipfile

import pytest

import jaxdistill.configs
from jaxdistill import main
from jaxdistill.errors import ConfigError
from tests.helpers import ROOT


def test_recipes_by_name_and_by_path_are_the_same_file():
    assert {'digits', 'cifar10_resnet', 'imagenet_resnet', 'lm_text'} <= set(
        jaxdistill.configs.names())
    packaged = os.path.join(jaxdistill.configs.DIR, 'digits.py')
    assert jaxdistill.configs.resolve('digits:smoke') == packaged + ':smoke'
    assert jaxdistill.configs.resolve('digits.py') == packaged
    assert jaxdistill.configs.resolve('configs/digits.py:smoke') == 'configs/digits.py:smoke'
    assert os.path.samefile(os.path.join(ROOT, 'configs', 'digits.py'), packaged)
    by_name = jaxdistill.configs.load('digits:smoke')
    assert by_name == jaxdistill.configs.load(os.path.join(ROOT, 'configs', 'digits.py:smoke'))
    assert by_name.train.steps == 20
    with pytest.raises(ConfigError, match=r"^config 'digitz': no such recipe or file; the "
                                          r'packaged recipes are .*digits'):
        jaxdistill.configs.load('digitz')


def test_cli_finds_a_recipe_by_name(tmp_path, data_dir):
    code = main.run_cli(['jaxdistill', '--config=digits:smoke', f'--workdir={tmp_path}/w',
                         f'--config.data.data_dir={data_dir}', '--config.mode=list_features'])
    assert code == 0


def _wheel_backend() -> bool:
    """setuptools can build a wheel without a network: it has bdist_wheel (>= 70.1) or
    the `wheel` package is installed."""
    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split('.')[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec('wheel') is not None


@pytest.mark.slow
@pytest.mark.skipif(not _wheel_backend(), reason='setuptools here cannot build a wheel offline '
                                                 '(needs setuptools >= 70.1 or wheel)')
def test_wheel_ships_the_recipes_and_the_console_script(tmp_path):
    source = tmp_path / 'source'  # built from a copy: an in-tree build leaves build/ behind
    shutil.copytree(os.path.join(ROOT, 'jaxdistill'), source / 'jaxdistill',
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(os.path.join(ROOT, name), source)
    clean = {**os.environ, 'PYTHONPATH': ''}  # a source tree on the path reads as installed
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '-q', '-w', str(tmp_path / 'dist'), str(source)], check=True, timeout=600,
                   env=clean)
    wheel = glob.glob(str(tmp_path / 'dist' / 'jaxdistill-*.whl'))[0]
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in ('digits', 'cifar10_resnet', 'imagenet_resnet', 'lm_text', 'lm_large'):
        assert f'jaxdistill/configs/{recipe}.py' in names, recipe
    entry = next(n for n in names if n.endswith('entry_points.txt'))
    assert 'jaxdistill = jaxdistill.main:cli' in zipfile.ZipFile(wheel).read(entry).decode()
    venv = tmp_path / 'venv'  # this environment's packages, but not its jaxdistill
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    site = glob.glob(str(venv / 'lib' / 'python3*' / 'site-packages'))[0]
    with open(os.path.join(site, 'shared.pth'), 'w') as f:
        f.write('\n'.join(sitelib.getsitepackages()) + '\n')
    subprocess.run([str(venv / 'bin' / 'pip'), 'install', '-q', '--no-deps', '--no-index',
                    wheel], check=True, timeout=600, env=clean)
    proc = subprocess.run([str(venv / 'bin' / 'jaxdistill'), '--config=digits:nope',
                           '--workdir=/tmp/never'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=clean)
    assert proc.returncode == 2
    assert "unknown preset 'nope'" in proc.stderr, proc.stderr[-2000:]
    assert str(venv) in subprocess.run(
        [str(venv / 'bin' / 'python'), '-c', 'import jaxdistill.configs as c; print(c.DIR)'],
        cwd=tmp_path, capture_output=True, text=True, env=clean,
        check=True).stdout
