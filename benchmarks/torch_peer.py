"""The PyTorch peer: the same two pairs and the same KD objective as an idiomatic PyTorch loop.

Only imported when torch is installed (``pip install -e '.[bench]'``; the CPU build from
PyTorch's own index is enough). The architectures repeat `jaxdistill.models` layer for layer
(ResNet-20 with BatchNorm, the two-block CNN, the pre-norm RoPE/SwiGLU decoder with tied
embeddings), so both frameworks do the same FLOPs; what differs is what a PyTorch user would
write: NCHW images, ``F.scaled_dot_product_attention`` with ``is_causal=True``, the teacher
under ``torch.no_grad()`` in ``eval()`` mode, ``AdamW`` + ``clip_grad_norm_`` + a warm-up
cosine ``LambdaLR`` as jaxdistill's default optimizer does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.pairs import NUM_CLASSES, Pair


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv0 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(c_out, momentum=0.1, eps=1e-5)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=0.1, eps=1e-5)
        self.proj = None
        if stride != 1 or c_in != c_out:
            self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out, momentum=0.1, eps=1e-5))

    def forward(self, x):
        y = self.bn1(self.conv1(F.relu(self.bn0(self.conv0(x)))))
        return F.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet20(nn.Module):
    """CIFAR ResNet-20: a 3x3 stem, three stages of three blocks (16/32/64 filters)."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width, momentum=0.1, eps=1e-5), nn.ReLU())
        blocks, c_in = [], width
        for i in range(3):
            for j in range(3):
                c_out = width * 2**i
                blocks.append(BasicBlock(c_in, c_out, 2 if i > 0 and j == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class CNN(nn.Module):
    """`jaxdistill.models.CNN(channels=(16, 32), dense=64)`."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.dense, self.head = nn.Linear(32, 64), nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv0(x)), 2)
        x = F.relu(self.conv1(x)).mean(dim=(2, 3))
        return self.head(F.relu(self.dense(x)))


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate-half RoPE on ``[B, H, T, D]``, as `jaxdistill.models.decoder.rope`."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * inv_freq
    sin, cos = angles.sin(), angles.cos()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * mlp, bias=False)
        self.down = nn.Linear(mlp, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Decoder(nn.Module):
    """`jaxdistill.models.Decoder` with tied embeddings and as many KV heads as query heads."""

    def __init__(self, vocab_size: int, num_layers: int, d_model: int, num_heads: int,
                 mlp_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, mlp_dim)
                                    for _ in range(num_layers))
        self.final_norm = nn.RMSNorm(d_model, eps=1e-6)

    def forward(self, tokens):
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x) @ self.embedding.weight.T


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    """jaxdistill's default: linear warm-up, then cosine decay to 0 (as a LambdaLR factor)."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) /
                                   max(total - warmup, 1)))
    return factor


def models(pair: Pair) -> tuple[nn.Module, nn.Module]:
    if pair.name == 'image':
        return ResNet20(), CNN()
    kw = lambda cfg: {k: cfg[k] for k in ('vocab_size', 'num_layers', 'd_model', 'num_heads',
                                          'mlp_dim')}
    return Decoder(**kw(pair.decoders[0])), Decoder(**kw(pair.decoders[1]))


def kd_runner(pair: Pair, steps_for_schedule: int = 1000) -> Callable[[], None]:
    """One call = one KD step: teacher under no_grad, student forward/backward, AdamW."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    teacher, student = models(pair)
    teacher.eval()
    student.train()
    opt_cfg = pair.optimizer_config()
    optimizer = torch.optim.AdamW(student.parameters(), lr=opt_cfg.learning_rate,
                                  betas=(opt_cfg.b1, opt_cfg.b2),
                                  weight_decay=opt_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(opt_cfg.warmup_steps, steps_for_schedule))
    kd, ce = pair.losses
    if pair.name == 'image':
        x = torch.from_numpy(np.ascontiguousarray(pair.batch['image'].transpose(0, 3, 1, 2)))
        y = torch.from_numpy(pair.batch['label']).long()
        mask = torch.ones(y.shape)
    else:
        x = torch.from_numpy(pair.batch['inputs']).long()
        y = torch.from_numpy(pair.batch['targets']).long()
        mask = torch.from_numpy(pair.batch['mask']).float()

    def step() -> None:
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        temp = kd.temperature
        per_kd = temp**2 * F.kl_div(F.log_softmax(s_logits / temp, -1),
                                    F.log_softmax(t_logits / temp, -1),
                                    reduction='none', log_target=True).sum(-1)
        per_ce = F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]), y.reshape(-1),
                                 reduction='none').view(y.shape)
        loss = ((kd.weight * per_kd + ce.weight * per_ce) * mask).sum() / mask.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), opt_cfg.clip_norm)
        optimizer.step()
        scheduler.step()

    return step


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
