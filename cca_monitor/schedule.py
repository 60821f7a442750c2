"""When to take a snapshot: schedules are plain ``step -> bool`` callables.

A schedule is called with ``trainer.global_step`` and answers whether a snapshot is taken at that
step. Any callable with that signature works; the ones here are small frozen dataclasses, so
they are picklable, comparable and have a readable ``repr``. Their lower-case names read like
the functions they stand in for. Schedules with a finite set of steps expose it as the sorted
tuple ``.steps``. Negative steps never fire.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["evenly_spaced", "every_n_steps", "explicit_steps", "log_spaced"]


@dataclass(frozen=True)
class every_n_steps:
    """Fire at ``offset``, ``offset + n``, ``offset + 2n``, ...

    Args:
        n: Steps between snapshots, at least 1.
        offset: First step that fires, at least 0. Steps before it never fire.

    Raises:
        ValueError: If ``n < 1`` or ``offset < 0``.
        TypeError: If an argument is not an int.

    Examples:
        >>> schedule = every_n_steps(3, offset=1)
        >>> [step for step in range(10) if schedule(step)]
        [1, 4, 7]
    """

    n: int
    offset: int = 0

    def __post_init__(self) -> None:
        _check_int("n", self.n, minimum=1)
        _check_int("offset", self.offset, minimum=0)

    def __call__(self, step: int) -> bool:
        """Whether to take a snapshot at ``step``."""
        return step >= self.offset and (step - self.offset) % self.n == 0


@dataclass(frozen=True)
class log_spaced:
    """Fire at ``num`` logarithmically spaced steps from ``first`` to ``last``, both included.

    The steps are ``first * (last / first) ** (i / (num - 1))`` for ``i = 0, ..., num - 1``,
    rounded to the nearest integer; steps that round to the same integer fire once, so
    :attr:`steps` may hold fewer than ``num`` steps. When ``first == 0`` the spacing is
    logarithmic in ``step + 1`` instead (the same formula applied to ``first + 1`` and
    ``last + 1``, then shifted back by one). With ``num == 1`` only ``first`` fires.

    Args:
        first: First step, at least 0.
        last: Last step, at least ``first``.
        num: Number of steps requested, at least 1.

    Attributes:
        steps: The sorted tuple of steps that fire.

    Raises:
        ValueError: If ``first < 0``, ``last < first`` or ``num < 1``.
        TypeError: If an argument is not an int.

    Examples:
        >>> log_spaced(1, 1000, 4).steps
        (1, 10, 100, 1000)
        >>> log_spaced(0, 99, 3).steps
        (0, 9, 99)
    """

    first: int
    last: int
    num: int
    steps: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_int("first", self.first, minimum=0)
        _check_int("last", self.last, minimum=self.first)
        _check_int("num", self.num, minimum=1)
        shift = 1 if self.first == 0 else 0
        low, high = self.first + shift, self.last + shift
        exponents = (i / (self.num - 1) for i in range(self.num)) if self.num > 1 else (0.0,)
        steps = {round(low * (high / low) ** exponent) - shift for exponent in exponents}
        object.__setattr__(self, "steps", tuple(sorted(steps)))

    def __call__(self, step: int) -> bool:
        """Whether to take a snapshot at ``step``."""
        return _contains(self.steps, step)


@dataclass(frozen=True)
class evenly_spaced:
    """Fire at about ``num`` steps spread evenly over ``[0, total_steps]``, both ends included.

    The steps are ``round(i * total_steps / (num - 1))`` for ``i = 0, ..., num - 1`` (halves
    round up), each once, so fewer than ``num`` steps fire when ``total_steps < num - 1``.
    Step 0 (before any update) and ``total_steps`` (after the last one) always fire.

    Args:
        total_steps: The last step, e.g. ``trainer.estimated_stepping_batches``; at least 0.
        num: Number of steps requested, at least 2 (the two ends).

    Attributes:
        steps: The sorted tuple of steps that fire.

    Raises:
        ValueError: If ``total_steps < 0`` or ``num < 2``.
        TypeError: If an argument is not an int (for example an infinite step estimate).

    Examples:
        >>> evenly_spaced(10, 4).steps
        (0, 3, 7, 10)
    """

    total_steps: int
    num: int
    steps: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_int("total_steps", self.total_steps, minimum=0)
        _check_int("num", self.num, minimum=2)
        intervals = self.num - 1
        steps = {(2 * i * self.total_steps + intervals) // (2 * intervals) for i in range(self.num)}
        object.__setattr__(self, "steps", tuple(sorted(steps)))

    def __call__(self, step: int) -> bool:
        """Whether to take a snapshot at ``step``."""
        return _contains(self.steps, step)


@dataclass(frozen=True, init=False)
class explicit_steps:
    """Fire at the given steps.

    Args:
        steps: Any iterable of non-negative ints; duplicates are ignored and order does not
            matter.

    Attributes:
        steps: The sorted tuple of distinct steps that fire.

    Raises:
        ValueError: If ``steps`` is empty or holds a negative step.
        TypeError: If ``steps`` is not an iterable of ints.

    Examples:
        >>> schedule = explicit_steps([50, 0, 10, 50])
        >>> schedule.steps
        (0, 10, 50)
        >>> schedule(10), schedule(11)
        (True, False)
    """

    steps: tuple[int, ...]

    def __init__(self, steps: Iterable[int]) -> None:
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
            raise TypeError(f"steps must be an iterable of ints, got {steps!r}.")
        values = tuple(steps)
        if not values:
            raise ValueError("steps is empty; give at least one step at which to snapshot.")
        for value in values:
            _check_int("steps entry", value, minimum=0)
        object.__setattr__(self, "steps", tuple(sorted({operator.index(v) for v in values})))

    def __call__(self, step: int) -> bool:
        """Whether to take a snapshot at ``step``."""
        return _contains(self.steps, step)


def _contains(sorted_steps: tuple[int, ...], step: int) -> bool:
    """Whether ``step`` is in the sorted tuple ``sorted_steps`` (binary search)."""
    position = bisect.bisect_left(sorted_steps, step)
    return position < len(sorted_steps) and sorted_steps[position] == step


def _check_int(name: str, value: object, *, minimum: int) -> None:
    """Raise unless ``value`` is an int (Python or NumPy, not bool) of at least ``minimum``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        integer = operator.index(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}.") from None
    if integer < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
