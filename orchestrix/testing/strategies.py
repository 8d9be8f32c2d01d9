"""Hypothesis strategies for money, identifiers and stream names."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

__all__ = [
    "identifiers",
    "invalid_amounts",
    "money",
    "stream_names",
]


def money(
    min_value: Decimal | str = "0.01", max_value: Decimal | str = "1000000.00"
) -> st.SearchStrategy[Decimal]:
    """Valid amounts: finite Decimals with at most two decimal places, in the given range."""
    low, high = Decimal(min_value), Decimal(max_value)
    cents = st.integers(min_value=int(low * 100), max_value=int(high * 100))
    return cents.map(lambda c: Decimal(c).scaleb(-2))


def invalid_amounts() -> st.SearchStrategy[object]:
    """Values a money field must refuse: floats, bools, text, NaN, infinities, <= 0, > 2 places."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=8),
        st.integers(),
        st.sampled_from(
            [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0")]
        ),
        money().map(lambda d: -d),
        st.just(Decimal("0")),
        # Bounded: quantize() of a Decimal beyond the context's 28 digits raises InvalidOperation.
        st.decimals(
            allow_nan=False,
            allow_infinity=False,
            places=3,
            min_value=Decimal("0.001"),
            max_value=Decimal("1000000000000.000"),
        ).filter(lambda d: d.as_tuple().exponent == -3 and d != d.quantize(Decimal("0.01"))),
    )


def identifiers(prefix: str = "") -> st.SearchStrategy[str]:
    """Short, printable identifiers, optionally prefixed (``acc-…``)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return st.text(alphabet, min_size=1, max_size=12).map(lambda s: prefix + s)


def stream_names() -> st.SearchStrategy[str]:
    """Valid stream names, including quotes, slashes, dots and non-ASCII letters."""
    return st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
        min_size=1,
        max_size=60,
    )
