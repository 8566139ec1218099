"""Two buyers race through their carts for the last unit, on PostgreSQL: exactly one order
is recorded, the other buyer is told `out_of_stock` and keeps their cart (SPEC §9)."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select

from engine import cart, cart_checkout, service
from engine.errors import Refusal
from engine.verify import verify
from storage.models import CartItem, Order, Product, User
from tests.helpers import seed_shop

ROUNDS = 4


def _race(db: Any, buyers: list[str], act: Any) -> list[Any]:
    """Each buyer's `act` at once (a barrier before the call); their results or refusals."""
    gate = threading.Barrier(len(buyers))
    out: list[Any] = [None] * len(buyers)

    def run(n: int, who: str) -> None:
        gate.wait()
        try:
            out[n] = act(who)
        except Refusal as exc:
            out[n] = exc.code

    threads = [threading.Thread(target=run, args=(n, who)) for n, who in enumerate(buyers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def _cart_of(db: Any, who: str) -> list[tuple[str, int]]:
    return db.read(lambda s: [(i.sku, i.qty) for i in s.execute(
        select(CartItem).join(User, User.id == CartItem.user_id).where(User.handle == who)
        .order_by(CartItem.position)).scalars()])


def test_two_carts_racing_for_the_last_unit_make_exactly_one_order(pg_db):
    buyers = [(f"A{r}", f"B{r}") for r in range(ROUNDS)]
    seed_shop(pg_db, users=[u for pair in buyers for u in pair], at=None,
              products=[("VASE", "80.00", "0.30", 0, "points", "Vase"),
                        ("CUP", "30.00", "0.40", 0, "points", "Cup")])
    for round_, pair in enumerate(buyers):  # a fresh pair each round, the last VASE each time
        service.upsert_product(pg_db, sku="VASE", price="80.00", margin="0.30", lock_days=0,
                               scheme="points", stock=1)
        for who in pair:
            cart.add(pg_db, user=who, sku="CUP")
            cart.add(pg_db, user=who, sku="VASE")
        got = _race(pg_db, list(pair), lambda who, r=round_: cart_checkout.open_checkout(
            pg_db, user=who, channel="telegram", method="telegram", key=f"race:{r}:{who}"))
        assert sorted(g if isinstance(g, str) else "won" for g in got) == \
            ["out_of_stock", "won"], got
        winner, loser = pair if isinstance(got[0], dict) else pair[::-1]
        opened = got[pair.index(winner)]
        assert pg_db.read(lambda s: s.get(Product, "VASE").stock) == 0
        assert _cart_of(pg_db, loser) == [("CUP", 1), ("VASE", 1)]  # kept, nothing recorded
        assert pg_db.read(lambda s, o=opened: s.execute(select(Order.status).where(
            Order.ref == o["order"])).scalar_one()) == "awaiting_payment"
    orders = pg_db.read(lambda s: s.execute(select(Order.status)).scalars().all())
    assert orders == ["awaiting_payment"] * ROUNDS  # one order per round, never two
    report = verify(pg_db)
    assert report.ok, report.problems


def test_two_wallet_carts_racing_for_the_last_unit_pay_exactly_once(pg_db):
    seed_shop(pg_db, users=("A", "B"), at=None, products=[("LAMP", "50.00", "0.50", 0,
                                                          "both", "Lamp")])
    service.upsert_product(pg_db, sku="CREDIT", price="100.00", margin="0.50", lock_days=0,
                           scheme="queue")
    service.deposit(pg_db, pool="queue", amount="1000.00")
    for who in ("A", "B"):  # 100.00 in each wallet: a purchase released at once
        service.buy(pg_db, user=who, sku="CREDIT", method="offline", key=f"credit:{who}")
    service.release(pg_db)
    assert all(pg_db.read(lambda s, w=w: s.execute(select(User.wallet).where(
        User.handle == w)).scalar_one()) == 10000 for w in ("A", "B"))
    service.upsert_product(pg_db, sku="LAMP", price="50.00", margin="0.50", lock_days=0,
                           scheme="both", stock=1)
    for who in ("A", "B"):
        cart.add(pg_db, user=who, sku="LAMP")
    got = _race(pg_db, ["A", "B"], lambda who: cart_checkout.pay_from_wallet(
        pg_db, user=who, key=f"wallet:{who}"))
    assert sorted(g if isinstance(g, str) else "paid" for g in got) == ["out_of_stock", "paid"]
    winner = "A" if isinstance(got[0], dict) else "B"
    loser = "B" if winner == "A" else "A"
    assert _cart_of(pg_db, winner) == [] and _cart_of(pg_db, loser) == [("LAMP", 1)]
    wallets = {w: pg_db.read(lambda s, w=w: s.execute(select(User.wallet).where(
        User.handle == w)).scalar_one()) for w in ("A", "B")}
    assert wallets == {winner: 5000, loser: 10000}
    report = verify(pg_db)
    assert report.ok, report.problems
