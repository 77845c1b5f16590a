-- Secrets an endpoint had before its last rotations (RotateWebhookSecret)
-- that still sign its deliveries, beside the current one, until each one's
-- expiry: [{"secret": "...", "expire_ms": <epoch ms>}, ...], oldest first.
-- previous_secrets_expire_time is the latest of those expiries (NULL when
-- none), so an endpoint read shows it without reading a secret.
ALTER TABLE webhook_endpoints ADD COLUMN previous_secrets jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE webhook_endpoints ADD COLUMN previous_secrets_expire_time timestamptz;
