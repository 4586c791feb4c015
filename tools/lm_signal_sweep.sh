#!/usr/bin/env bash
# The README's teacher-signal table: one lm_text teacher, then a student per teacher signal,
# all at the same student steps, seed and initialisation.
#
#   bash tools/lm_signal_sweep.sh [OUT=workdir/lm_signals] [STEPS=300]
#   TEACHER=DIR bash tools/lm_signal_sweep.sh ...   # reuse a trained lm_text teacher
#
# Then: python tools/lm_signal_table.py OUT
set -euo pipefail
OUT=${1:-workdir/lm_signals}
STEPS=${2:-300}
PY=${PY:-.venv/bin/python}
common=(--config.train.steps="$STEPS" --config.train.eval_every=0)
if [[ -z "${TEACHER:-}" ]]; then
  "$PY" -m jaxdistill.main --config=configs/lm_text.py --workdir="$OUT/online" "${common[@]}"
  TEACHER="$OUT/online"
else
  "$PY" -m jaxdistill.main --config=configs/lm_text.py --workdir="$OUT/online" "${common[@]}" \
    --config.teacher.checkpoint="$TEACHER"
fi
for signal in cached cached_uint8 sequence on_policy; do
  "$PY" -m jaxdistill.main --config="configs/lm_text.py:$signal" --workdir="$OUT/$signal" \
    "${common[@]}" --config.teacher.checkpoint="$TEACHER" --config.train.baseline=False
done
