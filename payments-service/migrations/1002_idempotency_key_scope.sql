-- An Idempotency-Key belongs to one customer and one operation (creating a
-- payment, refunding one), and expires: the same key from another customer,
-- for the other operation, or after it expired, is a new request.
ALTER TABLE idempotency_keys ADD COLUMN scope TEXT;
ALTER TABLE idempotency_keys ADD COLUMN operation TEXT NOT NULL DEFAULT 'payment';
ALTER TABLE idempotency_keys ADD COLUMN expires_at TIMESTAMPTZ;

-- Keys stored before: payments, in their customer's scope, for a day from
-- when they were first used.
UPDATE idempotency_keys k
SET scope = e.data ->> 'customer_id',
    expires_at = k.created_at + interval '24 hours'
FROM events e
WHERE e.stream_id = 'payment-' || k.payment_id AND e.version = 1;
DELETE FROM idempotency_keys WHERE scope IS NULL;

ALTER TABLE idempotency_keys ALTER COLUMN scope SET NOT NULL;
ALTER TABLE idempotency_keys ALTER COLUMN expires_at SET NOT NULL;
ALTER TABLE idempotency_keys ALTER COLUMN operation DROP DEFAULT;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (scope, operation, key);
-- For purging expired keys.
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
