-- Handled notifications are pruned by age (RETENTION_DAYS), oldest first.
CREATE INDEX processed_notifications_by_processed_at ON processed_notifications (processed_at);
