-- ServiceB's own database: what it learnt from Payments, and which
-- notifications it has handled. Both are written in one transaction, so a
-- notification delivered again (at-least-once, a replay, a redrive) is
-- recognised and never recorded twice, across restarts too.

-- Every notification handled, by its event id (`ce_id`).
CREATE TABLE processed_notifications (
    event_id     uuid        PRIMARY KEY,
    payment_id   uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- The newest state GetPaymentInfo returned for each payment.
CREATE TABLE payment_records (
    payment_id      uuid        PRIMARY KEY,
    payment         jsonb       NOT NULL,
    version         bigint      NOT NULL,
    -- The notification whose callback returned `payment`.
    notification_id uuid        NOT NULL,
    fetched_at      timestamptz NOT NULL,
    -- The consumer's attempt at the notification that succeeded.
    attempts        integer     NOT NULL,
    -- How many notifications of this payment were handled: one per event
    -- Payments published for it, never more.
    notifications   integer     NOT NULL
);
