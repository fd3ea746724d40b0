-- Endpoint signing secrets sealed at rest (XChaCha20-Poly1305 under the daemon's secrets key, bound
-- to the endpoint id; see src/secrets.rs). A row holds its secret either sealed or, where the
-- configuration allows plaintext (development), as is; never both. The daemon seals plaintext rows
-- at start-up once a key is configured, so nothing here rewrites them.
ALTER TABLE webhook_endpoints ADD COLUMN secret_sealed BYTEA CHECK (octet_length(secret_sealed) BETWEEN 41 AND 1024);
ALTER TABLE webhook_endpoints ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE webhook_endpoints ADD CONSTRAINT webhook_endpoints_secret_one_form
    CHECK ((secret IS NULL) <> (secret_sealed IS NULL));
