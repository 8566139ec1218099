"""A simulation scenario (examples/*.yaml, docs/reports.md): the shop and its buyers, read
from YAML and checked field by field before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml


class ScenarioError(ValueError):
    """The scenario file is not usable; the message says which field and why."""


def _rate(value: Any, name: str, *, lo: Fraction = Fraction(0),
          hi: Fraction | None = Fraction(1)) -> Fraction:
    try:
        r = Fraction(str(value))
    except (ValueError, ZeroDivisionError) as exc:
        raise ScenarioError(f"{name}: not a number: {value!r}") from exc
    if r < lo or (hi is not None and r > hi):
        raise ScenarioError(f"{name}: must be between {lo} and {hi}")
    return r


@dataclass
class Scenario:
    name: str
    seed: int
    days: int
    start: date
    config: dict[str, Any]
    products: list[dict[str, Any]]
    orders_per_day: Fraction
    daily_growth: Fraction
    repeat_share: Fraction
    referral_share: Fraction
    sell_share: Fraction
    sell_fraction: Fraction
    deposits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScenarioError(f"cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{path} is not valid YAML: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Scenario:
        if not isinstance(raw, dict):
            raise ScenarioError("a scenario is a YAML mapping")
        sales = raw.get("sales") or {}
        selling = raw.get("points_selling") or {}
        if not isinstance(sales, dict) or not isinstance(selling, dict):
            raise ScenarioError("sales and points_selling are mappings")
        products = raw.get("products")
        if not isinstance(products, list) or not products:
            raise ScenarioError("products: a non-empty list is required")
        for p in products:
            if not isinstance(p, dict) or "sku" not in p or "price" not in p:
                raise ScenarioError("products: each needs at least sku and price")
            _rate(p.get("weight", 1), f"products.{p['sku']}.weight", hi=None)
        days = raw.get("days", 90)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise ScenarioError("days: a whole number 1-3650")
        try:
            start = date.fromisoformat(str(raw.get("start", "2026-01-01")))
        except ValueError as exc:
            raise ScenarioError("start: a date like 2026-01-01") from exc
        seed = raw.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ScenarioError("seed: a whole number")
        config = raw.get("config") or {}
        deposits = raw.get("deposits") or {}
        if not isinstance(config, dict) or not isinstance(deposits, dict):
            raise ScenarioError("config and deposits are mappings")
        # YAML reads `0.20` as a number; the engine takes exact decimal strings (SPEC §7).
        config = {sec: {k: v if isinstance(v, str) else str(v) for k, v in values.items()}
                  if isinstance(values, dict) else values for sec, values in config.items()}
        return cls(
            name=str(raw.get("name", "scenario")), seed=seed, days=days, start=start,
            config=config, products=products,
            orders_per_day=_rate(sales.get("orders_per_day", 10), "sales.orders_per_day",
                                 hi=Fraction(100_000)),
            daily_growth=_rate(sales.get("daily_growth", 0), "sales.daily_growth",
                               lo=Fraction(-1), hi=Fraction(1)),
            repeat_share=_rate(sales.get("repeat_share", "0.5"), "sales.repeat_share"),
            referral_share=_rate(sales.get("referral_share", "0.5"), "sales.referral_share"),
            sell_share=_rate(selling.get("daily_share", 0), "points_selling.daily_share"),
            sell_fraction=_rate(selling.get("fraction", "0.5"), "points_selling.fraction"),
            deposits={str(k): str(v) for k, v in deposits.items()},
        )
