-- Streams a reader of the committed order passed over from some version on,
-- to come back to (the outbox relay: a stream whose event it cannot decode
-- yet, written by a newer release). Its events from `version` on that lie
-- before the reader's checkpoint are still to be handled, in version order;
-- those after it wait while the hold lasts.
CREATE TABLE checkpoint_holds (
    name       TEXT   NOT NULL REFERENCES checkpoints (name),
    stream_id  TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (name, stream_id)
);
