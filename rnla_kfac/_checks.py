"""Argument checks and schedules shared by the preconditioner, the optimizer and inverses.

Messages name the argument, the constraint and the value received. A *schedule* is a
number or a callable of the step returning one; :class:`Schedule` validates numbers
once and the values of callables each time they are evaluated.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

DAMPING_MODES = ("relative", "absolute", "pi")
FISHER_TYPES = ("empirical", "mc")
FACTOR_STARTS = ("identity", "scaled_identity", "batch")

Number = int | float
ScheduleLike = Number | Callable[[int], Number]
"""A number, or a callable of the step (an int counted from 0) returning one."""


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a bool, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Number:
    """Validate a finite real (or integer) number within optional bounds.

    Raises ``TypeError`` for non-numbers (and bools, and non-integers when ``integer``),
    ``ValueError`` for non-finite values or values outside the bounds.
    """
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an integer" if integer else "a real number"
        raise TypeError(f"{name}: expected {expected}, got {value!r}")
    value = int(value) if integer else float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name}: must be {'>=' if low_inclusive else '>'} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise ValueError(f"{name}: must be {'<=' if high_inclusive else '<'} {high}, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """A real number ``> 0``.

    Examples
    --------
    >>> check_positive(0.1, "damping")
    0.1
    """
    return check_number(value, name, low=0, low_inclusive=False)


def check_non_negative(value: Any, name: str) -> float:
    """A real number ``>= 0``.

    Examples
    --------
    >>> check_non_negative(0, "momentum")
    0.0
    """
    return check_number(value, name, low=0)


def check_positive_int(value: Any, name: str) -> int:
    """An integer ``>= 1`` (steps between two updates, sample sizes, ranks).

    Examples
    --------
    >>> check_positive_int(10, "factor_update_period")
    10
    """
    return check_number(value, name, integer=True, low=1)


def check_count(value: Any, name: str) -> int:
    """An integer ``>= 0`` (oversampling, power iterations, seeds).

    Examples
    --------
    >>> check_count(0, "n_iter")
    0
    """
    return check_number(value, name, integer=True, low=0)


def check_decay(value: Any, name: str) -> float:
    """An exponential-average decay in ``[0, 1)``.

    Examples
    --------
    >>> check_decay(0.95, "factor_decay")
    0.95
    """
    return check_number(value, name, low=0, high=1, high_inclusive=False)


def check_tolerance(value: Any, name: str) -> float:
    """A relative tolerance in ``(0, 1]``.

    Examples
    --------
    >>> check_tolerance(1 / 33, "rank_rtol") == 1 / 33
    True
    """
    return check_number(value, name, low=0, high=1, low_inclusive=False)


def check_floating_dtype(value: Any, name: str) -> Any:
    """Validate an optional floating torch dtype: a ``torch.dtype``, its name or ``"auto"``.

    Returns ``None``, ``"auto"`` (resolved per device by
    :func:`~rnla_kfac.precision.low_precision_dtype`) or the ``torch.dtype``; raises
    ``TypeError`` for anything else.

    Examples
    --------
    >>> check_floating_dtype("bfloat16", "statistics_dtype"), check_floating_dtype("auto", "x")
    (torch.bfloat16, 'auto')
    """
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"{name}: expected None or a floating torch dtype such as torch.bfloat16 "
            f"(or its name, or 'auto'), got {value!r}"
        )
    return dtype


def check_rank(value: Any, name: str = "rank", *, allow_none: bool = False) -> int | str | None:
    """Validate a rank: a positive integer, ``"auto"`` (or ``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{name}: expected a positive integer or 'auto', got {value!r}")
        return value
    return check_number(value, name, integer=True, low=1)


class Schedule:
    """A hyperparameter that is a number or a callable of the step.

    Parameters
    ----------
    value : number or callable
        The constant, or ``f(step) -> number``.
    name : str
        Argument name used in error messages.
    check : callable
        ``check(value, name) -> value``; raises on invalid values. Applied at
        construction to constants and at each evaluation to callables' results.

    Examples
    --------
    >>> s = Schedule(lambda step: 0.1 if step < 10 else 0.01, "damping", check_positive)
    >>> s(0), s(10)
    (0.1, 0.01)
    """

    def __init__(self, value: Any, name: str, check: Callable[[Any, str], Any]):
        self.name = name
        self._check = check
        self._callable = callable(value)
        self._value = value if self._callable else check(value, name)

    def __call__(self, step: int) -> Any:
        """The value at ``step`` (validated)."""
        if not self._callable:
            return self._value
        return self._check(self._value(step), f"{self.name} (schedule value at step {step})")

    def __repr__(self) -> str:
        return f"Schedule({self.name}={self._value!r})"
