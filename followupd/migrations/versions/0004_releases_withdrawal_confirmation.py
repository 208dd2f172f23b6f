"""Releases of information per recipient with their history; a draft's thread (for finding
it after an edit); physician addresses that wait for confirmation.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("referral_id", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(length=16), nullable=False),
        sa.Column("physician_id", sa.Integer(), nullable=True),
        sa.Column("granted_on", sa.Date(), nullable=False),
        sa.Column("granted_by", sa.String(length=32), nullable=False),
        sa.Column("revoked_on", sa.Date(), nullable=True),
        sa.Column("revoked_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["physician_id"], ["physician.id"]),
        sa.ForeignKeyConstraint(["referral_id"], ["referral.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_release_referral_id", "release", ["referral_id"])
    with op.batch_alter_table("referral") as batch:
        batch.add_column(
            sa.Column(
                "prescriber_release_on_file",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )
        batch.add_column(sa.Column("prescriber_release_on", sa.Date(), nullable=True))
    with op.batch_alter_table("physician") as batch:
        batch.add_column(sa.Column("email_check", sa.String(length=300), nullable=True))
    with op.batch_alter_table("follow_up") as batch:
        batch.add_column(sa.Column("thread_id", sa.String(length=256), nullable=True))
    # A release already on file becomes the first entry of its history (it named the
    # referring physician: until now there was one release per referral).
    op.execute(
        "INSERT INTO release (referral_id, recipient, physician_id, granted_on, granted_by, "
        "created_at, updated_at) SELECT id, 'physician', physician_id, "
        "COALESCE(release_on, received_on), 'migration', updated_at, updated_at "
        "FROM referral WHERE release_on_file"
    )


def downgrade() -> None:
    with op.batch_alter_table("follow_up") as batch:
        batch.drop_column("thread_id")
    with op.batch_alter_table("physician") as batch:
        batch.drop_column("email_check")
    with op.batch_alter_table("referral") as batch:
        batch.drop_column("prescriber_release_on")
        batch.drop_column("prescriber_release_on_file")
    op.drop_index("ix_release_referral_id", table_name="release")
    op.drop_table("release")
