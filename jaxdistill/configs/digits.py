"""Distil a CNN teacher into a 35x smaller CNN student on scikit-learn's 8x8 digits.

The README's default job: trains the teacher, a label-only baseline student and a
distilled student, then reports accuracy and fidelity to the teacher. A few minutes on
2 CPU cores; nothing is downloaded (the data ships with scikit-learn).

The setting is the one distillation is most used for: labels are scarce, unlabelled
inputs are not, and a teacher exists that was trained on more labelled data than you
have. The students may read the labels of 10 % of the train split (``data.
labelled_fraction=0.1``, 144 of 1,437 images, drawn per seed); the baseline trains on
those 144 alone, the distilled student on all 1,437 images scored by the teacher (the
other 90 % are its unlabelled transfer set). The teacher here is trained on every label,
standing in for such a model. With every label (``--config.data.labelled_fraction=1``)
the two students are within seed noise of each other in accuracy (README).

The student learns by function matching (Beyer et al. 2022, "Knowledge distillation: A
good teacher is patient and consistent"): every image is randomly shifted by up to one
pixel (``data.augment='crop'``) and mixed up with another (``data.mixup=1.0``), the
teacher scores exactly the view the student sees, and the objective is the KL to the
teacher at T = 1 (``kd`` with weight alpha = 1, so no label term). The baseline sees the
same mixed images with the mixed labels.

    python -m jaxdistill.main --config=configs/digits.py --workdir=/tmp/jaxdistill/digits

Presets: ``configs/digits.py:smoke`` runs in seconds (tests, CI).
"""

from jaxdistill.config import base_config, loss_entry


def get_config(arg: str | None = None):
    c = base_config()
    c.teacher.module = 'cnn'
    c.teacher.kwargs = dict(channels=(32, 64), dense=128, dropout=0.3, pool='flatten',
                            num_classes=10)
    c.teacher.steps = 1500
    c.student.module = 'cnn'
    c.student.kwargs = dict(channels=(4,), dense=16, pool='flatten', num_classes=10)
    c.data.name = 'digits'
    c.data.batch_size = 64
    c.data.augment = 'crop'
    c.data.mixup = 1.0
    c.data.labelled_fraction = 0.1
    c.train.steps = 3000
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    c.distill.losses = (loss_entry('kd', weight=1.0, temperature=1.0),)
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 50
    if arg == 'smoke':
        c.teacher.kwargs = dict(channels=(8,), dense=16, num_classes=10)
        c.student.kwargs = dict(channels=(4,), dense=8, pool='flatten', num_classes=10)
        c.teacher.steps = 20
        c.train.steps = 20
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.optimizer.warmup_steps = 2
        c.data.batch_size = 32
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for configs/digits.py (known: 'smoke')")
    return c
