"""The migrations (``NNNN_name.sql``, then the repeatable ``R__name.sql``), shipped in the
wheel as the package ``worker.schema`` (see pyproject.toml) and read by
``worker.db.migrate`` through ``importlib.resources``."""
