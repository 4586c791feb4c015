"""Extension points: a new task and a new teacher signal are each one class and one
registration line, and run through the real job (`run.train_and_evaluate`) on tiny data.

``Blobs`` (a task: four Gaussian classes in 8 dimensions, generated in memory) and
``Precomputed`` (a signal: the teacher's logits for every train row, computed once and
carried by the batches, so the teacher never runs in the student's step) are defined here
and nowhere else; the `registered` fixture holds their only registration lines.
"""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdistill import config as config_lib
from jaxdistill import run, signals, tasks, train
from jaxdistill.config import loss_entry
from jaxdistill.errors import ConfigError
from jaxdistill.tasks import evaluate as eval_lib

DEVICES = jax.devices()[:1]


# ---------------------------------------------------------------------------------- the task
def _blobs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 2.0, (4, 8))
    label = rng.integers(0, 4, n)
    image = (centres[label] + rng.normal(0, 1.0, (n, 8))).astype(np.float32)
    return {'image': image, 'label': label.astype(np.int32)}


class Blobs(tasks.BaseTask):
    """Four Gaussian classes in 8 dimensions; scored like classification."""

    name = 'blobs'
    columns = (('blob accuracy', 'accuracy', 'pct'),
               ('agreement with teacher', 'agreement', 'pct'), ('params', 'params', 'num'),
               ('steps', 'steps', 'num'))

    def __init__(self, config):
        self.config = config
        self.train_rows, self.test_rows = _blobs(256, 1), _blobs(128, 2)
        self.dataset, self.sample = 'blobs/1', self.train_rows['image'][:1]

    def check_models(self, teacher, student) -> None:
        del teacher, student

    def train_batches(self, seed: int, rows: str = 'all') -> grain.MapDataset:
        return self.batches_from(self.train_rows, seed)

    def batches_from(self, rows, seed: int) -> grain.MapDataset:
        ids = grain.MapDataset.range(len(rows['label'])).shuffle(seed=seed).repeat()
        ids = ids.batch(self.config.data.batch_size, drop_remainder=True)
        return ids.map(lambda i: {k: v[np.asarray(i)] for k, v in rows.items()})

    def prepare_fn(self, mixup: float = 0.0):
        return lambda batch, rng: tasks.StepInputs(batch['image'], batch['label'], None, None)

    def _logits(self, model, mesh, model_vars) -> np.ndarray:
        batch = {**self.test_rows, 'mask': np.ones(len(self.test_rows['label']), bool)}
        return eval_lib.predict_all(eval_lib.make_predict(model, mesh), model_vars, [batch],
                                    mesh)[0]

    def scorer(self, model, mesh):
        return lambda v: {'accuracy': eval_lib.accuracy(self._logits(model, mesh, v),
                                                        self.test_rows['label'])}

    def evaluator(self, mesh, teacher, teacher_vars, student):
        task, labels = self, self.test_rows['label']
        teacher_logits = self._logits(teacher, mesh, teacher_vars)

        class Evaluator:
            test_examples = len(labels)

            def teacher_scores(self):
                return {'accuracy': eval_lib.accuracy(teacher_logits, labels)}

            def __call__(self, student_vars):
                logits = task._logits(student, mesh, student_vars)
                return eval_lib.fidelity(logits, teacher_logits, labels)

        return Evaluator()

    def provenance(self):
        return {'dataset': self.dataset, 'train_examples': 256, 'labelled_examples': 256}


# -------------------------------------------------------------------------------- the signal
class Precomputed(signals.BaseSignal):
    """The teacher's logits per train row, computed once; the step reads them from the batch."""

    name = 'precomputed'
    tasks = ('blobs',)
    teacher_in_step = False
    report_keys = ('precomputed_rows',)

    def defaults(self):
        return {'precomputed': ml_collections.ConfigDict({'dtype': 'float32'})}

    def check_config(self, config) -> None:
        if config.distill.precomputed.dtype not in ('float32', 'float16'):
            raise ConfigError('distill.precomputed.dtype must be float32 or float16')

    def step_teacher(self, batch):
        return batch['teacher_logits'].astype(jnp.float32)

    def prepare(self, context):
        t, tv = context.teacher, context.teacher_vars
        rows = context.task.train_rows
        logits = jax.jit(lambda x: t.apply(tv['params'], tv['state'], x, train=False)[0])(
            rows['image'])
        dtype = context.config.distill.precomputed.dtype
        return signals.Prepared({**rows, 'teacher_logits': np.asarray(logits).astype(dtype)},
                                provenance={'precomputed_rows': len(rows['label'])})


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(signals, 'REGISTRY', dict(signals.REGISTRY))
    monkeypatch.setattr(tasks, 'REGISTRY', dict(tasks.REGISTRY))
    signals.register(Precomputed())  # the signal's registration
    tasks.register('blobs', Blobs)  # the task's registration


def _config(signal: str = 'online') -> ml_collections.ConfigDict:
    c = config_lib.base_config()
    c.task, c.data.name = 'blobs', 'blobs'
    c.teacher.module, c.student.module = 'mlp', 'mlp'
    c.teacher.kwargs = {'hidden': (32,), 'num_classes': 4}
    c.student.kwargs = {'hidden': (4,), 'num_classes': 4}
    c.data.batch_size, c.data.eval_batch_size = 32, 128
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 30, 10, 30
    c.optimizer.warmup_steps, c.optimizer.learning_rate = 2, 1e-2
    c.distill.losses = (loss_entry('kd', weight=0.9, temperature=2.0), loss_entry('ce', weight=0.1))
    c.distill.teacher_signal = signal
    return c


def test_a_new_task_runs_the_whole_job_and_shapes_the_report(registered, tmp_path):
    r = run.train_and_evaluate(_config(), str(tmp_path), devices=DEVICES)
    assert r['provenance']['task'] == 'blobs' and r['provenance']['dataset'] == 'blobs/1'
    assert r['teacher']['accuracy'] > 0.8  # the blobs are separable: training happened
    assert r['student']['steps'] == 30 and r['baseline']['steps'] == 30
    report = open(tmp_path / 'report.md').read()
    assert '| model | blob accuracy | agreement with teacher | params | steps |' in report
    assert 'test split of 128 examples' in report and 'samples' not in r


def test_a_new_signal_feeds_the_step_without_the_teacher(registered, tmp_path, monkeypatch):
    online = run.train_and_evaluate(_config(), str(tmp_path / 'online'), devices=DEVICES)
    c = _config('precomputed')
    c.teacher.checkpoint = str(tmp_path / 'online')
    c.train.baseline = False
    teachers = []
    real = train.make_train_step
    monkeypatch.setattr(train, 'make_train_step',
                        lambda *a, **k: teachers.append(k.get('teacher')) or real(*a, **k))
    r = run.train_and_evaluate(c, str(tmp_path / 'pre'), devices=DEVICES)
    assert teachers == [None]  # the student's step got no teacher to run
    assert r['provenance']['precomputed_rows'] == 256
    assert r['provenance']['teacher_signal'] == 'precomputed'
    # the same teacher logits reach the same objective: the online student, up to rounding
    np.testing.assert_allclose(r['student']['train_loss'], online['student']['train_loss'],
                               rtol=1e-4)
    np.testing.assert_allclose(r['student']['kl_to_teacher'], online['student']['kl_to_teacher'],
                               rtol=1e-3)
    report = open(tmp_path / 'pre' / 'report.md').read()
    assert '- teacher signal: `precomputed` `{"precomputed_rows": 256}`' in report


def test_a_new_signal_owns_its_config_section_and_checks(registered):
    c = _config('precomputed')
    assert c.distill.precomputed.dtype == 'float32'
    config_lib.validate(c)
    c.distill.precomputed.dtype = 'int8'
    with pytest.raises(ConfigError, match='distill.precomputed.dtype'):
        config_lib.validate(c)
    c = _config('precomputed')
    c.task = 'classification'
    with pytest.raises(ConfigError, match="needs task='blobs'"):
        config_lib.validate(c)


def test_registries_name_the_closest_entry_and_check_the_protocol(registered):
    with pytest.raises(ConfigError, match="did you mean 'blobs'"):
        tasks.get('blob')
    with pytest.raises(ConfigError, match="did you mean 'precomputed'"):
        signals.get('precompute')
    with pytest.raises(TypeError, match='Signal'):
        signals.register(object())
    assert isinstance(Blobs(_config()), tasks.Task)
