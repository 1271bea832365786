-- Usage rows are history: they outlive the keys, assistants and providers they name, and a batch of
-- them must never fail because one of those was deleted between the call and the write.
ALTER TABLE usage_events DROP CONSTRAINT usage_events_api_key_id_fkey;
ALTER TABLE usage_events DROP CONSTRAINT usage_events_assistant_id_fkey;
ALTER TABLE usage_events DROP CONSTRAINT usage_events_provider_id_fkey;
CREATE INDEX usage_events_request_id ON usage_events (request_id);
