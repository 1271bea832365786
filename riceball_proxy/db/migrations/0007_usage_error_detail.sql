-- A failed call's error code and message (as the client got them, keys masked, at most 500
-- characters), so that the dashboard can say what went wrong and not only its type.
ALTER TABLE usage_events ADD COLUMN error_code text, ADD COLUMN error_message text;
