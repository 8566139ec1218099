"""Issue 7: the engine's plain rows (storage/rows.py) and driver statements (storage/driver.py)
are as safe as the ORM they replace on the money paths — on SQLite and PostgreSQL.

- a row read twice in one transaction is one object, and what changed is written at commit;
- ORM statements in the same transaction see those changes first, and ORM copies are not
  left stale;
- values are stored byte for byte as the ORM stores them (times above all);
- a driver error is SQLAlchemy's error, and a refused action writes nothing;
- settings and products cached per `head.catalog_rev` follow changes made by another
  process (another `Database` on the same store).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from engine import service
from engine.book import Book
from engine.errors import Refusal
from storage.db import Database
from storage.models import Order, User
from storage.rows import OrderRow, UserRow
from tests.conftest import MakeDb
from tests.helpers import seed_shop

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def seed(db: Database) -> None:
    """tea on sale; ann, and bob whom she referred."""
    seed_shop(db, products=[("tea", "100.00", "0.40", 0, "both")], users=("ann", "bob"),
              referrals={"bob": "ann"}, at=T)


def test_one_object_per_row_and_changes_written_at_commit(db: Database) -> None:
    seed(db)
    with db.transaction() as s:
        book = Book(s)
        a = book.user("ann")
        assert book.user_by_id(a.id) is a
        assert book.rows.load(UserRow, "handle = ?", ("ann",))[0] is a
        a.wallet += 123
        # an ORM read in the same transaction sees the change (written before it runs)
        assert s.execute(select(User.wallet).where(User.handle == "ann")).scalar_one() == 123
    with db.reading() as s:
        assert s.execute(select(User.wallet).where(User.handle == "ann")).scalar_one() == 123


def test_orm_copies_are_refreshed_after_rows_are_written(db: Database) -> None:
    seed(db)
    with db.transaction() as s:
        orm_ann = s.execute(select(User).where(User.handle == "ann")).scalar_one()
        assert orm_ann.wallet == 0
        book = Book(s)
        book.user("ann").wallet = 500
        book.flush()
        assert orm_ann.wallet == 500


def test_refused_action_leaves_nothing(db: Database) -> None:
    seed(db)
    before = service.buy(db, user="bob", sku="tea", at=T, key="k1")
    with pytest.raises(Refusal):
        service.buy(db, user="bob", sku="tea", at=T, pay_points="1000000", key="k2")
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar_one() == 1
        assert s.execute(text("SELECT count(*) FROM journal WHERE \"key\" = 'k2'")
                         ).scalar_one() == 0
    assert before["status"] == "settled"


def test_times_are_stored_as_the_orm_stores_them(db: Database) -> None:
    seed(db)
    service.buy(db, user="bob", sku="tea", at=T, order="R1")
    with db.transaction() as s:  # the same columns written by the ORM, for comparison
        s.add(Order(no=999, ref="ORM", user_id=1, sku="tea", qty=1, total=1, points_used=0,
                    points_value=0, cash=1, method="cash", currency="CNY", status="x",
                    created_at=T, paid_at=T, settles_at=T, matures_at=T, settled_at=T,
                    terms="{}", minted=0, accelerated=0))
    with db.reading() as s:
        rows = s.execute(text("SELECT ref, CAST(created_at AS TEXT), CAST(settled_at AS TEXT) "
                              "FROM orders ORDER BY ref")).all()
    stored = {ref: (created, settled) for ref, created, settled in rows}
    assert stored["R1"] == stored["ORM"]


def test_a_driver_error_is_sqlalchemys_and_rolls_back(db: Database) -> None:
    seed(db)
    with pytest.raises(IntegrityError):
        with db.transaction() as s:
            book = Book(s)
            book.rows.db.run("INSERT INTO users (id, handle, created_at, wallet, held, points, "
                             "basis, blocked) VALUES (?, ?, ?, 0, 0, 0, 0, ?)",
                             (999, "ann", "2026-01-01 00:00:00.000000", False))
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM users")).scalar_one() == 2


def test_an_order_added_in_memory_is_found_before_it_is_written(db: Database) -> None:
    seed(db)
    with db.transaction() as s:
        book = Book(s)
        from engine import orders
        placed = orders.open_unpaid_order(book, user="bob", sku="tea", at=T, ref="MEM",
                                          method="wechat")
        assert placed["status"] == "awaiting_payment"
        assert any(o.ref == "MEM" for o in book.rows.known(OrderRow))
        paid = orders.confirm_payment(book, ref="MEM", amount=placed["cash"], currency="CNY",
                                      payment_ref="p1", at=T, key="pay:MEM")
        assert paid["status"] == "settled"
    with db.reading() as s:
        assert s.execute(select(Order.status).where(Order.ref == "MEM")).scalar_one() \
            == "settled"


def test_settings_changed_by_another_process_are_seen(sqlite_url: str, make_db: MakeDb) -> None:
    first, second = make_db(sqlite_url), make_db(sqlite_url)
    seed(first)
    service.buy(second, user="bob", sku="tea", at=T)  # caches settings and products
    service.configure(first, {"store": {"paused": "1"}}, at=T)
    with pytest.raises(Refusal) as refused:
        service.buy(second, user="bob", sku="tea", at=T)
    assert refused.value.code == "sales_paused"
    service.configure(first, {"store": {"paused": "0"}}, at=T)
    service.upsert_product(first, sku="tea", price="1.00", margin="0.40", lock_days=0,
                           scheme="both", at=T)
    assert service.buy(second, user="bob", sku="tea", at=T)["total"] == 100


def test_one_key_twice_in_one_transaction_is_one_purchase(db: Database) -> None:
    """Two calls with one idempotency key inside one transaction (a batch): the second is
    the first's answer, though nothing is written until the commit."""
    seed(db)
    from engine import orders
    with db.transaction() as s:
        book = Book(s)
        first = orders.record_paid_order(book, user="bob", sku="tea", at=T, key="same")
        again = orders.record_paid_order(book, user="bob", sku="tea", at=T, key="same")
    assert again["replayed"] is True and again["order"] == first["order"]
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar_one() == 1


def test_a_failing_write_at_commit_is_sqlalchemys_error_and_nothing_stays(db: Database) -> None:
    """The rows are written at commit (in one pipeline on PostgreSQL): a constraint broken
    there is SQLAlchemy's IntegrityError and the whole transaction is rolled back."""
    seed(db)
    with pytest.raises(IntegrityError):
        with db.transaction() as s:
            book = Book(s)
            book.user("ann").wallet += 1
            book.record(key="join:ann", kind="again", at=T)  # that key is taken (the join)
    with db.reading() as s:
        assert s.execute(select(User.wallet).where(User.handle == "ann")).scalar_one() == 0
        assert s.execute(text("SELECT count(*) FROM journal WHERE kind = 'again'")
                         ).scalar_one() == 0
