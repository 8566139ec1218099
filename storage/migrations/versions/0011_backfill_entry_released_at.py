"""backfill entries.released_at for entries completed by acceleration

Until issue 14 an acceleration that paid an entry in full marked it `released` without a
`released_at`. The time is in the journal: the last queue-pool posting referring to the entry
(`entry:<seq>`) is the payment that completed it. Data only; the schema is unchanged.
One pass over the queue pool's postings (a prefix of `ix_postings_account_txn`), grouped.

Revision ID: 0011
Revises: 0007
"""
from alembic import op

revision = '0011'
down_revision = '0007'
branch_labels = None
depends_on = None

BACKFILL = """
UPDATE entries SET released_at = last.at
FROM (SELECT paid.ref AS ref, journal.at AS at
      FROM (SELECT ref, max(txn_id) AS txn_id FROM postings
            WHERE account = 'pool:queue' AND ref LIKE 'entry:%'
            GROUP BY ref) AS paid
      JOIN journal ON journal.id = paid.txn_id) AS last
WHERE entries.status = 'released' AND entries.released_at IS NULL
  AND last.ref = 'entry:' || CAST(entries.seq AS VARCHAR(20))
"""


def upgrade() -> None:
    op.execute(BACKFILL)


def downgrade() -> None:
    pass  # the times are true; nothing to undo
