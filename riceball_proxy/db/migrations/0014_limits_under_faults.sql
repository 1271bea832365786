-- A usage row whose token counts the gateway estimated (the upstream never reported them: a client
-- gone before the usage chunk, an upstream that sends none).
ALTER TABLE usage_events ADD COLUMN usage_estimated boolean NOT NULL DEFAULT false;

-- Providers whose upstream refused the gateway's credentials (401/403): shown in the admin panel until
-- a call on the provider is answered again or its key is changed. A table of its own, so that writing
-- it never notifies the configuration caches.
CREATE TABLE provider_alerts (
    provider_id  bigint PRIMARY KEY REFERENCES providers (id) ON DELETE CASCADE,
    status       integer NOT NULL,
    message      text NOT NULL,
    first_at     timestamptz NOT NULL DEFAULT now(),
    last_at      timestamptz NOT NULL DEFAULT now(),
    failures     bigint NOT NULL DEFAULT 1
);
