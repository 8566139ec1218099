"""`/settings` (设置): the shop's rules (SPEC §3, §4, §7 `config`, §8), shown and changed by
operators in chat.

A change goes through `service.change_settings`, which is the replayed `config` event's own
check and journal entry (`engine.accounts.configure`), with the operator as the actor. Chat
only adds spelling an operator would type: a bare key (`settle_days`) or its Chinese name
(`退货期`), `KEY=VALUE` or
`KEY VALUE`, a rate as a percentage (`25%` → `0.25`) and `on`/`off` for a switch; the value
that reaches the engine is validated exactly as a `config` line would be.
"""

from __future__ import annotations

from engine import service
from engine.config import DEFAULTS, KINDS, InvalidSetting
from engine.money import AmountError, format_rate, parse_rate

from . import i18n
from .base import Button, Reply
from .parsing import BadInput, callback, echo
from .registry import Ctx, button, command

SECTIONS = ("store", "queue", "points")
# The return windows offered as buttons under /settings (days).
SETTLE_PRESETS = ("0", "7", "15", "30")
# The rules' Chinese names, as the zh listing shows them at the start of each meaning, for
# operators typing `设置 退货期 7`.
ZH_NAMES = {"币种": "store.currency", "时区": "store.timezone", "退货期": "store.settle_days",
            "暂停销售": "store.paused", "排队门槛": "queue.min_order",
            "奖金池比例": "queue.pool_share", "加速比例": "queue.accel_rate",
            "分红池比例": "points.pool_rate", "铸造比例": "points.mint_rate",
            "初始价格": "points.initial_price", "提现手续费": "points.withdraw_fee",
            "出局倍数": "points.exit_multiple"}
_SWITCH = {"on": "1", "yes": "1", "true": "1", "开": "1", "是": "1",
           "off": "0", "no": "0", "false": "0", "关": "0", "否": "0"}


def _kind(key: str) -> str:
    return KINDS.get(key, "text")


def show_value(lang: str, key: str, raw: str, currency: str) -> str:
    """A rule's value as a person reads it: rates in percent, money with its currency, days
    as days, a switch as yes/no. A value that cannot be read is shown as it is."""
    kind = _kind(key)
    try:
        if kind == "rate":
            return format_rate(parse_rate(raw) * 100) + "%"
        if kind == "money":
            return i18n.money(int(parse_rate(raw) * 100), currency)
        if kind == "days":
            return i18n.t(lang, "settings.days", n=int(raw))
        if kind == "flag":
            return i18n.t(lang, "yes" if raw == "1" else "no")
        if kind == "multiple":
            multiple = parse_rate(raw)
            return i18n.t(lang, "settings.times", n=format_rate(multiple)) if multiple \
                else i18n.t(lang, "settings.off")
    except (AmountError, ValueError):
        pass
    return echo(raw, 40)


def meaning(lang: str, key: str) -> str:
    name = f"settings.meaning.{key}"
    return i18n.t(lang, name) if i18n.has(name) else ""


def render_rules(lang: str, raw: dict[str, str]) -> str:
    """Every rule, grouped store / queue / points, with its value and one line of meaning."""
    currency = raw.get("store.currency", DEFAULTS["store.currency"])
    lines = [i18n.t(lang, "settings.title")]
    for section in SECTIONS:
        lines.append("")
        lines.append(i18n.t(lang, f"settings.group.{section}"))
        for key in DEFAULTS:
            if key.split(".", 1)[0] != section:
                continue
            lines.append(i18n.t(lang, "settings.line", key=key,
                                value=show_value(lang, key, raw.get(key, DEFAULTS[key]),
                                                 currency),
                                meaning=meaning(lang, key)).rstrip(" —"))
    return "\n".join(lines)


def _buttons(c: Ctx, raw: dict[str, str]) -> tuple[tuple[Button, ...], ...]:
    current = raw.get("store.settle_days")
    presets = []
    for days in SETTLE_PRESETS:
        data = callback("set", "sd", days)
        if data:
            label = c.t("settings.preset", n=days)
            presets.append(Button(("✓ " if days == current else "") + label, data))
    paused = raw.get("store.paused") == "1"
    toggle = Button(c.t("cmd.resume" if paused else "cmd.pause"),
                    f"cmd:v1:{'resume' if paused else 'pause'}")
    return tuple(presets), (toggle,)


def _full_key(word: str) -> str:
    """`settle_days` (or `退货期`) → `store.settle_days`; a dotted key is taken as typed (the
    engine says whether it exists); a bare word that is no rule is refused naming it."""
    if word in ZH_NAMES:
        return ZH_NAMES[word]
    word = word.lower()
    if "." in word:
        return word
    found = [key for key in DEFAULTS if key.split(".", 1)[1] == word]
    if len(found) != 1:
        raise InvalidSetting(word, "unknown key")
    return found[0]


def _spelled(key: str, value: str) -> str:
    """What chat allows beyond a `config` line's plain strings: `25%` for a rate, `on`/`off`
    for a switch. Anything else goes to the engine exactly as typed."""
    kind = _kind(key)
    if kind == "rate" and value.endswith("%"):
        try:
            return format_rate(parse_rate(value[:-1]) / 100)
        except AmountError:
            return value
    if kind == "flag":
        return _SWITCH.get(value.lower(), value)
    return value


def parse_changes(args: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """`KEY VALUE`, `KEY=VALUE`, several of them → {full key: (value as typed, value sent)};
    a later repetition of a key wins, as in a JSON `config` line."""
    changes: dict[str, tuple[str, str]] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        if "=" in word:
            name, value = word.split("=", 1)
        elif words:
            name, value = word, words.pop(0)
        else:
            raise BadInput("settings.bad.pair", name=echo(word, 32))
        if not name or not value:
            raise BadInput("settings.bad.pair", name=echo(name or word, 32))
        key = _full_key(name)
        changes[key] = (value, _spelled(key, value))
    return changes


def _sections(changes: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    for key, (_typed, value) in changes.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    return sections


def render_changes(lang: str, actor: str, changed: dict[str, tuple[str, str]],
                   currency: str) -> str:
    """What changed, old → new, in `lang`; money in the currency in force before and after."""
    before = changed.get("store.currency", (currency, currency))[0]
    lines = [i18n.t(lang, "settings.changed", actor=echo(actor, 40))]
    for key, (old, new) in changed.items():
        lines.append(i18n.t(lang, "settings.change_line", key=key,
                            old=show_value(lang, key, old, before),
                            new=show_value(lang, key, new, currency)))
    # what a change does not do by itself
    for key, note in (("store.settle_days", "settings.settle_note"),
                      ("store.timezone", "settings.timezone_note"),
                      ("store.currency", "settings.currency_note")):
        if key in changed:
            lines.append(i18n.t(lang, note))
    return "\n".join(lines)


async def _apply(c: Ctx, changes: dict[str, tuple[str, str]]) -> Reply:
    try:
        changed = await c.call(service.change_settings, c.app.db, _sections(changes),
                               actor=c.req.identity)
    except InvalidSetting as refused:
        return Reply().text(_refusal(c, refused.key, changes) + "\n" + c.t("usage.settings"))
    currency = (await c.cfg()).currency  # read after the change
    # in the operator's language, then in the other: the rules are every operator's business
    langs = (c.lang, *(lang for lang in i18n.LANGS if lang != c.lang))
    return Reply().text("\n\n".join(render_changes(lang, c.req.identity, changed, currency)
                                     for lang in langs))


def _refusal(c: Ctx, key: str, changes: dict[str, tuple[str, str]]) -> str:
    """`invalid_config` in words, naming the rule (or the typed key of an unknown section)."""
    if "." not in key:
        key = next((k for k in changes if k.startswith(key + ".")), key)
    if key in changes and key in DEFAULTS:
        problem = c.t("settings.bad.value", key=key, value=echo(changes[key][0], 32),
                      hint=c.t(f"settings.hint.{_kind(key)}"))
    else:
        problem = c.t("settings.bad.unknown", key=echo(key, 40))
    return c.t("settings.refused", problem=problem)


@command("settings", aliases=("设置",), operator=True, usage_key="usage.settings")
async def settings(c: Ctx) -> Reply:
    if c.args:
        try:
            changes = parse_changes(c.args)
        except InvalidSetting as refused:
            return Reply().text(_refusal(c, refused.key, {}) + "\n" + c.t("usage.settings"))
        return await _apply(c, changes)
    raw = (await c.cfg()).raw
    return Reply().text(render_rules(c.lang, raw), _buttons(c, raw))


@button("set", operator=True)
async def settings_button(c: Ctx) -> Reply:
    """`set:v1:sd:DAYS`: one of the return-window presets shown under /settings."""
    if len(c.args) != 2 or c.args[0] != "sd" or c.args[1] not in SETTLE_PRESETS:
        raise BadInput("bad.button")
    return await _apply(c, {"store.settle_days": (c.args[1], c.args[1])})
