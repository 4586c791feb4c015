"""ImageNet: distil a ResNet-152x2 teacher into a ResNet-50 student (function matching).

Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and consistent"
(https://arxiv.org/abs/2106.05237), with the settings of big_vision's
``configs/proj/distill/bit_i1k.py``, which reaches 82.8 % top-1 with a BiT-R50x1 student
after 9,600 epochs (paper, table 4); 1,200 epochs is that config's middle ground.

Sources of each hyper-parameter (all from ``bit_i1k.py`` unless said otherwise):
- teacher R152x2, student R50x1 (``depth=152, width=2`` -> ``depth=50, width=1``); here
  with BatchNorm instead of BiT's GroupNorm + weight standardisation, so a BiT checkpoint
  needs its own module (see docs/custom_modules.md);
- data: ``train[:98%]`` of imagenet2012 (the rest is minival), inception crop 224 + flip,
  evaluation at resize 256 / centre crop 224;
- mixup Beta(1, 1) (``mixup=dict(p=1.0, n=2)``), teacher and student on the same view;
- KL at T = 1 (``distance='kl', distance_kw=dict(t=1.0)``), no label term;
- Adam, lr 0.03, weight decay 3e-4, grad-clip 1.0, 5,000 warm-up steps, cosine decay;
- batch 4,096, 1,200 epochs (367,539 steps at 1,254,536 training images).

Run on a TPU VM (see launch/ and docs/scaling.md), teacher from a checkpoint:

    python -m jaxdistill.main --config=configs/imagenet_resnet.py \\
        --workdir=gs://BUCKET/i1k_r152x2_r50 --config.data.data_dir=gs://BUCKET/tfds \\
        --config.teacher.checkpoint=gs://BUCKET/teacher_r152x2

Presets: ``:smoke`` shrinks depth, width, batch, image size and steps (same modules,
blocks, objective, augmentation and mixup) for a test on mock data.
"""

from jaxdistill.config import base_config, loss_entry

EPOCHS = 1200
TRAIN_EXAMPLES = 1_254_536  # 98 % of the 1,281,167 ImageNet training images


def get_config(arg: str | None = None):
    c = base_config()
    c.teacher.module = 'resnet'
    c.teacher.kwargs = dict(stage_sizes=(3, 8, 36, 3), block='bottleneck', width=128,
                            num_classes=1000)
    c.student.module = 'resnet50'
    c.student.kwargs = dict(num_classes=1000)
    c.data.name = 'imagenet2012'
    c.data.train_split = 'train[:98%]'
    c.data.test_split = 'validation'
    c.data.batch_size = 4096
    c.data.eval_batch_size = 1024
    c.data.image_size = 224
    c.data.augment = 'inception_crop'
    c.data.mixup = 1.0
    c.train.steps = EPOCHS * TRAIN_EXAMPLES // c.data.batch_size  # 367,539
    c.train.log_every = 50
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 1000
    c.train.baseline = False  # a label-only ResNet-50 baseline is a separate, known number
    c.distill.losses = (loss_entry('forward_kl', weight=1.0, temperature=1.0),)
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 0.03
    c.optimizer.weight_decay = 3e-4
    c.optimizer.warmup_steps = 5000
    c.optimizer.clip_norm = 1.0
    c.optimizer.schedule = 'cosine'
    if arg == 'smoke':  # same modules, blocks and objective; depth, width, sizes for a CPU
        c.teacher.kwargs.update(stage_sizes=(1, 1, 1, 1), width=8)
        c.student.kwargs.update(stage_sizes=(1, 1, 1, 1), width=8)
        c.data.batch_size = 8
        c.data.eval_batch_size = 8
        c.data.image_size = 32
        c.data.train_split = 'train'
        c.train.steps = 2
        c.teacher.steps = 1
        c.train.eval_every = 0
        c.train.log_every = 1
        c.optimizer.warmup_steps = 1
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for configs/imagenet_resnet.py (known: 'smoke')")
    return c
