-- Admin sessions live on the server: the cookie names one, and logging out, changing the password or
-- deleting the admin ends it at once, whatever copies of the cookie exist.
CREATE TABLE admin_sessions (
    -- SHA-256 of the session's random id; the id itself is only in the (encrypted) cookie.
    id_hash     bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    admin_id    bigint NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX admin_sessions_admin ON admin_sessions (admin_id);

-- Failed admin logins, shared by every worker and instance. The key is a SHA-256 of the username and
-- address (or the address alone): no username typed at the login form is stored.
CREATE TABLE login_failures (
    key_hash    bytea NOT NULL CHECK (length(key_hash) = 32),
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_key ON login_failures (key_hash, failed_at);
CREATE INDEX login_failures_failed_at ON login_failures (failed_at);
