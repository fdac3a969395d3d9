-- The event store: append-only streams of events.

CREATE TABLE events (
    -- Global order of all events.
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       TEXT        NOT NULL,
    -- 1, 2, 3, ... within the stream, without gaps. The unique index is the
    -- optimistic concurrency check: two writers that decided on the same
    -- version both try to insert the next one, and only one can.
    version         BIGINT      NOT NULL CHECK (version > 0),
    event_id        UUID        NOT NULL UNIQUE,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    data            JSONB       NOT NULL,
    -- Correlation and causation ids.
    metadata        JSONB       NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The writing transaction. Positions are handed out before commit, so a
    -- reader of "everything after position p" could miss an event whose
    -- transaction commits late with a lower position; readers that must not
    -- miss any (the outbox relay) only read events of transactions older
    -- than every transaction still running.
    transaction_id  XID8        NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (stream_id, version)
);

-- The latest snapshot of a stream's state, to load it without replaying every event.
CREATE TABLE snapshots (
    stream_id   TEXT        PRIMARY KEY,
    version     BIGINT      NOT NULL,
    state       JSONB       NOT NULL,
    taken_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events must never change: the store is append-only.
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END;
$$;
CREATE TRIGGER events_are_immutable BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER events_are_not_truncated BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();
