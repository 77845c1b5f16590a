-- Authentication at the network boundary: API keys and the keys that sign
-- session tokens.

-- An API key is "wdn_<key_id>_<secret>". Only a SHA-256 of the secret is
-- kept: the secret is 256 random bits, so a fast hash is enough (there is
-- nothing to guess), and a leaked table cannot be replayed.
CREATE TABLE api_keys (
  key_id          text PRIMARY KEY,
  secret_sha256   bytea NOT NULL,
  role            text NOT NULL CHECK (role IN ('admin', 'approver', 'auditor', 'agent')),
  -- The agent an 'agent' key is bound to; no other role has one.
  agent_id        text,
  description     text NOT NULL DEFAULT '',
  create_time     timestamptz NOT NULL,
  revoke_time     timestamptz,
  -- Updated at most once a minute per key and process, off the call path.
  last_used_time  timestamptz,
  CHECK ((role = 'agent') = (agent_id IS NOT NULL))
);
CREATE INDEX api_keys_by_time ON api_keys (create_time DESC, key_id DESC);

-- Ed25519 keys that sign session tokens, as JWK JSON. They live in the store
-- so that every control-plane replica signs with the same key and publishes
-- the same key set. A retired key no longer signs but is still published
-- until the tokens it signed have expired.
CREATE TABLE signing_keys (
  kid             text PRIMARY KEY,
  private_jwk     text NOT NULL,
  public_jwk      text NOT NULL,
  create_time     timestamptz NOT NULL,
  retire_time     timestamptz
);
-- At most one key signs at a time. Replicas starting together each insert a
-- key with ON CONFLICT DO NOTHING against this index, then all read the
-- one that won.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE retire_time IS NULL;
