-- ServiceA's own database: the audit log of every notification it handled,
-- so that it survives restarts (its consumer group resumes after what it
-- handled, and never hands those notifications to it again).

CREATE TABLE audit_entries (
    -- The order ServiceA recorded them in: a cursor for reading page by page
    -- that later entries never land before.
    seq            BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The notification's `ce_id`: a notification delivered again is
    -- recorded once.
    event_id       UUID        NOT NULL UNIQUE,
    payment_id     UUID        NOT NULL,
    kind           TEXT        NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    source         TEXT        NOT NULL,
    correlation_id UUID        NOT NULL,
    topic_partition INTEGER    NOT NULL,
    topic_offset   BIGINT      NOT NULL
);
