"""Reminder times, prescribers on referrals, and an installation id.

Revision ID: 0002
Revises: 0001
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    # Message-IDs and Calendar event ids derive from this, so two databases never collide.
    op.bulk_insert(meta, [{"key": "installation_id", "value": uuid.uuid4().hex}])
    with op.batch_alter_table("follow_up") as batch:
        batch.add_column(sa.Column("remind_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("referral") as batch:
        batch.add_column(sa.Column("prescriber_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_referral_prescriber", "physician", ["prescriber_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("referral") as batch:
        batch.drop_constraint("fk_referral_prescriber", type_="foreignkey")
        batch.drop_column("prescriber_id")
    with op.batch_alter_table("follow_up") as batch:
        batch.drop_column("remind_at")
    op.drop_table("meta")
