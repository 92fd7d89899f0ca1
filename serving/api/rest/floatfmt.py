"""Floats written the way TF Serving writes them in JSON.

TF Serving (`util/json_tensor.cc` WriteDecimal) prints a float with
`absl::StrCat` (6 significant digits, like printf `%g`); when that text does
not parse back to the same value it uses `%.9g` (float) or `%.17g` (double).
A `.0` is appended when the text has neither `.` nor `e`. NaN and infinities
are the bare tokens `NaN`, `Infinity`, `-Infinity`.

So 0.1f is `0.1`, 1/3f is `0.333333343` (not the shortest `0.33333334`),
9e6 is `9e+06` and 1234567f is `1234567.0`.

`format_float32` does this for a whole array with NumPy (no per-element
Python) and falls back to the exact scalar code for the rare values where
binary→decimal rounding is too close to call in float64 arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

_F32 = np.float32


def _parse_f32(text: str) -> float:
    """Decimal text → nearest float32 (correctly rounded, like absl::SimpleAtof)."""
    d = float(text)
    f = _F32(d)
    if not math.isfinite(d) or float(f) == d:
        return float(f)
    # Rounding to double first can only mislead when the double lands exactly
    # on the midpoint between two float32 neighbours.
    toward = _F32(np.inf) if d > float(f) else _F32(-np.inf)
    other = np.nextafter(f, toward)
    mid = (float(f) + float(other)) / 2
    if d != mid:
        return float(f)
    exact = Fraction(text)
    if exact == Fraction(mid):
        return float(f) if int(f.view(np.uint32)) % 2 == 0 else float(other)  # ties-to-even
    return float(other) if (exact > Fraction(mid)) == (other > f) else float(f)


def _finish(text: str) -> str:
    if "." not in text and "e" not in text:
        return text + ".0"
    return text


def format_scalar(value: float, double: bool = False) -> str:
    """One value, exactly as TF Serving writes it (reference implementation)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%.6g" % value  # noqa: UP031 - printf semantics are the point
    if double:
        if float(text) != value:
            text = "%.17g" % value  # noqa: UP031
    elif _parse_f32(text) != value:
        text = "%.9g" % value  # noqa: UP031
    return _finish(text)


def _round_sig(
    a: np.ndarray, e: np.ndarray, digits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round positive `a` to `digits` significant digits: mantissa, exponent, unsure."""
    lo, hi = 10.0 ** (digits - 1), 10.0**digits
    scaled = a * np.power(10.0, (digits - 1 - e).astype(np.float64))
    low = scaled < lo
    high = scaled >= hi
    if low.any() or high.any():
        e = e - low + high
        scaled = a * np.power(10.0, (digits - 1 - e).astype(np.float64))
    floor = np.floor(scaled)
    unsure = np.abs(scaled - floor - 0.5) <= 4e-16 * scaled
    m = np.rint(scaled)
    carry = m >= hi
    if carry.any():
        m = np.where(carry, lo, m)
        e = e + carry
    return m.astype(np.int64), e, unsure


def _decimal_value(m: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m · 10^k correctly rounded to float64 where |k| <= 22 (else unsure)."""
    kk = np.clip(k, -22, 22).astype(np.float64)
    pos = np.power(10.0, np.abs(kk))
    value = np.where(k >= 0, m * pos, m / pos)
    return value, np.abs(k) > 22


_LITERAL = 4


def float_specs(values: np.ndarray, double: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Printf directives for an array of floats, decided with NumPy.

    Returns `(specs, numbers)`: `specs` (object array, same shape) holds for each
    element either a directive (`%.6g`, `%.9g`/`%.17g`, each maybe followed by a
    literal `.0`) or a literal text (NaN, infinities, and the rare values where
    float64 arithmetic cannot decide the rounding: those get `format_scalar`);
    `numbers` holds, in order, the values the directives consume. Python's
    `%` formatting is exact (correctly rounded), so `fmt % tuple(numbers)`
    yields TF Serving's text without a Python loop per element.
    """
    dtype = np.float64 if double else np.float32
    x = np.asarray(values).astype(dtype).reshape(-1)
    wide = "%.17g" if double else "%.9g"
    wide_digits = 17 if double else 9
    codes = np.full(x.shape, _LITERAL, dtype=np.int8)
    literals: dict[int, str] = {}
    finite = np.isfinite(x)
    if finite.any():
        xs = x[finite]
        a = np.abs(xs).astype(np.float64)
        zero = a == 0
        a_safe = np.where(zero, 1.0, a)
        e = np.floor(np.log10(a_safe)).astype(np.int64)
        m6, e6, unsure = _round_sig(a_safe, e, 6)
        d6, unsure_k = _decimal_value(m6, e6 - 5)
        unsure |= unsure_k
        if double:
            ok6 = d6 == a_safe
        else:
            with np.errstate(over="ignore"):
                f6 = d6.astype(np.float32)
            ok6 = f6.astype(np.float64) == a_safe
            # decimal → float64 → float32 rounds twice; only an exact midpoint is unsafe.
            toward = np.where(d6 > f6, np.float32(np.inf), np.float32(-np.inf))
            mid = (f6.astype(np.float64) + np.nextafter(f6, toward).astype(np.float64)) / 2
            unsure |= d6 == mid
            if not ok6.all():
                # %.9g: only a tie at the 10th digit is unsafe for our float64 arithmetic.
                unsure |= ~ok6 & _round_sig(a_safe, e, 9)[2]
        ok6 |= zero
        unsure &= ~zero
        integral = a == np.floor(a)
        dot0 = integral & (a < np.where(ok6, 1e6, 10.0**wide_digits))
        codes[finite] = np.where(ok6, 0, 2) + dot0
        if unsure.any():
            idx = np.flatnonzero(finite)[unsure]
            codes[idx] = _LITERAL
            for i in idx.tolist():
                literals[i] = format_scalar(float(x[i]), double)
    table = np.array(["%.6g", "%.6g.0", wide, wide + ".0", ""], dtype=object)
    specs = table[codes]
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            literals[i] = format_scalar(float(x[i]), double)
    for i, text in literals.items():
        specs[i] = text
    numbers = x[codes != _LITERAL].astype(np.float64)
    return specs.reshape(np.shape(values)), numbers


def format_floats(values: np.ndarray, double: bool = False) -> list[str]:
    """Flat list of TF Serving's texts (for tests and small arrays)."""
    specs, numbers = float_specs(values, double)
    flat = specs.reshape(-1).tolist()
    return (("\x00".join(flat)) % tuple(numbers.tolist())).split("\x00")
