#!/bin/bash
# A student cut from the teacher (student.from_teacher_layers) against a random-init student of
# the same shape, on configs/lm_text.py, at equal steps; both with a label-only baseline from
# the same initialisation. Usage: bash tools/lm_cut_vs_random.sh WORKDIR [TEACHER_STEPS STEPS]
# (the README's figures: 300 teacher steps, 200 student steps, on a shared 2-core CPU).
set -euo pipefail
out=${1:?usage: tools/lm_cut_vs_random.sh WORKDIR [TEACHER_STEPS STEPS]}
teacher_steps=${2:-300}
steps=${3:-200}
common=(--config=configs/lm_text.py --config.teacher.steps="$teacher_steps"
        --config.train.steps="$steps" --config.train.eval_every=0
        --config.train.checkpoint_every="$steps" --config.optimizer.warmup_steps=20)
# layers 0 and 2 of the 4-layer teacher (DistilBERT keeps every other layer)
python -m jaxdistill.main "${common[@]}" --workdir="$out/cut" \
    --config.student.kwargs="{}" --config.student.from_teacher_layers="(0, 2)"
# the same shape (2 layers, d_model 128), random init, the same teacher
python -m jaxdistill.main "${common[@]}" --workdir="$out/random" \
    --config.teacher.checkpoint="$out/cut" \
    --config.student.kwargs="{'vocab_size': 259, 'num_layers': 2, 'd_model': 128, \
'num_heads': 4, 'mlp_dim': 512, 'max_len': 128}"
python - "$out" <<'PY'
import json, sys
for run in ('cut', 'random'):
    r = json.load(open(f'{sys.argv[1]}/{run}/results.json'))
    for stage in ('baseline', 'student'):
        s = r[stage]
        print(f"{run:>6} {stage:<8} perplexity {s['perplexity']:.3f}  bits/byte "
              f"{s.get('bits_per_byte', float('nan')):.4f}  accuracy {s['accuracy']:.4f}  "
              f"KL {s['kl_to_teacher']:.4f}  params {s['params']}")
print('teacher perplexity', r['teacher']['perplexity'])
PY
