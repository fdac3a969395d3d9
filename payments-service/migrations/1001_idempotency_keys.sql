-- Payments' own table beside the event store (whose migrations are 0001+).
-- An Idempotency-Key remembers the request it first came with and the payment
-- it created, so a retry gets the same payment and appends nothing.
CREATE TABLE idempotency_keys (
    key         TEXT        PRIMARY KEY,
    request     JSONB       NOT NULL,
    payment_id  UUID        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
