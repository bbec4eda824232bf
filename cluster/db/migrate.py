"""Apply the packaged Alembic migrations programmatically (no alembic.ini needed).

Alembic runs inside ``AsyncConnection.run_sync``, on the event loop's own connection,
so these coroutines work from a running loop (CLI, ``datapunk up``, a Serve replica).
Alembic's ``fileConfig`` is never called: the app's logging stays as configured.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from cluster.db.engine import connect, create_engine
from cluster.errors import InvalidInputError, PlatformStateError
from cluster.settings import Settings

MIGRATIONS_PATH = Path(__file__).resolve().with_name("migrations")


def alembic_config() -> Config:
    """An Alembic ``Config`` whose scripts are the package's ``migrations`` folder."""
    config = Config()
    # ConfigParser interpolates '%', which may occur in a checkout's path.
    config.set_main_option("script_location", str(MIGRATIONS_PATH).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str:
    """The newest revision this version of Datapunk knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise PlatformStateError("no migrations found in " + str(MIGRATIONS_PATH))
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, config: Config, revision: str) -> str | None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
    return _current(connection)


def _command_error(exc: CommandError, revision: str, url: str) -> Exception:
    text = str(exc)
    if revision != "head" and repr(revision) in text:
        return InvalidInputError(
            field="revision", value=revision, allowed=f"'head' or a known revision ({text})"
        )
    return PlatformStateError(
        f"cannot migrate the platform database: {text}; the database may have been "
        "migrated by a newer Datapunk: upgrade this installation",
        url=url,
    )


async def upgrade(settings: Settings, revision: str = "head") -> str:
    """Migrate the platform database up to ``revision``; return the revision now current."""
    url = settings.platform_db_url()
    engine = create_engine(settings)
    try:
        async with connect(engine, url) as connection:
            current = await connection.run_sync(_upgrade, alembic_config(), revision)
            await connection.commit()
    except CommandError as exc:
        raise _command_error(exc, revision, url) from None
    finally:
        await engine.dispose()
    if current is None:  # pragma: no cover - upgrade always leaves a revision
        raise PlatformStateError(f"upgrade to {revision!r} left no revision recorded")
    return current


async def current_revision(settings: Settings) -> str | None:
    """The revision the platform database is at; ``None`` when never migrated."""
    engine = create_engine(settings)
    try:
        async with connect(engine, settings.platform_db_url()) as connection:
            return await connection.run_sync(_current)
    finally:
        await engine.dispose()


async def ensure_schema(settings: Settings) -> str:
    """Upgrade to head only when the database is behind; return the current revision."""
    current = await current_revision(settings)
    if current == head_revision():
        return current
    return await upgrade(settings)
