"""Warm-up + linear/cosine learning-rate schedules, alone and through fit."""
import math

import pytest
import torch

from executors.errors import InputError
from executors.tuner.callbacks import Callback
from executors.tuner.schedules import make_schedule, schedule_factor
from executors.tuner.trainer import fit
from tests.tuner.helpers import blobs, mlp


def test_factors_hand_computed():
    # T = 10, W = 2: warm-up 1/3, 2/3, then linear 1, 7/8, ..., 1/8
    assert [schedule_factor(s, 10, 2, 'linear') for s in range(10)] == pytest.approx(
        [1 / 3, 2 / 3, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert schedule_factor(2, 10, 2, 'cosine') == pytest.approx(1.0)
    assert schedule_factor(6, 10, 2, 'cosine') == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert [schedule_factor(s, 4, 0, 'constant') for s in range(4)] == [1, 1, 1, 1]


def test_make_schedule_drives_the_optimizer():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    schedule = make_schedule(optimizer, 'linear', total_steps=10, warmup_ratio=0.2)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.1 * f for f in [1 / 3, 2 / 3, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]])


class _LearningRates(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_begin(self, tuner):
        self.values.append(tuner.optimizer.param_groups[0]['lr'])


def test_fit_warmup_then_linear_decay_over_all_epochs():
    x, y = blobs(per_class=8, classes=3)  # 24 items, batch 8: 3 steps per epoch, 6 in all
    rates = _LearningRates()
    fit(mlp(4, 8), (x, y), epochs=2, batch_size=8, learning_rate=0.01, optimizer='adamw', weight_decay=0.1,
        scheduler='linear', warmup_ratio=0.34, callbacks=[rates], progress_bar=False, seed=0)
    w = round(0.34 * 6)  # 2
    assert rates.values == pytest.approx([0.01 * schedule_factor(s, 6, w, 'linear') for s in range(6)])


def test_fit_passes_weight_decay_to_adamw():
    x, y = blobs()
    seen = {}

    class Grab(Callback):
        def on_fit_begin(self, tuner):
            seen.update(tuner.optimizer.param_groups[0], type=type(tuner.optimizer))

    fit(mlp(4, 8), (x, y), epochs=1, batch_size=10, optimizer='adamw', weight_decay=0.05, callbacks=[Grab()],
        progress_bar=False)
    assert seen['type'] is torch.optim.AdamW and seen['weight_decay'] == 0.05


@pytest.mark.parametrize('settings, field', [
    ({'scheduler': 'step'}, 'scheduler'),
    ({'scheduler': 'linear', 'warmup_ratio': 1.0}, 'warmup_ratio'),
    ({'warmup_ratio': -0.1}, 'warmup_ratio'),
    ({'weight_decay': -1}, 'weight_decay'),
    ({'weight_decay': 'a lot'}, 'weight_decay'),
    ({'scheduler': 'linear', 'configure_optimizer': lambda m: torch.optim.SGD(m.parameters(), lr=0.1)},
     'scheduler'),
])
def test_bad_settings_name_the_field(settings, field):
    x, y = blobs()
    with pytest.raises(InputError, match=f'^{field}:'):
        fit(mlp(4, 8), (x, y), epochs=1, progress_bar=False, **settings)
