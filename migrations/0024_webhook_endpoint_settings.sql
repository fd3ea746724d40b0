-- An endpoint's note for people, and a switch: a disabled endpoint gets no new events and its
-- pending deliveries wait until it is enabled again.
ALTER TABLE webhook_endpoints ADD COLUMN description TEXT CHECK (length(description) <= 500),
    ADD COLUMN disabled_at TIMESTAMPTZ;
