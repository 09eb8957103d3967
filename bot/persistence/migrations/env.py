"""Alembic environment of mmbot's record.

Run by :mod:`bot.persistence.migrate`, which passes an open connection (in a transaction
it holds the migration lock for) as ``config.attributes["connection"]``; with a bare
``sqlalchemy.url`` option instead (e.g. ``alembic -x`` tooling), an engine is made from it.
The version table is ``mmbot_alembic_version``.
"""

from alembic import context

from bot.persistence.migrate import VERSION_TABLE
from bot.persistence.schema import Base


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("mmbot's migrations run online only (mmbot db upgrade)")

_conn = context.config.attributes.get("connection")
if _conn is not None:
    _run(_conn)
else:
    from bot.persistence.store import make_engine

    _engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    with _engine.begin() as _c:
        _run(_c)
    _engine.dispose()
