-- GET /v1/unapplied: a merchant's payments held on its unapplied balance, oldest first.
CREATE INDEX payments_unapplied_idx ON payments (merchant_id, seen_at, id)
    WHERE applied_to = 'unapplied' AND status IN ('seen', 'confirmed');
