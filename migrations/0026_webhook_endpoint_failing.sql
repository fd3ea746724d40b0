-- Since when an endpoint's deliveries fail without one succeeding in between; an endpoint failing
-- for `disable_failing_after` is disabled (`disabled_reason` 'failing') until its merchant enables it.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since TIMESTAMPTZ,
    ADD COLUMN disabled_reason TEXT CHECK (disabled_reason IN ('merchant', 'failing'));
