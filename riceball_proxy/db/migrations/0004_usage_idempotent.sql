-- A usage row carries an id made by the gateway when the call ends, so a batch written again after
-- a lost acknowledgement adds nothing (rows from before this migration have none).
ALTER TABLE usage_events ADD COLUMN event_id uuid;
CREATE UNIQUE INDEX usage_events_event_id ON usage_events (event_id);
-- True when the upstream reported token counts that are not counts (a string, a negative or huge
-- number...): those counts are stored as NULL.
ALTER TABLE usage_events ADD COLUMN usage_invalid boolean NOT NULL DEFAULT false;
