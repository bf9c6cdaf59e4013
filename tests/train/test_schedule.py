"""The learning-rate schedules: warm-up, the constant phase, where the decay starts and where it ends."""
import math

import pytest

from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.schedule import lr_factor


def _factors(total, schedule, **kw):
    kw.setdefault("warmup_fraction", 0.1)
    return [lr_factor(step, total, schedule, **kw) for step in range(total)]


@pytest.mark.parametrize("total", [10, 37, 100, 1001])
def test_constant_decay_shape(total):
    f = _factors(total, "constant-decay", decay_fraction=0.2)
    warm, decay = int(0.1 * total), int(round(0.2 * total))
    # Linear warm-up that reaches the peak on its last step.
    assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    # Flat at the peak until the decay starts, then strictly falling to a last step just above 0.
    assert all(v == 1.0 for v in f[warm:total - decay])
    tail = f[total - decay:]
    assert all(a > b for a, b in zip(tail, tail[1:]))
    assert tail[0] == pytest.approx(1.0)
    assert tail[-1] == pytest.approx(1 / decay)
    # Linear: equal drops.
    drops = [a - b for a, b in zip(tail, tail[1:])]
    assert max(drops) == pytest.approx(min(drops))


def test_constant_decay_ends_at_the_floor_ratio():
    f = _factors(100, "constant-decay", decay_fraction=0.5, min_lr_ratio=0.3)
    assert min(f[10:]) > 0.3
    assert f[-1] == pytest.approx(0.3 + 0.7 / 50)
    assert f[50] == 1.0 and f[49] == 1.0


def test_constant_decay_without_decay_is_constant():
    f = _factors(50, "constant-decay", decay_fraction=0.0)
    assert f[5:] == [1.0] * 45


def test_cosine_is_the_previous_schedule():
    total, warm = 200, 20
    f = _factors(total, "cosine", min_lr_ratio=0.1)
    for step in range(warm, total):
        progress = (step - warm) / (total - warm)
        assert f[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def test_decay_never_starts_inside_the_warmup():
    # 90% warm-up and a 50% decay: the decay starts after the warm-up instead of overlapping it.
    f = _factors(20, "constant-decay", warmup_fraction=0.9, decay_fraction=0.5)
    assert f[:18] == pytest.approx([(s + 1) / 18 for s in range(18)])
    assert f[18] == pytest.approx(1.0) and f[19] == pytest.approx(0.5)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="--lr-schedule .linear.: must be one of"):
        TrainerConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="--decay-fraction 1.5: must be >= 0 and <= 1"):
        TrainerConfig(decay_fraction=1.5)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(0, 10, "step", warmup_fraction=0.0)
