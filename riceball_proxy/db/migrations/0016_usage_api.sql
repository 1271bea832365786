-- The inbound API (dialect) each call came in by: chat (Chat Completions), messages (Anthropic
-- Messages), or a plugin's.
ALTER TABLE usage_events ADD COLUMN api text NOT NULL DEFAULT 'chat';
