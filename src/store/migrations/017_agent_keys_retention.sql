-- CreateSession keys live in their agent's scope ("a:<agent>"), and an
-- agent never ends, so migration 014's pruning (keys of ended sessions)
-- never reached them: an agent creating sessions with keys added a row,
-- answer included, for good. The sweeper now removes them
-- --idempotency-retention after they were used, oldest first, through
-- this index (its predicate is PRUNE_AGENT_KEYS_SQL's, word for word).
CREATE INDEX idempotency_keys_agent_by_time ON idempotency_keys (create_time) WHERE scope LIKE 'a:%';
