"""Numeric settings checked where they enter: finite, of the right kind, in range.

``float("nan")`` compares false with everything, so ``if timeout <= 0`` lets it through, and
``inf`` makes every deadline unreachable; both arrive easily from text (a URL query, a TOML
file, an environment variable). Every number a backend takes goes through
:func:`check_number`, whose error names the setting and the range allowed.
"""

from __future__ import annotations

import math
from numbers import Real

from melange.exceptions import ConfigurationError


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    integer: bool = False,
) -> float:
    """``value`` as a float, or a ``ConfigurationError`` naming ``name`` and the range.

    Args:
        name: The setting, as the user wrote it (``"visibility_timeout"``).
        value: What was given: an ``int`` or ``float`` (``bool`` is refused).
        minimum: The smallest value allowed (inclusive).
        maximum: The largest value allowed (inclusive).
        positive: Whether the value must be above zero.
        integer: Whether the value must be a whole number.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    wanted = _describe(minimum, maximum, positive, integer)
    if integer and not number.is_integer():
        raise ConfigurationError(f"{name} must be {wanted}, got {value!r}")
    if (
        (positive and number <= 0)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
    ):
        raise ConfigurationError(f"{name} must be {wanted}, got {value!r}")
    return number


def check_optional_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    integer: bool = False,
) -> float | None:
    """:func:`check_number`, letting ``None`` through."""
    if value is None:
        return None
    return check_number(
        name, value, minimum=minimum, maximum=maximum, positive=positive, integer=integer
    )


def _describe(minimum: float | None, maximum: float | None, positive: bool, integer: bool) -> str:
    kind = "a whole number" if integer else "a number"
    low = "above 0" if positive and (minimum is None or minimum <= 0) else None
    if minimum is not None and low is None:
        low = f"at least {_show(minimum)}"
    parts = [kind]
    if low is not None:
        parts.append(low)
    if maximum is not None:
        parts.append(f"at most {_show(maximum)}")
    return " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if parts[1:] else "")


def _show(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


__all__ = ["check_number", "check_optional_number"]
