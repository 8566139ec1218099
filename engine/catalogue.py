"""The shop window (docs/catalogue.md): product texts in zh and en, categories, photos,
search and paging. Nothing here moves money; what an operator changes is still journaled
with who did it (kind `product_text` / `product_photo`, no postings), like every product edit.

Photos are stored once, by the sha256 of their bytes (`media`), with each channel's cached id
for them: Telegram's `file_id` and WeChat's permanent media id. A photo an operator sends on
one channel shows on the other: that channel uploads the bytes the first time and keeps the
id it gets back (`remember_channel_id`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Media, PhotoWait, Product, ProductPhoto, ProductText

from .book import Book
from .errors import Refusal
from .money import into_pool, out_of_pool
from .times import now
from .users import current_price, store_config

T = TypeVar("T")

TEXT_FIELDS = {"name_en": 128, "description": 1000, "description_en": 1000, "category": 64}
MAX_PHOTO_BYTES = 5 * 1024 * 1024  # WeChat's permanent images take up to 10 MB, Telegram 10
MAX_PHOTOS = 10  # per product: one Telegram media group
PAGE_SIZE = 5  # product cards per page: each is a message of its own
LOW_STOCK = 5  # "only 3 left" from here down
PHOTO_WAIT = timedelta(minutes=10)
MAX_WORDS = 8  # of a search
CHANNELS = ("telegram", "wechat")
# The formats both channels show as photos, by their first bytes.
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def photo_type(content: bytes) -> str | None:
    """The image type of `content` (JPEG, PNG or GIF), None for anything else."""
    for magic, kind in _MAGIC:
        if content.startswith(magic):
            return kind
    return None


def _in_book(db: Database, work: Callable[[Book], T]) -> T:
    return db.run(lambda session: work(Book(session)), label="catalogue")


def product_named(session: Session, sku: object) -> Product:
    """The product `sku`, or the one whose SKU matches it but for case (SKUs are typed by
    people); else `unknown_product`. The one lookup of a typed SKU: the catalogue's pages
    and changes, a quote (engine/offer.py) and the cart (engine/cart.py)."""
    row = session.get(Product, sku) if isinstance(sku, str) else None
    if row is None and isinstance(sku, str):
        found = session.execute(select(Product).where(
            Product.sku.ilike(_escape(sku), escape="\\"))).scalars().all()
        row = found[0] if len(found) == 1 else None
    if row is None:
        raise Refusal("unknown_product", str(sku))
    return row


# -- what operators change ------------------------------------------------------------------

def describe(db: Database, *, sku: str, field: str, text: str | None,
             at: datetime | None = None, actor: str | None = None) -> dict[str, Any]:
    """Set one of a product's texts (`TEXT_FIELDS`: `name_en`, `description`,
    `description_en`, `category`); empty or None clears it. Journaled with the operator."""
    if field not in TEXT_FIELDS:
        raise Refusal("invalid_event", f"field is one of {sorted(TEXT_FIELDS)}")
    value = " ".join((text or "").split()) if field in ("name_en", "category") else \
        (text or "").strip()
    if len(value) > TEXT_FIELDS[field]:
        raise Refusal("invalid_event", f"{field} is at most {TEXT_FIELDS[field]} characters")

    def work(b: Book) -> dict[str, Any]:
        product = product_named(b.s, sku)
        texts = b.s.get(ProductText, product.sku)
        if texts is None:
            texts = ProductText(sku=product.sku)
            b.s.add(texts)
        setattr(texts, field, value or None)
        b.s.flush()
        n = b.head.last_txn + 1
        b.record(key=f"product_text:{n}", kind="product_text", at=at or now(), actor=actor,
                 body={"sku": product.sku, "field": field, "value": value})
        return {"sku": product.sku, "name": product.name, "field": field, "value": value}

    return _in_book(db, work)


def add_photo(db: Database, *, sku: str, content: bytes, channel: str | None = None,
              channel_id: str | None = None, at: datetime | None = None,
              actor: str | None = None) -> dict[str, Any]:
    """Add a photo to a product (stored once by sha256; the same photo twice is one photo).
    `channel`/`channel_id`: the id the sending channel already has for it (a Telegram
    `file_id`), kept so that channel re-sends it instead of the bytes."""
    kind = photo_type(content)
    if kind is None or len(content) > MAX_PHOTO_BYTES:
        raise Refusal("invalid_event", "a photo is a JPEG, PNG or GIF of at most 5 MB")
    digest = hashlib.sha256(content).hexdigest()
    when = at or now()

    def work(b: Book) -> dict[str, Any]:
        product = product_named(b.s, sku)
        media = b.s.get(Media, digest)
        if media is None:
            media = Media(sha256=digest, content=content, content_type=kind, created_at=when)
            b.s.add(media)
        if channel_id and channel in CHANNELS:
            _set_channel_id(media, channel, channel_id)
        photos = list(b.s.execute(select(ProductPhoto).where(ProductPhoto.sku == product.sku)
                                  .order_by(ProductPhoto.position)).scalars())
        have = next((p for p in photos if p.sha256 == digest), None)
        if have is None:
            if len(photos) >= MAX_PHOTOS:
                raise Refusal("invalid_event", f"at most {MAX_PHOTOS} photos a product")
            have = ProductPhoto(sku=product.sku, sha256=digest,
                                position=(photos[-1].position if photos else 0) + 1)
            b.s.add(have)
            photos.append(have)
        b.s.flush()
        n = b.head.last_txn + 1
        b.record(key=f"product_photo:{n}", kind="product_photo", at=when, actor=actor,
                 body={"sku": product.sku, "sha256": digest, "position": have.position})
        return {"sku": product.sku, "name": product.name, "sha256": digest,
                "position": have.position, "photos": len(photos)}

    return _in_book(db, work)


def clear_photos(db: Database, *, sku: str, at: datetime | None = None,
                 actor: str | None = None) -> dict[str, Any]:
    """Take every photo off a product (the stored media stay for other products)."""
    def work(b: Book) -> dict[str, Any]:
        product = product_named(b.s, sku)
        photos = list(b.s.execute(select(ProductPhoto).where(ProductPhoto.sku == product.sku))
                      .scalars())
        for p in photos:
            b.s.delete(p)
        b.s.flush()
        n = b.head.last_txn + 1
        b.record(key=f"product_photo:{n}", kind="product_photo", at=at or now(), actor=actor,
                 body={"sku": product.sku, "cleared": len(photos)})
        return {"sku": product.sku, "name": product.name, "removed": len(photos)}

    return _in_book(db, work)


def _set_channel_id(media: Media, channel: str, channel_id: str) -> None:
    if channel == "telegram":
        media.tg_file_id = channel_id[:255]
    elif channel == "wechat":
        media.wx_media_id = channel_id[:128]


def remember_channel_id(db: Database, *, sha256: str, channel: str, channel_id: str) -> None:
    """A channel uploaded a stored photo and got `channel_id` for it: re-send that next time."""
    def work(session: Session) -> None:
        media = session.get(Media, sha256)
        if media is not None and channel in CHANNELS and channel_id:
            _set_channel_id(media, channel, channel_id)

    db.run(work)


def media_content(db: Database, sha256: str) -> bytes | None:
    """A stored photo's bytes (for a channel that has no id for it yet)."""
    return db.read(lambda s: s.execute(select(Media.content).where(Media.sha256 == sha256))
                   .scalar_one_or_none())


def wait_for_photo(db: Database, *, identity: str, sku: str,
                   at: datetime | None = None) -> dict[str, Any]:
    """The operator's next photo (WeChat sends it as a message of its own) goes to `sku`."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        product = product_named(session, sku)
        row = session.get(PhotoWait, identity)
        if row is None:
            session.add(PhotoWait(identity=identity, sku=product.sku, until=when + PHOTO_WAIT))
        else:
            row.sku, row.until = product.sku, when + PHOTO_WAIT
        return {"sku": product.sku, "name": product.name,
                "minutes": int(PHOTO_WAIT.total_seconds() // 60)}

    return db.run(work)


def take_wait(db: Database, *, identity: str, at: datetime | None = None) -> str | None:
    """The SKU the operator's photo goes to, if they asked within `PHOTO_WAIT`; it stays
    set, so several photos in a row all go to the same product."""
    def work(session: Session) -> str | None:
        row = session.get(PhotoWait, identity)
        if row is None or row.until < (at or now()):
            return None
        return row.sku

    return db.read(work)


# -- what shoppers see ----------------------------------------------------------------------

def stock_state(stock: int | None) -> str:
    """`unlimited`, `sold_out`, `low` (≤ LOW_STOCK left) or `in_stock`."""
    if stock is None:
        return "unlimited"
    if stock <= 0:
        return "sold_out"
    return "low" if stock <= LOW_STOCK else "in_stock"


def _active() -> Any:
    return Product.active.is_(True)


def categories(db: Database) -> list[dict[str, Any]]:
    """The categories of the products on sale, by name, with how many each holds; products
    without one are counted under None (listed last)."""
    def work(session: Session) -> list[dict[str, Any]]:
        rows = session.execute(
            select(ProductText.category, func.count())
            .select_from(Product).outerjoin(ProductText, ProductText.sku == Product.sku)
            .where(_active()).group_by(ProductText.category)).all()
        found = [{"name": name, "count": n} for name, n in rows]
        return sorted(found, key=lambda c: (c["name"] is None, c["name"] or ""))

    return db.read(work)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def page(db: Database, *, category: str | None = None, uncategorised: bool = False,
         query: str | None = None, page: int = 0, per_page: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of the products on sale, in SKU order: all of them, one category's (or those
    without one: `uncategorised`), or those whose SKU, names, descriptions or category
    contain every word of `query` (case-insensitive). Each product as `card` gives it; `page` is 0-based
    and clamped to the last page; `categorised`: some product on sale has a category."""
    def work(session: Session) -> dict[str, Any]:
        where = [_active()]
        if uncategorised:
            where.append(ProductText.category.is_(None))
        elif category is not None:
            where.append(ProductText.category == category)
        for word in (query or "").split()[:MAX_WORDS]:  # every word, anywhere in its texts
            like = f"%{_escape(word)}%"
            where.append(or_(*(col.ilike(like, escape="\\") for col in (
                Product.sku, Product.name, ProductText.name_en, ProductText.description,
                ProductText.description_en, ProductText.category))))
        base = select(Product, ProductText).outerjoin(
            ProductText, ProductText.sku == Product.sku).where(*where)
        count = session.execute(select(func.count()).select_from(base.subquery())).scalar_one()
        pages = max(1, -(-count // per_page))
        at = min(max(page, 0), pages - 1)
        rows = session.execute(base.order_by(Product.sku).offset(at * per_page)
                               .limit(per_page)).all()
        cfg = store_config(session)
        price = current_price(session, cfg)
        photos = _photos(session, [p.sku for p, _ in rows])
        items = [_card(p, t, photos.get(p.sku, []), cfg, price) for p, t in rows]
        categorised = session.execute(
            select(ProductText.sku).join(Product, Product.sku == ProductText.sku)
            .where(_active(), ProductText.category.is_not(None)).limit(1)).first() is not None
        return {"products": items, "page": at, "pages": pages, "count": count,
                "categorised": categorised, "currency": cfg.currency,
                "min_order": cfg.min_order,
                "settle_days": cfg.settle_days, "paused": cfg.paused,
                "price_micro": price.display_micro()}

    return db.read(work)


def card(db: Database, sku: str) -> dict[str, Any]:
    """One product as the shop shows it (on sale or not: `active` says)."""
    def work(session: Session) -> dict[str, Any]:
        product = product_named(session, sku)
        cfg = store_config(session)
        price = current_price(session, cfg)
        photos = _photos(session, [product.sku]).get(product.sku, [])
        result = _card(product, session.get(ProductText, product.sku), photos, cfg, price)
        result.update(currency=cfg.currency, min_order=cfg.min_order,
                      price_micro=price.display_micro())
        return result

    return db.read(work)


def _photos(session: Session, skus: list[str]) -> dict[str, list[dict[str, Any]]]:
    if not skus:
        return {}
    rows = session.execute(
        select(ProductPhoto.sku, Media.sha256, Media.tg_file_id, Media.wx_media_id)
        .join(Media, Media.sha256 == ProductPhoto.sha256)
        .where(ProductPhoto.sku.in_(skus)).order_by(ProductPhoto.sku, ProductPhoto.position)
    ).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for sku, digest, tg, wx in rows:
        out.setdefault(sku, []).append({"sha256": digest, "telegram": tg, "wechat": wx})
    return out


def _card(p: Product, t: ProductText | None, photos: list[dict[str, Any]], cfg: Any,
          price: Any) -> dict[str, Any]:
    stock = p.stock  # SPEC §9: None is unlimited
    points = 0
    if p.scheme in ("points", "both"):
        points = price.points_for(out_of_pool(into_pool(p.price * cfg.pool_rate)
                                              * cfg.mint_rate))
    return {"sku": p.sku, "name": p.name, "name_en": t.name_en if t else None,
            "description": t.description if t else None,
            "description_en": t.description_en if t else None,
            "category": t.category if t else None, "price": p.price, "scheme": p.scheme,
            "lock_days": p.lock_days, "margin": p.margin, "active": bool(p.active),
            "kind": p.kind or "goods", "stock": stock,
            "stock_state": stock_state(stock), "queue": p.scheme in ("queue", "both"),
            "enters_queue": p.price >= cfg.min_order, "points": points, "photos": photos}
