"""CIFAR-10: distil a ResNet-56 teacher into a ResNet-20 student by function matching.

The recipe of Beyer et al. 2022, "Knowledge distillation: A good teacher is patient
and consistent" (https://arxiv.org/abs/2106.05237), at CIFAR scale:

- *consistent*: teacher and student see the same augmented (and mixed-up) view of
  every image; jaxdistill always feeds both models the same batch, and mixup is applied
  once, on device, before both forwards;
- *patient*: a long schedule (1,000 epochs here);
- the objective is the KL to the teacher alone at T = 1 (no label term), as in
  big_vision's `configs/proj/distill/bit_i1k.py` (``distance='kl', t=1.0``).

Sources of each hyper-parameter:
- architectures: ResNet-56 -> ResNet-20 with BatchNorm (He et al. 2016, section 4.2),
  the pairing used by the CRD benchmark (Tian et al. 2020, https://arxiv.org/abs/1910.10699);
- augmentation: random flip + 4-pixel pad-and-crop (He et al. 2016, section 4.2);
- mixup Beta(1, 1): big_vision distill configs, ``mixup=dict(p=1.0, n=2)``;
- Adam, grad-clip 1.0, cosine decay, 1,500 warm-up steps: big_vision
  ``bigsweep_flowers_pet.py``; learning rate 3e-3 and weight decay 3e-4 are its
  Flowers 'fast' setting (the paper tunes them per dataset: sweep them here too);
- batch 512: big_vision ``bigsweep_flowers_pet.py``.

Needs CIFAR-10 prepared as ArrayRecord once (``tfds build cifar10
--file_format=array_record``, on a machine with network, or a bucket on a TPU VM).
Give a trained teacher with ``--config.teacher.checkpoint=DIR``; without one, the
teacher is first trained here with the same optimizer on labels.

    python -m jaxdistill.main --config=configs/cifar10_resnet.py \\
        --workdir=gs://BUCKET/cifar10_r56_r20 --config.data.data_dir=gs://BUCKET/tfds

Presets: ``:smoke`` shrinks depth, batch and steps (same modules, blocks, objective,
augmentation and mixup) for a test on mock data.
"""

from jaxdistill.config import base_config, loss_entry

EPOCHS = 1000
TRAIN_EXAMPLES = 50_000


def get_config(arg: str | None = None):
    c = base_config()
    c.teacher.module = 'resnet56'
    c.teacher.kwargs = dict(num_classes=10)
    c.student.module = 'resnet20'
    c.student.kwargs = dict(num_classes=10)
    c.data.name = 'cifar10'
    c.data.batch_size = 512
    c.data.eval_batch_size = 1000
    c.data.augment = 'flip_crop'
    c.data.mixup = 1.0
    c.train.steps = EPOCHS * TRAIN_EXAMPLES // c.data.batch_size  # 97,656
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2500
    c.distill.losses = (loss_entry('forward_kl', weight=1.0, temperature=1.0),)
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 3e-3
    c.optimizer.weight_decay = 3e-4
    c.optimizer.warmup_steps = 1500
    c.optimizer.clip_norm = 1.0
    c.optimizer.schedule = 'cosine'
    if arg == 'smoke':  # same modules, blocks and objective; depth and sizes for a CPU
        c.teacher.kwargs.stage_sizes = (1, 1, 1)
        c.student.kwargs.stage_sizes = (1, 1, 1)
        c.data.batch_size = 8
        c.data.eval_batch_size = 8
        c.train.steps = 2
        c.teacher.steps = 1
        c.train.eval_every = 0
        c.train.log_every = 1
        c.optimizer.warmup_steps = 1
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for configs/cifar10_resnet.py (known: 'smoke')")
    return c
