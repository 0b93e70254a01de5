"""Learning-rate schedules with linear warm-up, stepped once per optimiser step (or per epoch).

With ``T`` scheduled steps in the whole fit, ``W = round(warmup_ratio * T)`` warm-up steps and
``s`` the number of steps already taken, the learning rate of the next step is ``lr * f(s)``::

    warm-up (s < W):   f(s) = (s + 1) / (W + 1)
    after it:          constant  f(s) = 1
                       linear    f(s) = max(0, (T - s) / (T - W))
                       cosine    f(s) = 0.5 * (1 + cos(pi * min(1, (s - W) / (T - W))))

so the first step runs at ``lr / (W + 1)`` (not at 0), the peak ``lr`` comes right after the
warm-up and the linear schedule's last step runs at ``lr / (T - W)``.
"""
import math

import torch

from executors.errors import InputError

SCHEDULES = ('constant', 'linear', 'cosine')


def check_warmup_ratio(warmup_ratio) -> float:
    if isinstance(warmup_ratio, bool) or not isinstance(warmup_ratio, (int, float)) \
            or not 0 <= warmup_ratio < 1:
        raise InputError(f'warmup_ratio: must be a number in [0, 1), got {warmup_ratio!r}')
    return float(warmup_ratio)


def check_schedule(name) -> str:
    if name not in SCHEDULES:
        raise InputError(f'scheduler: unknown {name!r}; use one of {", ".join(SCHEDULES)} (or none)')
    return name


def schedule_factor(step: int, total_steps: int, warmup_steps: int, name: str) -> float:
    """``f(step)`` of the module docstring."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if name == 'constant':
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / decay_steps
    if name == 'linear':
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                  warmup_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``f`` (module docstring) over ``total_steps`` scheduler steps."""
    check_schedule(name)
    warmup_ratio = check_warmup_ratio(warmup_ratio)
    total_steps = max(1, int(total_steps))
    warmup_steps = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, total_steps, warmup_steps, name))
