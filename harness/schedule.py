"""The official learning-rate schedule: timm 0.4.5 ``CosineLRScheduler``, stepped per epoch.

Settings of the official recipes (their fine-tuning configs): t_initial = 300, lr_min = 1e-6,
warmup_t = 10, warmup_lr_init = 1e-6, warmup_prefix = False, cycle_limit = 1:

    f(t) = warmup_lr + t * (lr - warmup_lr) / warmup_t                      t < warmup_t
    f(t) = min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * t / t_initial))     warmup_t <= t < t_initial
    f(t) = min_lr                                                           t >= t_initial

The cosine runs on the absolute t (no warm-up prefix). The runners call ``step(epoch)`` at the
end of epoch ``epoch``, so with the one-epoch lag the lr used during epoch e is warmup_lr for
e = 0 (set when the scheduler is built) and f(e - 1) for e >= 1: epochs 0 and 1 both run at
warmup_lr. Without the lag, epoch e runs at f(e).
"""
from __future__ import annotations

import math

from harness.config import ScheduleConfig


def timm_cosine(t: int, lr: float, t_initial: int, warmup_t: int, warmup_lr: float,
                min_lr: float) -> float:
    """timm 0.4.5 CosineLRScheduler._get_lr(t) with cycle_limit 1, t_mul 1, decay_rate 1."""
    if t < warmup_t:
        return warmup_lr + t * (lr - warmup_lr) / warmup_t
    if t >= t_initial:
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t / t_initial))


def epoch_lr(epoch: int, lr: float, sched: ScheduleConfig) -> float:
    """The learning rate in force during ``epoch`` (0-based)."""
    t_initial = sched.cosine_epochs if sched.cosine_epochs is not None else (
        sched.epochs - 1 if sched.lag else sched.epochs)
    f = lambda t: timm_cosine(t, lr, t_initial, sched.warmup_epochs, sched.warmup_lr, sched.min_lr)  # noqa: E731
    if not sched.lag:
        return f(epoch)
    if epoch == 0:
        # timm sets warmup_lr_init at construction when there is a warm-up, else the base lr
        return sched.warmup_lr if sched.warmup_epochs > 0 else lr
    return f(epoch - 1)


def lr_table(lr: float, sched: ScheduleConfig) -> list[float]:
    """The lr of every epoch of the run."""
    return [epoch_lr(e, lr, sched) for e in range(sched.epochs)]


class EpochLR:
    """Sets every param group's lr at the start of each epoch; its state is just the epoch."""

    def __init__(self, optimizer, lr: float, sched: ScheduleConfig):
        self.optimizer, self.lr, self.sched = optimizer, lr, sched
        self.epoch = 0

    def set_epoch(self, epoch: int) -> float:
        self.epoch = epoch
        value = epoch_lr(epoch, self.lr, self.sched)
        for group in self.optimizer.param_groups:
            group["lr"] = value
        return value

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
