-- Input tokens written to the provider's prompt cache (Anthropic charges them 1.25 times the input
-- price for 5 minutes, twice for an hour), and the 1-hour ones among them.
ALTER TABLE usage_events ADD COLUMN cache_write_tokens integer, ADD COLUMN cache_write_1h_tokens integer;
