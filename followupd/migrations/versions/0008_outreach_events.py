"""New events for rules (issue 17): the answer to "who is your favorite practice to refer
to?" on a visit, when each note was made (note.unsent), and a physician's first and last
referral in one index step each (physician.first_referral, physician.quiet).

A note made before this migration has no recorded time of making: its due time stands in
(a draft is made at the first tick after it comes due).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("visit") as batch:
        batch.add_column(sa.Column("named_practice", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("named_physician", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("named_specialty", sa.String(length=120), nullable=True))
    with op.batch_alter_table("follow_up") as batch:
        batch.add_column(sa.Column("made_at", sa.DateTime(), nullable=True))
    op.execute(
        "UPDATE follow_up SET made_at = due_at WHERE external_id IS NOT NULL AND kind = 'draft'"
    )
    op.create_index("ix_follow_up_made", "follow_up", ["made_at"])
    op.create_index(
        "ix_referral_physician_received", "referral", ["physician_id", "received_on", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_referral_physician_received", table_name="referral")
    op.drop_index("ix_follow_up_made", table_name="follow_up")
    with op.batch_alter_table("follow_up") as batch:
        batch.drop_column("made_at")
    with op.batch_alter_table("visit") as batch:
        batch.drop_column("named_specialty")
        batch.drop_column("named_physician")
        batch.drop_column("named_practice")
