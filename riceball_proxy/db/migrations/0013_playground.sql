-- The admin playground: its calls are usage rows of their own (no API key: the admin), and each
-- assistant message keeps what it cost (tokens, latency, cost) and how it ended (stopped, failed).
ALTER TABLE usage_events
    ADD COLUMN source text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'playground')),
    ADD COLUMN admin_id bigint;
CREATE INDEX usage_events_source ON usage_events (source, created_at) WHERE source <> 'api';

ALTER TABLE messages
    ADD COLUMN meta jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(meta) = 'object');
CREATE INDEX conversations_assistant ON conversations (assistant_id, updated_at DESC);
