"""The platform database: async engine, ORM models and packaged Alembic migrations.

Connecting is explicit (``create_engine``); nothing here touches a database at import.
"""
