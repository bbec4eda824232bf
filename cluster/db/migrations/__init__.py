"""Alembic migrations of the platform database, shipped inside the package.

Run them with ``cluster.db.migrate`` (or ``datapunk db upgrade``); the repo's
``alembic.ini`` points the ``alembic`` CLI here for developers.
"""
