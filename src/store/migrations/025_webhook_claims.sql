-- Until when a dispatcher's claim on a delivery runs (claimDue sets it with
-- the claim, and an attempt's outcome clears it): a delivery being sent
-- right then is told apart from one waiting to be sent, so that disabling
-- its endpoint parks only the waiting ones, and re-enabling the endpoint
-- does not send the one in flight a second time. NULL: not claimed.
ALTER TABLE webhook_deliveries ADD COLUMN claim_expire_time timestamptz;
