"""The index code of schema version 1, frozen: it writes the databases that
tests/integration/test_migrations.py upgrades, so that test proves today's databases survive
every migration.

Made at commit 3bef5c1 (the last commit with the one-file storage/index.py) by

    git show 3bef5c1:storage/database.py > tests/support/index_v1/database.py
    git show 3bef5c1:storage/index.py > tests/support/index_v1/index.py

changing only index.py's `from storage.database import ...` into
`from index_v1.database import ...` (and the blank line isort wants before `from storage...`).
Check with `diff <(git show 3bef5c1:storage/index.py) tests/support/index_v1/index.py`.
Never edit these files: they are what lungnode 0.1 at schema version 1 wrote. They still import
storage.study_files and storage.uids, which are not part of the schema.
"""
