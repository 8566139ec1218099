"""SPEC §2: units, parsing and rounding."""

from fractions import Fraction

import pytest

from engine.money import (
    AmountError,
    format_fen,
    format_micro,
    format_rate,
    into_pool,
    out_of_pool,
    parse_fen,
    parse_micro,
    parse_rate,
)


@pytest.mark.parametrize("text,fen", [("100.00", 10000), ("0.01", 1), ("7", 700), ("1.5", 150)])
def test_money_parses_plain_decimals_to_fen(text, fen):
    assert parse_fen(text) == fen


@pytest.mark.parametrize("text", ["0", "0.00", "-1", "1e3", "0.001", " 1", "1,00", "", "abc",
                                  "１", "1.", ".5", "+1", "NaN", "Infinity", "99999999999999"])
def test_money_refuses_anything_but_a_positive_plain_decimal_with_two_places(text):
    with pytest.raises(AmountError):
        parse_fen(text)


@pytest.mark.parametrize("value", [1, 1.5, None, b"1", ["1"]])
def test_amounts_must_be_strings(value):
    with pytest.raises(AmountError):
        parse_fen(value)
    with pytest.raises(AmountError):
        parse_micro(value)


def test_points_take_six_places_and_no_more():
    assert parse_micro("21.5") == 21_500_000
    assert parse_micro("0.000001") == 1
    with pytest.raises(AmountError):
        parse_micro("0.0000001")


def test_formatting_is_plain_and_exact():
    assert format_fen(10000) == "100.00"
    assert format_fen(1) == "0.01"
    assert format_fen(-250) == "-2.50"
    assert format_micro(21_500_000) == "21.500000"


def test_rates_are_exact_fractions():
    assert parse_rate("0.20") == Fraction(1, 5)
    assert parse_rate("0.1") + parse_rate("0.2") == parse_rate("0.3")
    assert format_rate(parse_rate("0.125")) == "0.125"
    assert format_rate(parse_rate("2")) == "2"


def test_rounding_favours_the_pool():
    third = Fraction(1, 3)
    assert into_pool(third) == 1 and out_of_pool(third) == 0
    assert into_pool(Fraction(10)) == 10 == out_of_pool(Fraction(10))


@pytest.mark.parametrize("text", ["1.00\n", "1\n", "\n1"])
def test_a_trailing_newline_is_not_a_plain_decimal(text):
    with pytest.raises(AmountError):
        parse_fen(text)


def test_shoppers_read_points_with_two_places_and_prices_with_up_to_four_rounded_down():
    from engine.money import format_points_shown, format_price_shown

    assert format_points_shown(10_504_999) == "10.50"
    assert format_points_shown(-1_009_999) == "-1.00"  # toward zero: never overstated
    assert format_price_shown(1_428_571) == "1.4285"
    assert format_price_shown(2_000_000) == "2.00" and format_price_shown(2_500_000) == "2.50"
    assert format_price_shown(9_523_810, up=True) == "9.5239"  # a threshold, never below


def test_rates_read_as_percentages_and_oversized_amounts_are_told_apart():
    from engine.money import AmountTooLarge, format_percent, max_amount

    assert format_percent(parse_rate("0.20")) == "20%"
    assert format_percent(parse_rate("0.125")) == "12.5%"
    assert format_percent(parse_rate("1")) == "100%"
    with pytest.raises(AmountTooLarge):
        parse_fen("1000000000000")
    assert max_amount(2) == "999999999999.99"
    parse_fen(max_amount(2))
