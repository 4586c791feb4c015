"""``python -m jaxdistill.audit``: was the suspect distilled from the teacher?

    python -m jaxdistill.audit --teacher=W/teacher --suspect=S/student \
        --references=R1/baseline,R2/student,R3/baseline --out=audit_out

``--watermark_key=K`` instead tests the suspect for a teacher's watermark (docs/audit.md).
Each model is a stage directory (``WORKDIR/student``...), an export or ``hf:DIR``. The probe
set is the test split of the suspect's run (its workdir's config.json; else the
teacher's); ``--data`` names another run or a ``.npz``. Writes ``OUT/audit.json`` (``score``,
``p_value``, ``method``, ``fingerprints``, and every access mode under ``tests``),
``OUT/audit.md`` and ``OUT/audit.png``. Bad input is one line on stderr, exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import app, flags, logging

from jaxdistill.audit.lineage import AMBIGUOUS, MIXES, PROBES
from jaxdistill.errors import JaxdistillError

_TEACHER = flags.DEFINE_string('teacher', None, 'The model whose lineage is tested.')
_SUSPECT = flags.DEFINE_string('suspect', None, 'The model suspected of descending from it.')
_REFERENCES = flags.DEFINE_list('references', None, 'Models known NOT to descend from the '
                                'teacher, trained on the same task (comma-separated).')
_ANCHORS = flags.DEFINE_list('anchors', [], 'Independent models of the teacher\'s own recipe '
                             '(other seeds): the score is then teacher_coef, how much of the '
                             'suspect\'s outputs the teacher explains beyond its anchors on '
                             'ambiguous probes (docs/audit.md). Recommended.')
_OUT = flags.DEFINE_string('out', None, 'Directory for audit.json, audit.md, audit.png.')
_DATA = flags.DEFINE_string('data', '', 'Probe set: a run (workdir or stage directory) whose '
                            'test split to use, or a .npz; default: the suspect\'s run.')
_ACCESS = flags.DEFINE_list('access', ['logits', 'top1', 'samples'],
                            'What the auditor sees of the suspect: logits (white-box), top1 '
                            'or samples (black-box). The first is the verdict in audit.json.')
_ALPHA = flags.DEFINE_float('alpha', 0.0, 'Significance level the auditor wants to be able '
                            'to reach (0: none); refused when 1/(references+1) > alpha.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the ambiguous probes, token subsample and '
                             'black-box samples.')
_AMBIGUOUS = flags.DEFINE_integer('ambiguous', AMBIGUOUS, 'Ambiguous probes added to an image '
                                  'probe set (mixes of two test images of different labels, '
                                  'see --mix); the teacher-relative fingerprints are measured '
                                  'on them.')
_MIX = flags.DEFINE_enum('mix', MIXES[0], list(MIXES), 'Weight of the first image '
                         'in an ambiguous probe: uniform on [0, 1], or 1/2.')
_PROBES = flags.DEFINE_enum('probes', PROBES[0], list(PROBES), 'Ambiguous image probes: '
                            'the mixes as drawn, or crafted from them with the teacher '
                            '(boundary: moved to its top-2 decision boundary; conferrable: '
                            'targeted examples of the teacher its --anchors do not follow). '
                            'See docs/audit.md.')
_MAX_TOKENS = flags.DEFINE_integer('max_tokens', 20000, 'Most probe tokens for language '
                                   'models (whole test rows; 0: all).')
_WATERMARK_KEY = flags.DEFINE_integer(
    'watermark_key', 0, 'Instead of the lineage test: test the suspect for this watermark key '
    '(distill.sampling.watermark.key); writes OUT/watermark.json.')
_GAMMA = flags.DEFINE_float('gamma', 0.25, 'The watermark\'s green share.')
flags.mark_flags_as_required(['suspect', 'out'])


def _fail(message: str) -> None:
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f'unexpected arguments {argv[1:]}: every option is a --flag')
    logging.set_verbosity(logging.ERROR)  # library chatter (Orbax); our output is print()
    from jaxdistill.audit import audit, watermark_test

    try:
        if _WATERMARK_KEY.value:
            w = watermark_test(_SUSPECT.value, _WATERMARK_KEY.value, _OUT.value,
                               gamma=_GAMMA.value, data=_DATA.value, seed=_SEED.value,
                               max_tokens=_MAX_TOKENS.value)
            for mode in ('text', 'distribution'):
                print(f'{mode:>12}: z {w[mode]["z"]:6.2f}  p-value {w[mode]["p_value"]:.3g}')
            print(f'wrote {os.path.join(_OUT.value, "watermark.json")}')
            return
        if not _TEACHER.value or not _REFERENCES.value:
            _fail('the lineage test needs --teacher and --references (or --watermark_key=K to '
                  'test for a watermark)')
        result = audit(_TEACHER.value, _SUSPECT.value, _REFERENCES.value, _OUT.value,
                       data=_DATA.value, access=tuple(_ACCESS.value), alpha=_ALPHA.value or None,
                       seed=_SEED.value, ambiguous=_AMBIGUOUS.value, max_tokens=_MAX_TOKENS.value,
                       anchors=tuple(_ANCHORS.value), mix=_MIX.value,
                       probes=_PROBES.value)
    except JaxdistillError as e:
        _fail(str(e))
    print(summary(result))


def summary(result: dict[str, Any]) -> str:
    lines = [f'{access:>8}: score {t["score"]:6.2f}  p-value {t["p_value"]:.4g}'
             + (f'  (teacher among anchors: p {t["p_value_teachers"]:.3g})'
                if 'p_value_teachers' in t else '')
             for access, t in result['tests'].items()]
    return '\n'.join(lines + [f'wrote {os.path.join(result["out"], "audit.json")}, audit.md, '
                              'audit.png'])


def run() -> None:
    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            _fail(' '.join(str(e).split()))

    app.run(main, flags_parser=parse)
