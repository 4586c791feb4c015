"""The package layout (docs/architecture.md): no module over 600 lines, and the architecture
page places every top-level module and subpackage. (tests/test_imports.py checks that the
modules import and form no cycle.)"""

import importlib
import os

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, 'jaxdistill')
MAX_LINES = 600


def _modules() -> dict[str, int]:
    """``path relative to the repository -> lines`` of every module of the package."""
    out = {}
    for directory, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith('.py'):
                path = os.path.join(directory, f)
                with open(path) as fh:
                    out[os.path.relpath(path, ROOT)] = sum(1 for _ in fh)
    return out


def test_no_module_is_over_600_lines():
    long = {path: n for path, n in _modules().items() if n > MAX_LINES}
    assert not long, f'split these modules (lines): {long}'
    assert _modules()  # the walk found the package


def test_the_architecture_page_places_every_top_level_module_and_package():
    with open(os.path.join(ROOT, 'docs', 'architecture.md')) as f:
        page = f.read()
    top = sorted(f for f in os.listdir(PACKAGE)
                 if (f.endswith('.py') and f != '__init__.py')
                 or os.path.isfile(os.path.join(PACKAGE, f, '__init__.py')))
    missing = [f for f in top if f'`{f if f.endswith(".py") else f + "/"}`' not in page]
    assert not missing, f'docs/architecture.md does not place {missing}'
    assert 'train/' in [f + '/' for f in top if not f.endswith('.py')]


def test_import_paths_that_docs_named_are_the_moved_modules():
    from jaxdistill import models, runtime  # noqa: F401
    from jaxdistill.models import adapter
    from jaxdistill.runtime import mesh

    assert importlib.import_module('jaxdistill.adapter') is adapter
    assert importlib.import_module('jaxdistill.mesh') is mesh
    from jaxdistill.adapter import Model
    from jaxdistill.mesh import DEFAULT_RULES
    assert Model is models.Model and DEFAULT_RULES is mesh.DEFAULT_RULES
    from jaxdistill.export import load
    from jaxdistill.train import make_train_step  # README and the issues name these
    assert callable(make_train_step) and callable(load)
