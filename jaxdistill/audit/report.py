"""``audit.json``, ``audit.md`` and ``audit.png`` of one lineage test."""

from __future__ import annotations

import os
from typing import Any

from jaxdistill import report as report_lib


def markdown(result: dict[str, Any]) -> str:
    lines = ['# Lineage audit', '',
             f'- teacher: `{result["teacher"]["spec"]}` (params sha256 '
             f'{result["teacher"]["params_sha256"][:12]})',
             f'- suspect: `{result["suspect"]["spec"]}` (params sha256 '
             f'{result["suspect"]["params_sha256"][:12]})',
             f'- references ({len(result["references"])}): '
             + ', '.join(f'`{r["spec"]}`' for r in result['references']),
             f'- probe set: {result["probe"]["size"]} {result["probe"]["unit"]} from '
             f'`{result["probe"]["source"]}` (seed {result["seed"]})', '',
             f'**Verdict ({result["access"]} access): score {result["score"]:.2f}, p-value '
             f'{result["p_value"]:.4g}** (smallest attainable with {len(result["references"])} '
             f'references: {result["min_p_value"]:.4g}).', '',
             '| access | score | p-value (exact) | p-value (normal fit) | p-value (teacher among '
             'anchors) | scored fingerprints |', '|---|---|---|---|---|---|']
    for access, t in result['tests'].items():
        teachers = (f'{t["p_value_teachers"]:.3g}' if 'p_value_teachers' in t
                    else 'no anchors' if not result.get('anchors')
                    else 'not on crafted probes')
        scored = t['fingerprints'].get('scored', t['fingerprints']['used'])
        lines.append(f'| {access} | {t["score"]:.2f} | {t["p_value"]:.4g} | '
                     f'{t["p_value_parametric"]:.3g} | {teachers} | {", ".join(scored)} |')
    lines += ['', '| fingerprint | suspect | references (mean ± sd) |', '|---|---|---|']
    seen = set()
    for t in result['tests'].values():
        f = t['fingerprints']
        for name in f['used']:
            if name in seen:
                continue
            seen.add(name)
            refs = [r[name] for r in f['references']]
            mean = sum(refs) / len(refs)
            sd = (sum((x - mean) ** 2 for x in refs) / max(len(refs) - 1, 1)) ** 0.5
            lines.append(f'| {name} | {f["suspect"][name]:.4f} | {mean:.4f} ± {sd:.4f} |')
    skipped = {k: v for t in result['tests'].values()
               for k, v in t['fingerprints']['skipped'].items()}
    if skipped:
        lines += ['', 'Not computed: ' + '; '.join(f'{k}: {v}' for k, v in skipped.items()) + '.']
    lines += ['', f'Method: {result["method"]}', '', '![scores](audit.png)', '']
    return '\n'.join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tests = result['tests']
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(tests), 3.6))
    for i, t in enumerate(tests.values()):
        refs = t['reference_scores']
        ax.scatter([i] * len(refs), refs, color='tab:gray', alpha=0.7,
                   label='references' if i == 0 else None)
        ax.scatter([i], [t['score']], marker='*', s=180, color='tab:red',
                   label='suspect' if i == 0 else None)
        ax.annotate(f'p={t["p_value"]:.3g}', (i, t['score']), textcoords='offset points',
                    xytext=(8, 0), fontsize=8)
    ax.set_xticks(range(len(tests)), list(tests))
    ax.set_xlim(-0.5, len(tests) - 0.3)
    ax.set_ylabel('score (mean z vs the other models)')
    ax.set_title('lineage test: suspect vs references', fontsize=10)
    ax.legend(fontsize=8, loc='best')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: str, result: dict[str, Any]) -> None:
    os.makedirs(out, exist_ok=True)
    plot(result, os.path.join(out, 'audit.png'))
    report_lib.write_atomic(os.path.join(out, 'audit.md'), markdown(result))
    report_lib.write_json(os.path.join(out, 'audit.json'), result)
