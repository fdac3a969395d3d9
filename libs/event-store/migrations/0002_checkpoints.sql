-- Where each reader of the global order ("subscription") has got to. The
-- outbox relay records its checkpoint here only after Kafka acknowledged.
CREATE TABLE checkpoints (
    name            TEXT   PRIMARY KEY,
    transaction_id  XID8   NOT NULL,
    position        BIGINT NOT NULL
);

CREATE INDEX events_in_commit_order ON events (transaction_id, position);
