"""The losses document themselves: every module's doctests run, every registered loss (and every
public loss function) has an ``Examples`` doctest, and docs/losses.md's table is the registry's."""

import doctest
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

from jaxdistill import losses
from jaxdistill.losses import docs

MODULES = sorted(m.name for m in pkgutil.iter_modules(losses.__path__, 'jaxdistill.losses.'))


def _doctests(module):
    finder = doctest.DocTestFinder()
    return [t for t in finder.find(module) if t.examples]


@pytest.mark.parametrize('name', MODULES)
def test_module_doctests(name):
    """Each module's examples run and print what they say (the values beside LOSSES.md's)."""
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    try:
        for test in _doctests(module):
            runner.run(test)
    finally:
        np.set_printoptions()  # in case an example changes jnp (= numpy) print options
    result = runner.summarize(verbose=False)
    assert result.failed == 0, result


def test_every_registered_loss_has_an_example():
    """A loss's own docstring (not a sibling's) has an ``Examples`` section with a doctest."""
    missing = []
    for name, spec in losses.SPECS.items():
        functions = [spec.fn] + [f for f in (spec.parts, spec.soft_labels) if f is not None]
        for fn in functions:
            tests = doctest.DocTestFinder(recurse=False).find(fn, fn.__name__)
            if 'Examples:' not in (fn.__doc__ or '') or not any(t.examples for t in tests):
                missing.append(f'{name}: {fn.__module__}.{fn.__name__}')
    assert not missing, f'no Examples doctest: {missing}'
    assert len(losses.SPECS) >= 17


def test_every_public_function_has_an_example():
    """Beyond the registry: token_mean, the token-level paths, register, get, ..."""
    missing = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, fn in vars(module).items():
            if (name.startswith('_') or not inspect.isfunction(fn)
                    or fn.__module__ != module_name or module_name.endswith('.docs')):
                continue
            if name in ('main', 'render', 'table', 'names', 'spec', 'unregister', 'hyper_names',
                        'check_hyper', 'check_values', 'upcast', 'check_same_vocab',
                        'check_logits'):
                continue  # helpers, not losses; documented by their docstrings
            if '>>>' not in (fn.__doc__ or ''):
                missing.append(f'{module_name}.{name}')
    assert not missing, f'no Examples doctest: {missing}'


def test_docs_table_is_the_registry():
    """docs/losses.md's table is written by `python -m jaxdistill.losses.docs`; rerun it after
    registering or changing a loss."""
    text = docs.DEFAULT_PATH.read_text()
    assert docs.render(text) == text, 'stale: run python -m jaxdistill.losses.docs'
    assert docs.main(['--check']) == 0


def test_docs_table_follows_a_new_registration(tmp_path):
    """The table is generated, not copied: a new loss appears as a row, and --check says stale."""
    path = tmp_path / 'losses.md'
    path.write_text(docs.DEFAULT_PATH.read_text())

    def l1(student_logits, teacher_logits, *, temperature=1.0, where=None, axis=-1):
        return np.abs(student_logits - teacher_logits).mean(axis)

    losses.register('l1_test', l1, doc=losses.Doc('`mean_v |z_s − z_t|`', 'a test'))
    try:
        assert docs.main(['--check', '--path', str(path)]) == 1
        docs.main(['--path', str(path)])
        assert '| `l1_test` / `l1` | logit | `mean_v |z_s − z_t|` | a test |' in path.read_text()
    finally:
        losses.unregister('l1_test')
    assert docs.main(['--check', '--path', str(path)]) == 1
