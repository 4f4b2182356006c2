-- The SQLite schema filestore wrote before its migrations moved to Alembic
-- (PRAGMA user_version 1 to 4), kept to prove old databases upgrade in place.
CREATE TABLE files (
        id            BLOB PRIMARY KEY CHECK (length(id) = 16),
        tenant        TEXT NOT NULL,
        state         TEXT NOT NULL
                      CHECK (state IN ('uploading', 'active', 'purging', 'purged')),
        kek_id        INTEGER NOT NULL,
        created_at    REAL NOT NULL,
        expires_at    REAL NOT NULL,
        size          INTEGER,
        sealed        BLOB,
        max_downloads INTEGER,
        downloads     INTEGER NOT NULL DEFAULT 0,
        delete_reason TEXT,
        deleted_at    REAL,
        lease_owner   TEXT,
        lease_expires REAL
    ) WITHOUT ROWID;
    -- Only rows that still need purging are indexed, so finding expired files
    -- costs in proportion to them, not to tombstones.
    CREATE INDEX files_live_expiry ON files (expires_at) WHERE state <> 'purged';
    CREATE TABLE file_keys (
        file_id     BLOB PRIMARY KEY REFERENCES files (id),
        kek_id      INTEGER NOT NULL,
        wrapped_dek BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX file_keys_kek ON file_keys (kek_id);
    -- Insert-once: an update would leave the old key bytes in free pages or
    -- the WAL, outside crypto-erase's reach.
    CREATE TRIGGER file_keys_insert_once BEFORE UPDATE ON file_keys
    BEGIN SELECT RAISE(ABORT, 'file_keys rows are insert-once'); END;
    CREATE TABLE api_keys (
        key_id      TEXT PRIMARY KEY,
        secret_hash BLOB NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('client', 'operator', 'auditor')),
        tenant      TEXT NOT NULL,
        label       TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        revoked_at  REAL
    );

ALTER TABLE files ADD COLUMN purge_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN next_attempt_at REAL;
    ALTER TABLE files ADD COLUMN last_error TEXT;
    -- Append-only deletion log; body is the record's canonical JSON.
    CREATE TABLE audit_log (
        seq         INTEGER PRIMARY KEY,
        event       TEXT NOT NULL,
        file_id     TEXT,
        kek_id      INTEGER,
        tenant      TEXT,
        recorded_at REAL NOT NULL,
        hash        TEXT NOT NULL,
        body        TEXT NOT NULL
    );
    -- Exactly one deletion record per file, whatever crashes and retries do.
    CREATE UNIQUE INDEX audit_log_one_per_file ON audit_log (file_id)
        WHERE event = 'file_deleted';
    CREATE UNIQUE INDEX audit_log_one_per_kek ON audit_log (kek_id)
        WHERE event = 'kek_destroyed';
    CREATE INDEX audit_log_time ON audit_log (recorded_at);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE audit_checkpoints (
        id          INTEGER PRIMARY KEY,
        size        INTEGER NOT NULL,
        created_at  REAL NOT NULL,
        note        TEXT NOT NULL
    );
    CREATE INDEX audit_checkpoints_size ON audit_checkpoints (size);
    -- The stuck-upload sweep visits only uploads, never the live files.
    CREATE INDEX files_uploading ON files (created_at) WHERE state = 'uploading';

-- Deletions started before expiry (DELETE, download limits) whose
    -- worker died or failed: the purge finds them here without a scan.
    CREATE INDEX files_purging ON files (lease_expires) WHERE state = 'purging';

-- Live files for the status figures (count, oldest) without a table scan.
    CREATE INDEX files_live_created ON files (created_at)
        WHERE state IN ('uploading', 'active');
