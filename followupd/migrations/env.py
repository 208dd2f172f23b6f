"""Alembic environment: migrations run on the connection followupd hands over.

For development, `alembic -c followupd/migrations/alembic.ini revision --autogenerate -m "..."`
compares the models with a scratch database named by FOLLOWUPD_DATABASE_URL.
"""

import os

import sqlalchemy as sa
from alembic import context

from followupd.models import SQLModel

config = context.config
target_metadata = SQLModel.metadata


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = os.environ.get("FOLLOWUPD_DATABASE_URL", "sqlite:///followupd-dev.sqlite3")
    with sa.create_engine(url).connect() as conn:
        run(conn)
        conn.commit()
