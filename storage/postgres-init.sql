-- Runs once when the PostgreSQL volume is created (docker-entrypoint-initdb.d).
-- Optuna creates its own tables on first connection; this only tunes the database for many
-- short transactions from many workers.
ALTER DATABASE CURRENT SET idle_in_transaction_session_timeout = '60s';
ALTER DATABASE CURRENT SET lock_timeout = '30s';
