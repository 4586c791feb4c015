"""docs/losses.md's table of losses, written from the registry (so it cannot drift from it).

Usage::

    python -m jaxdistill.losses.docs          # rewrites the table in docs/losses.md
    python -m jaxdistill.losses.docs --check  # exits 1 if the committed table is stale

Each row is a loss's `Doc` (formula, use, paper, notes) plus what its `LossSpec` says (kind,
hyper-parameters with defaults and rules, labels, batch level, projection, parts, the
token-level and sparse-teacher forms). tests/losses/test_docs.py fails when they differ.
"""

from __future__ import annotations

import argparse
import inspect
import pathlib
import sys

from jaxdistill import losses
from jaxdistill.losses.registry import COMMON_RULES, LossSpec

BEGIN = ('<!-- losses table: written by `python -m jaxdistill.losses.docs` from the registry; '
         'do not edit by hand -->')
END = '<!-- end of losses table -->'
DEFAULT_PATH = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'losses.md'
_COLUMNS = ('name', 'kind', 'formula (per example unless noted)', 'use it when',
            'hyper-parameters (default: rule)', 'paper', 'notes')


def _hyper(spec: LossSpec) -> str:
    params = inspect.signature(spec.fn).parameters
    out = []
    for name in spec.hyper:
        rule = spec.rules.get(name, COMMON_RULES.get(name))
        text = f'`{name}={params[name].default!r}`'
        out.append(f'{text}: {rule.requirement}' if rule is not None else text)
    return '; '.join(out) or '—'


def _notes(spec: LossSpec) -> str:
    notes = [spec.doc.notes] if spec.doc and spec.doc.notes else []
    if spec.needs_labels and spec.kind != 'label':
        notes.append("needs `labels=` (the objective passes the data's)")
    if spec.batch_level:
        notes.append('batch-level: one scalar per batch')
    if spec.projected:
        notes.append('`projection=` a learned `[d_s, d_t]` matrix when widths differ (required '
                     'then; the objective creates it)')
    if spec.parts is not None:
        notes.append(f'`{spec.parts.__name__}` returns its parts')
    if spec.terms is not None:
        notes.append('chunked / vocabulary-sharded forms (`jaxdistill.losses.token`)')
    if spec.sparse is not None and spec.kind != 'sparse':
        notes.append('exact on a sparse (top-k) teacher')
    return '; '.join(notes)


def _row(spec: LossSpec) -> str:
    doc = spec.doc or losses.Doc('—', '—')
    name = f'`{spec.name}`'
    if spec.fn.__name__ != spec.name:
        name += f' / `{spec.fn.__name__}`'
    cells = (name, spec.kind, doc.formula, doc.use, _hyper(spec), doc.paper, _notes(spec))
    return '| ' + ' | '.join(cells) + ' |'


def table() -> str:
    """The markdown table: one row per registered loss, grouped by kind (`KINDS` order)."""
    specs = sorted(losses.SPECS.values(), key=lambda s: losses.KINDS.index(s.kind))
    lines = ['| ' + ' | '.join(_COLUMNS) + ' |', '|' + '---|' * len(_COLUMNS)]
    return '\n'.join(lines + [_row(s) for s in specs])


def render(text: str) -> str:
    """``text`` (docs/losses.md) with the part between `BEGIN` and `END` replaced by `table`."""
    if BEGIN not in text or END not in text:
        raise ValueError(f'the markers {BEGIN!r} and {END!r} are missing: put them where the '
                         'table goes')
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f'{head}{BEGIN}\n{table()}\n{END}{tail}'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='exit 1 if the file is stale')
    parser.add_argument('--path', type=pathlib.Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    text = args.path.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f'{args.path}: the losses table is stale: run python -m '
                  'jaxdistill.losses.docs', file=sys.stderr)
            return 1
        return 0
    args.path.write_text(new)
    return 0


if __name__ == '__main__':
    sys.exit(main())
