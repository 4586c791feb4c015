"""The ``hf`` pair: a Llama-family teacher at a real vocabulary (V = 128,256), imported through
`jaxdistill.hf.load_causal_lm`, distilled by jaxdistill's real step, dense vs chunked.

    python -m benchmarks.hf_lm --variant memory-dense     # one measurement, one JSON line

The teacher is a random Llama-3-shaped decoder (GQA, untied head, V = 128,256) written as a
Hugging Face directory (``config.json`` + ``model.safetensors``, by `jaxdistill.hf`'s exporter
functions) and read back by the public loader; the student is the same architecture at half
the depth. Variants (each in a fresh process, `benchmarks.comparisons.hf_lm` starts them):

* ``memory-dense`` / ``memory-chunked``: XLA's memory analysis of the whole jitted distill
  step (``train.make_train_step``: teacher forward, student forward + backward, AdamW update)
  at ``distill.token_loss`` dense / chunked: temporaries, and arguments + outputs +
  temporaries - aliased (donated) bytes, the step's peak;
* ``time``: the chunked distill step, the teacher's forward alone and the student's chunked
  label-only step, timed interleaved (`harness.time_interleaved`): ``distill_over_limit`` and
  tokens/s (the dense step too, for its tokens/s).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TEACHER = dict(vocab_size=128256, num_layers=2, d_model=256, num_heads=4, num_kv_heads=2,
               mlp_dim=704, tie_embeddings=False, rope_base=500000.0, norm_eps=1e-5)
CHUNK = 256  # distill.chunk_size: tokens per chunk ([256, V] float32 logits = 131 MB)
SIZES = {'memory': dict(batch=8, seq=256), 'time': dict(batch=2, seq=128),
         'quick': dict(batch=2, seq=64)}


def write_teacher(directory: str, max_len: int) -> str:
    """A random Llama-family checkpoint in Hugging Face layout (once per directory)."""
    from safetensors.numpy import save_file

    from jaxdistill.hf import decoder as hf_decoder
    from jaxdistill.models import Decoder

    if os.path.exists(os.path.join(directory, 'config.json')):
        return directory
    os.makedirs(directory, exist_ok=True)
    module = Decoder(**TEACHER, max_len=max_len)
    params = module.init(jax.random.key(7), jnp.zeros((1, 8), jnp.int32))['params']
    tensors = hf_decoder.decoder_params_to_hf(jax.device_get(params))
    save_file(tensors, os.path.join(directory, 'model.safetensors'))
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(hf_decoder.to_hf_config(module), f, indent=1)
    return directory


def build(directory: str, batch: int, seq: int):
    """``(pair, teacher_vars)``: the imported teacher and a half-depth student."""
    from benchmarks import pairs
    from jaxdistill.hf import load_causal_lm
    from jaxdistill.models import Decoder
    from jaxdistill.models.adapter import Model

    module, params, _ = load_causal_lm(directory)
    module = module.clone(max_len=max(module.max_len, seq))
    student = Decoder(**{**TEACHER, 'num_layers': TEACHER['num_layers'] // 2}, max_len=seq)
    pair = pairs.lm_pair(batch, seq, teacher_cfg=TEACHER, student_cfg=TEACHER)
    pair = pairs.dataclasses.replace(pair, name='hf', teacher=Model(module, name='teacher'),
                                     student=Model(student, name='student'))
    return pair, {'params': params, 'state': {}}


def _step(pair, teacher_vars, token_loss: str, *, with_teacher: bool = True):
    from benchmarks import steps
    from jaxdistill import objective as objective_lib
    from jaxdistill import train
    from jaxdistill.runtime import mesh as mesh_lib

    mesh = steps.make_mesh(jax.devices()[:1])
    optimizer = train.make_optimizer(pair.optimizer_config(), steps.STEPS_FOR_SCHEDULE)
    sample = pair.batch['inputs']
    state, shardings = train.create_train_state(pair.student, optimizer, jax.random.key(0),
                                                sample, mesh)
    t_shardings = mesh_lib.param_sharding(mesh, teacher_vars)
    teacher_vars = jax.device_put(teacher_vars, t_shardings)
    objective = pair.objective() if with_teacher else objective_lib.label_only()
    step = train.make_train_step(pair.student, objective, optimizer, mesh=mesh,
                                 state_shardings=shardings, prepare=pair.prepare, seed=0,
                                 teacher=pair.teacher if with_teacher else None,
                                 teacher_shardings=t_shardings, token_loss=token_loss,
                                 chunk_size=CHUNK)
    return steps.Runner(step, state, (teacher_vars, mesh_lib.to_global(mesh, pair.batch))), mesh


def memory(directory: str, token_loss: str, quick: bool) -> dict[str, Any]:
    size = SIZES['quick' if quick else 'memory']
    pair, teacher_vars = build(directory, size['batch'], size['seq'])
    runner, _ = _step(pair, teacher_vars, token_loss)
    compiled = runner._step.lower(runner.carry, *runner._args).compile()
    m = compiled.memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
    return {'token_loss': token_loss, 'shape': {**size, 'vocab': TEACHER['vocab_size']},
            'temp_bytes': int(m.temp_size_in_bytes), 'argument_bytes':
            int(m.argument_size_in_bytes), 'peak_bytes': int(peak),
            'dense_logits_bytes': size['batch'] * size['seq'] * TEACHER['vocab_size'] * 4}


def timing(directory: str, quick: bool, repeats: int) -> dict[str, Any]:
    from benchmarks import harness, steps

    size = SIZES['quick' if quick else 'time']
    pair, teacher_vars = build(directory, size['batch'], size['seq'])
    chunked, mesh = _step(pair, teacher_vars, 'chunked')
    dense, _ = _step(pair, teacher_vars, 'dense')
    student, _ = _step(pair, teacher_vars, 'chunked', with_teacher=False)
    timings = harness.time_interleaved({
        'distill_step': chunked, 'distill_step_dense': dense,
        'teacher_forward': steps.teacher_forward(pair, mesh, jax.device_put(teacher_vars)),
        'student_step': student}, repeats=repeats)
    tokens = size['batch'] * size['seq']
    return {'shape': {**size, 'vocab': TEACHER['vocab_size']},
            'timings': {k: t.summary() for k, t in timings.items()},
            'distill_over_limit': harness.ratio(timings, 'distill_step',
                                                ['teacher_forward', 'student_step']),
            'tokens_per_s': {k: tokens / timings[k].summary()['median_s']
                             for k in ('distill_step', 'distill_step_dense')},
            '_timings': timings}


def main() -> None:
    from jaxdistill.runtime import hostmem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', choices=('memory-dense', 'memory-chunked', 'time'),
                        required=True)
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--dir', default=os.path.join(tempfile.gettempdir(),
                                                      'jaxdistill-bench-llama128k'))
    args = parser.parse_args()
    directory = write_teacher(args.dir, 2048)
    if args.variant == 'time':
        out = timing(directory, args.quick, args.repeats)
        out.pop('_timings')
    else:
        out = memory(directory, args.variant.split('-')[1], args.quick)
    out['load_average'] = list(os.getloadavg())
    # the allocator policy this process ran under: the CLI's default is 'reuse'
    # (`runtime/hostmem.py`); a bare `python -m benchmarks.hf_lm` runs under 'system'
    out['host_memory'] = hostmem.in_force()
    print(json.dumps(out, default=float))


if __name__ == '__main__':
    np.set_printoptions(precision=4)
    main()
