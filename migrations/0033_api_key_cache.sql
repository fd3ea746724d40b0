-- Keys are cached by every daemon for a few seconds, so authentication costs no query per request.
-- A change that narrows what a key may do (revoked, expiring, another secret, role, tenant, scope,
-- rate limit) or deletes it is announced on the channel `payrail_api_keys` with the key's id, in
-- the transaction that makes it: every replica forgets the key when that commits, whatever wrote
-- it (the API, `payrail keys revoke`, or an operator's own SQL). `last_used_at` is not announced.
--
-- Each key may also carry its own request rate (tokens per second and burst); NULL is the
-- daemon's default (`[server] key_requests_per_s` and `key_burst`).
ALTER TABLE api_keys
    ADD COLUMN requests_per_s INTEGER CHECK (requests_per_s BETWEEN 1 AND 100000),
    ADD COLUMN burst          INTEGER CHECK (burst BETWEEN 1 AND 1000000);

CREATE FUNCTION api_keys_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('payrail_api_keys', OLD.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed AFTER UPDATE ON api_keys FOR EACH ROW
    WHEN ((OLD.revoked_at, OLD.expires_at, OLD.secret_hash, OLD.role, OLD.merchant_id, OLD.creator_id,
           OLD.read_only, OLD.requests_per_s, OLD.burst)
          IS DISTINCT FROM
          (NEW.revoked_at, NEW.expires_at, NEW.secret_hash, NEW.role, NEW.merchant_id, NEW.creator_id,
           NEW.read_only, NEW.requests_per_s, NEW.burst))
    EXECUTE FUNCTION api_keys_announce();

CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys FOR EACH ROW
    EXECUTE FUNCTION api_keys_announce();
