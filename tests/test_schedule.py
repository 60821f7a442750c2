"""Tests for cca_monitor.schedule: exact firing patterns, validation, value semantics."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cca_monitor.schedule import evenly_spaced, every_n_steps, explicit_steps, log_spaced


def _fired(schedule, num_steps: int) -> list[int]:
    return [step for step in range(num_steps) if schedule(step)]


FIRING_CASES = [
    (every_n_steps(1), list(range(12))),
    (every_n_steps(4), [0, 4, 8]),
    (every_n_steps(5, offset=2), [2, 7]),
    (every_n_steps(3, offset=11), [11]),
    (every_n_steps(20), [0]),
    (log_spaced(1, 1000, 4), [1, 10]),
    (log_spaced(0, 11, 4), [0, 1, 4, 11]),
    (log_spaced(0, 3, 10), [0, 1, 2, 3]),
    (log_spaced(2, 8, 3), [2, 4, 8]),
    (log_spaced(5, 5, 3), [5]),
    (log_spaced(3, 9, 1), [3]),
    (evenly_spaced(10, 4), [0, 3, 7, 10]),
    (evenly_spaced(11, 3), [0, 6, 11]),
    (evenly_spaced(2, 5), [0, 1, 2]),
    (evenly_spaced(0, 3), [0]),
    (explicit_steps([7, 0, 3, 7]), [0, 3, 7]),
    (explicit_steps(range(0, 12, 5)), [0, 5, 10]),
    (explicit_steps((100,)), []),
]


@pytest.mark.parametrize(
    ("schedule", "expected"), FIRING_CASES, ids=[repr(case[0]) for case in FIRING_CASES]
)
def test_firing_pattern(schedule, expected):
    assert _fired(schedule, 12) == expected


@pytest.mark.parametrize(
    ("schedule", "steps"),
    [
        (log_spaced(1, 1000, 4), (1, 10, 100, 1000)),
        (log_spaced(0, 999, 4), (0, 9, 99, 999)),
        (log_spaced(10, 10_000, 7), (10, 32, 100, 316, 1000, 3162, 10_000)),
        (log_spaced(0, 3, 10), (0, 1, 2, 3)),
        (evenly_spaced(100, 5), (0, 25, 50, 75, 100)),
        (evenly_spaced(1, 2), (0, 1)),
        (evenly_spaced(5, 4), (0, 2, 3, 5)),
        (explicit_steps([3, 1, 2]), (1, 2, 3)),
    ],
    ids=repr,
)
def test_steps_attribute(schedule, steps):
    assert schedule.steps == steps
    assert _fired(schedule, steps[-1] + 2) == list(steps)


@pytest.mark.parametrize(("first", "last"), [(0, 1), (0, 50_000), (1, 7), (123, 4567)])
@pytest.mark.parametrize("num", [2, 5, 30])
def test_log_spaced_includes_both_ends(first, last, num):
    steps = log_spaced(first, last, num).steps
    assert steps[0] == first
    assert steps[-1] == last
    assert len(steps) <= num


@pytest.mark.parametrize("total", [0, 1, 9, 1000, 12_345])
@pytest.mark.parametrize("num", [2, 3, 50])
def test_evenly_spaced_includes_both_ends(total, num):
    steps = evenly_spaced(total, num).steps
    assert steps[0] == 0
    assert steps[-1] == total
    assert len(steps) == min(num, total + 1)


def test_negative_steps_never_fire():
    for schedule in (every_n_steps(1), log_spaced(0, 5, 3), evenly_spaced(4, 2)):
        assert not schedule(-1)
    assert not every_n_steps(5, offset=3)(-2)


@pytest.mark.parametrize(
    "schedule",
    [every_n_steps(3, 1), log_spaced(0, 100, 5), evenly_spaced(50, 6), explicit_steps([4, 2])],
    ids=lambda s: type(s).__name__,
)
def test_picklable_and_comparable(schedule):
    restored = pickle.loads(pickle.dumps(schedule))
    assert restored == schedule
    assert hash(restored) == hash(schedule)
    assert _fired(restored, 200) == _fired(schedule, 200)


def test_equality_follows_arguments():
    assert every_n_steps(3) == every_n_steps(3, offset=0)
    assert every_n_steps(3) != every_n_steps(3, offset=1)
    assert explicit_steps([2, 1, 2]) == explicit_steps((1, 2))


def test_schedules_are_frozen():
    with pytest.raises(AttributeError):
        every_n_steps(2).n = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        explicit_steps([1]).steps = (2,)  # type: ignore[misc]


def test_repr_is_readable():
    assert repr(every_n_steps(5, offset=1)) == "every_n_steps(n=5, offset=1)"
    assert repr(log_spaced(0, 10, 3)) == "log_spaced(first=0, last=10, num=3)"
    assert repr(evenly_spaced(10, 3)) == "evenly_spaced(total_steps=10, num=3)"
    assert repr(explicit_steps([2, 1])) == "explicit_steps(steps=(1, 2))"


def test_numpy_integers_accepted():
    assert explicit_steps(np.array([3, 1])).steps == (1, 3)
    assert _fired(every_n_steps(np.int64(4)), 9) == [0, 4, 8]


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: every_n_steps(0), ValueError, "n must be >= 1, got 0"),
        (lambda: every_n_steps(2, offset=-1), ValueError, "offset must be >= 0, got -1"),
        (lambda: every_n_steps(2.0), TypeError, "n must be an int, got 2.0"),
        (lambda: every_n_steps(True), TypeError, "n must be an int, got True"),
        (lambda: log_spaced(-1, 10, 3), ValueError, "first must be >= 0, got -1"),
        (lambda: log_spaced(10, 5, 3), ValueError, "last must be >= 10, got 5"),
        (lambda: log_spaced(0, 10, 0), ValueError, "num must be >= 1, got 0"),
        (lambda: log_spaced(0, 10.5, 3), TypeError, "last must be an int"),
        (lambda: evenly_spaced(-5, 3), ValueError, "total_steps must be >= 0, got -5"),
        (lambda: evenly_spaced(10, 1), ValueError, "num must be >= 2, got 1"),
        (lambda: evenly_spaced(float("inf"), 3), TypeError, "total_steps must be an int, got inf"),
        (lambda: explicit_steps([]), ValueError, "steps is empty"),
        (lambda: explicit_steps([1, -2]), ValueError, "steps entry must be >= 0, got -2"),
        (lambda: explicit_steps([1, 2.5]), TypeError, "steps entry must be an int, got 2.5"),
        (lambda: explicit_steps(5), TypeError, "steps must be an iterable of ints, got 5"),
        (lambda: explicit_steps("12"), TypeError, "steps must be an iterable of ints"),
    ],
    ids=[
        "every-n-zero",
        "every-offset-negative",
        "every-n-float",
        "every-n-bool",
        "log-first-negative",
        "log-last-below-first",
        "log-num-zero",
        "log-last-float",
        "even-total-negative",
        "even-num-one",
        "even-total-inf",
        "explicit-empty",
        "explicit-negative",
        "explicit-float",
        "explicit-int",
        "explicit-str",
    ],
)
def test_invalid_arguments(factory, error, match):
    with pytest.raises(error, match=match):
        factory()
