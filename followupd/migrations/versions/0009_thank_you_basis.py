"""The referral a physician's thank-you is about (`follow_up.basis_id`): once the note is
made it stays about that referral, whose release gates it and whose revoke takes it back,
even if an earlier referral is entered later or that referral moves to another physician.

A thank-you planned before this migration is about the physician's first referral now.
Planning also reads the physicians changed since its cursor: one whose referral moved to
another physician or was deleted is stamped changed, so their quiet spell is planned again.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("follow_up") as batch:
        batch.add_column(sa.Column("basis_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE follow_up SET basis_id = ("
        " SELECT r.id FROM referral r WHERE r.physician_id = follow_up.subject_id"
        " ORDER BY r.received_on, r.id LIMIT 1"
        ") WHERE subject_type = 'physician'"
    )
    op.create_index("ix_follow_up_basis", "follow_up", ["basis_id"])
    op.create_index("ix_physician_updated", "physician", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_physician_updated", table_name="physician")
    op.drop_index("ix_follow_up_basis", table_name="follow_up")
    with op.batch_alter_table("follow_up") as batch:
        batch.drop_column("basis_id")
