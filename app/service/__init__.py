"""GadSynth's service: the HTTP API (FastAPI), DICOMweb STOW-RS, the job engine and its workers.

One job engine for every front door: a study is written durably to the spool, a job row goes into the job database
(SQLite by default, PostgreSQL for many machines, through SQLAlchemy), and a queue message (Huey on SQLite or Redis)
wakes a worker process that holds one warm :class:`app.pipeline.Pipeline`. The database, not the queue, is the
truth about a job: workers claim a job with a compare-and-set, keep a lease on it while it runs, and a supervisor
re-queues a job whose lease ran out (a killed worker or server), up to a bounded number of attempts.
"""
