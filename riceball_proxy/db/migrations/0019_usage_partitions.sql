-- Usage rows partitioned by month of created_at (UTC), so that a month past the retention goes whole
-- (RICEBALL_USAGE_RETENTION_DAYS) and a report reads only the months it covers; and hourly rollups per
-- key, assistant, source and API, kept by the writer in the transaction that writes the rows, which the
-- usage page reads whatever the raw table's size. Every existing row is moved, and rolled up.

-- The partition of one month (UTC), made if it is missing.
CREATE FUNCTION usage_events_partition(month timestamptz) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    first timestamptz := date_trunc('month', month AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
                   'usage_events_' || to_char(first AT TIME ZONE 'UTC', 'YYYY_MM'), first,
                   (first AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
END
$$;

-- A latency's bucket in the rollups' histograms: a third of a power of two of milliseconds each,
-- from 1 ms (bucket 0) to 35 minutes and more (bucket 63).
CREATE FUNCTION usage_latency_bucket(ms double precision) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT least(63, greatest(0, floor(3 * log(2, greatest(ms, 1)::numeric))))::integer
$$;

-- Histograms added bucket by bucket (one array expression: evaluated without a loop), and their sum over
-- rows.
DO $$
BEGIN
    EXECUTE format('CREATE FUNCTION usage_add_counts(a bigint[], b bigint[]) RETURNS bigint[] LANGUAGE sql '
                   'IMMUTABLE AS %L', 'SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a ELSE ARRAY['
                   || (SELECT string_agg(format('a[%s] + b[%s]', i, i), ', ') FROM generate_series(1, 64) AS i)
                   || '] END');
END
$$;
CREATE AGGREGATE usage_sum_counts(bigint[]) (SFUNC = usage_add_counts, STYPE = bigint[]);

-- A histogram from (bucket, count) pairs (a bucket NULL: a call of no known latency, not counted).
CREATE FUNCTION usage_counts(buckets integer[], counts bigint[]) RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    result bigint[] := array_fill(0::bigint, ARRAY[64]);
BEGIN
    FOR i IN 1 .. coalesce(array_length(buckets, 1), 0) LOOP
        IF buckets[i] IS NOT NULL THEN
            result[buckets[i] + 1] := result[buckets[i] + 1] + counts[i];
        END IF;
    END LOOP;
    RETURN result;
END
$$;

ALTER TABLE usage_events RENAME TO usage_events_unpartitioned;
ALTER INDEX usage_events_pkey RENAME TO usage_events_unpartitioned_pkey;

CREATE TABLE usage_events (LIKE usage_events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                           INCLUDING IDENTITY) PARTITION BY RANGE (created_at);
-- No primary key: a partition's would be inherited, which pg_restore --clean cannot drop (the documented
-- backup); rows are found by time, request id and event id, each indexed below.

-- The months of the rows there are, and this one and the next two.
SELECT usage_events_partition(month)
FROM (SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month
      FROM usage_events_unpartitioned
      UNION SELECT now() UNION SELECT now() + interval '1 month' UNION SELECT now() + interval '2 months') AS months;

INSERT INTO usage_events OVERRIDING SYSTEM VALUE SELECT * FROM usage_events_unpartitioned;
SELECT setval(pg_get_serial_sequence('usage_events', 'id'),
              greatest(1, (SELECT coalesce(max(id), 0) FROM usage_events)), (SELECT count(*) > 0 FROM usage_events));
DROP TABLE usage_events_unpartitioned;

CREATE INDEX usage_events_created_at ON usage_events (created_at);
CREATE INDEX usage_events_assistant ON usage_events (assistant_id, created_at);
CREATE INDEX usage_events_api_key ON usage_events (api_key_id, created_at);
CREATE INDEX usage_events_request_id ON usage_events (request_id);
CREATE INDEX usage_events_source ON usage_events (source, created_at) WHERE source <> 'api';
-- The dashboard's recent errors.
CREATE INDEX usage_events_errors ON usage_events (created_at) WHERE status >= 400;
-- A row's id is unique with its time, which a batch written again repeats (the writer skips such rows).
CREATE UNIQUE INDEX usage_events_event_id ON usage_events (event_id, created_at);

-- One row per hour (UTC), key, assistant, source, admin and API. No key, no assistant, no admin are
-- stored as the nil UUID and 0, so that the key is a primary key.
CREATE TABLE usage_hourly (
    hour                timestamptz NOT NULL,
    api_key_id          uuid NOT NULL,
    assistant_id        uuid NOT NULL,
    source              text NOT NULL,
    admin_id            bigint NOT NULL,
    api                 text NOT NULL,
    requests            bigint NOT NULL,
    errors              bigint NOT NULL,
    prompt_tokens       bigint NOT NULL,
    completion_tokens   bigint NOT NULL,
    cached_tokens       bigint NOT NULL,
    cache_write_tokens  bigint NOT NULL,
    reasoning_tokens    bigint NOT NULL,
    total_tokens        bigint NOT NULL,
    cost_usd            numeric(30, 10),
    unpriced            bigint NOT NULL,
    estimated           bigint NOT NULL,
    -- Calls per usage_latency_bucket (64 buckets).
    latency_counts      bigint[] NOT NULL,
    PRIMARY KEY (hour, api_key_id, assistant_id, source, admin_id, api)
);
-- What a key's or an assistant's budget has spent since its period began.
CREATE INDEX usage_hourly_api_key ON usage_hourly (api_key_id, hour);
CREATE INDEX usage_hourly_assistant ON usage_hourly (assistant_id, hour);
-- The same per day (its "hour" the day's first): what a range of whole days (the usage page's) reads.
CREATE TABLE usage_daily (LIKE usage_hourly INCLUDING ALL);

-- Rolls the rows of a time range up into usage_hourly (added to what is there): how the rows already
-- in the table are rolled up here; the writer rolls up each batch it writes itself.
CREATE FUNCTION usage_hourly_add(since timestamptz, until timestamptz) RETURNS void LANGUAGE sql AS $$
INSERT INTO usage_hourly
SELECT hour, api_key_id, assistant_id, source, admin_id, api, sum(requests), sum(errors), sum(prompt_tokens),
       sum(completion_tokens), sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(total_tokens),
       sum(cost_usd), sum(unpriced), sum(estimated), usage_counts(array_agg(bucket), array_agg(requests))
FROM (
    SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
           coalesce(api_key_id, '00000000-0000-0000-0000-000000000000') AS api_key_id,
           coalesce(assistant_id, '00000000-0000-0000-0000-000000000000') AS assistant_id,
           source, coalesce(admin_id, 0) AS admin_id, api, usage_latency_bucket(latency_ms) AS bucket,
           count(*) AS requests,
           count(*) FILTER (WHERE status >= 400) AS errors,
           coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens), 0) AS completion_tokens,
           coalesce(sum(cached_tokens), 0) AS cached_tokens,
           coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
           coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
           coalesce(sum(coalesce(total_tokens, coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))), 0)
               AS total_tokens,
           sum(cost_usd) AS cost_usd,
           count(*) FILTER (WHERE cost_usd IS NULL AND (prompt_tokens > 0 OR completion_tokens > 0)) AS unpriced,
           count(*) FILTER (WHERE usage_estimated) AS estimated
    FROM usage_events
    WHERE created_at >= since AND created_at < until
    GROUP BY 1, 2, 3, 4, 5, 6, 7
) AS per_bucket
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT (hour, api_key_id, assistant_id, source, admin_id, api) DO UPDATE SET
    requests = usage_hourly.requests + excluded.requests,
    errors = usage_hourly.errors + excluded.errors,
    prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens,
    cached_tokens = usage_hourly.cached_tokens + excluded.cached_tokens,
    cache_write_tokens = usage_hourly.cache_write_tokens + excluded.cache_write_tokens,
    reasoning_tokens = usage_hourly.reasoning_tokens + excluded.reasoning_tokens,
    total_tokens = usage_hourly.total_tokens + excluded.total_tokens,
    cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN usage_hourly.cost_usd
                    ELSE coalesce(usage_hourly.cost_usd, 0) + excluded.cost_usd END,
    unpriced = usage_hourly.unpriced + excluded.unpriced,
    estimated = usage_hourly.estimated + excluded.estimated,
    latency_counts = usage_add_counts(usage_hourly.latency_counts, excluded.latency_counts)
$$;

-- The daily rollups of the hours of a range of whole days (added to what is there).
CREATE FUNCTION usage_daily_add(since timestamptz, until timestamptz) RETURNS void LANGUAGE sql AS $$
INSERT INTO usage_daily
SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', api_key_id, assistant_id, source, admin_id, api,
       sum(requests), sum(errors), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
       sum(cache_write_tokens), sum(reasoning_tokens), sum(total_tokens), sum(cost_usd), sum(unpriced), sum(estimated),
       usage_sum_counts(latency_counts)
FROM usage_hourly WHERE hour >= since AND hour < until
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT (hour, api_key_id, assistant_id, source, admin_id, api) DO UPDATE SET
    requests = usage_daily.requests + excluded.requests,
    errors = usage_daily.errors + excluded.errors,
    prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
    cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens,
    cache_write_tokens = usage_daily.cache_write_tokens + excluded.cache_write_tokens,
    reasoning_tokens = usage_daily.reasoning_tokens + excluded.reasoning_tokens,
    total_tokens = usage_daily.total_tokens + excluded.total_tokens,
    cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN usage_daily.cost_usd
                    ELSE coalesce(usage_daily.cost_usd, 0) + excluded.cost_usd END,
    unpriced = usage_daily.unpriced + excluded.unpriced,
    estimated = usage_daily.estimated + excluded.estimated,
    latency_counts = usage_add_counts(usage_daily.latency_counts, excluded.latency_counts)
$$;

SELECT usage_hourly_add('-infinity', 'infinity');
SELECT usage_daily_add('-infinity', 'infinity');
