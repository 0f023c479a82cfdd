"""Durable instance store on disk, and the index, work queue and outbox in a SQL database.

Modules, by concern:

    instance_store   the files: fsync, atomic rename into <root>/<study>/<series>/<sop>.dcm
    data_sync        a file's fdatasync run by the thread that is free, waited for by the commit
    database         connections and transactions: SQLite (WAL) or a PostgreSQL pool
    queries          the named SQL of sql/queries/*.sql, loaded once per dialect
    migrations       numbered schema migrations, sql/migrations/NNNN_name.sql
    states           StudyState, JobState, OutboxState (one enum per state machine)
    records          InstanceRecord, Job, ResultObject, OutboxItem
    studies          receiving instances, RECEIVING -> READY
    jobs             the analysis queue: claim with a lease, renew, complete, fail
    outbox           delivery rows: claim due rows, sent, retry, dead letters, resend
    retention, status   operations
    index            `open_index()` and `Index`, the one object the node holds

Why SQL files and not SQLAlchemy Core: the index is about forty statements whose details are
the point (ON CONFLICT upserts, `FOR UPDATE OF j SKIP LOCKED`, lock order between studies and
jobs, RETURNING), written once for both SQLite and PostgreSQL. As SQL files they read as the
SQL that runs, can be pasted into psql or sqlite3, and migrations are the same kind of file;
Core would spell the same statements in a second language and add a dependency, while the
two databases differ only in six lock lines marked `-- postgresql only`. Parameters are written
`:name` once and adapted to the driver's paramstyle when a file is loaded (as aiosql does), not
rewritten at each call.

`storage` never imports `scp_node` or `classifier`.
"""
