-- A feed of lifecycle changes and new tokens, so that every node learns
-- a suspend, resume or delete, or a token, made through another node
-- (issue 18): each change draws the next number, and a node asks for the
-- changes after the last number it has seen on its shards.
CREATE SEQUENCE state_change;
ALTER TABLE tokens ADD COLUMN state_changed bigint NOT NULL DEFAULT 0;
-- The vault's own encoding of the token's record and its domain controls
-- (`engine::vault::shared::encode_token`: the PAN only encrypted), from
-- which a node's cache loads the tokens of its shards.
ALTER TABLE tokens ADD COLUMN record bytea;
CREATE INDEX tokens_state_changed ON tokens (state_changed) WHERE state_changed > 0;
-- The tokens not active, by shard: what a node starting (and its periodic
-- comparison) reads.
CREATE INDEX tokens_not_active ON tokens (shard) WHERE state <> 1;
-- atc_log by age: every node prunes what is older than it must keep.
CREATE INDEX atc_log_accepted_at ON atc_log (accepted_at);
