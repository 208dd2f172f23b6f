"""Group practices: a therapist on referrals, visits and delivered follow-ups; shared quota
buckets; an index for planning's look-ups by subject; and, on PostgreSQL, a NOTIFY when referrals or visits change so replicas wake.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION followupd_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('followupd', TG_TABLE_NAME);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    for table in ("referral", "visit", "follow_up"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("therapist", sa.String(length=64), nullable=True))
    # Planning looks up the follow-ups of a page of subjects; without this index (the unique
    # key starts with rule) every page scanned the whole ledger.
    op.create_index("ix_follow_up_subject", "follow_up", ["subject_type", "subject_id"])
    op.create_table(
        "quota",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        for table in ("referral", "visit"):
            op.execute(
                f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION followupd_notify()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("referral", "visit"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_notify ON {table}")
        op.execute("DROP FUNCTION IF EXISTS followupd_notify()")
    op.drop_table("quota")
    op.drop_index("ix_follow_up_subject", table_name="follow_up")
    for table in ("follow_up", "visit", "referral"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("therapist")
