-- Every quote keeps the rates, sources and times it was built from, beside the locked rate.
ALTER TABLE payment_options ADD COLUMN rate_sources JSONB NOT NULL DEFAULT '[]'::jsonb;
