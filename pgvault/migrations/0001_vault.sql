-- The vault's rows in PostgreSQL (issue 18, docs/scale-out.md).
-- No clear PAN and no clear key is ever stored: `pan_sealed` is the
-- vault's record ciphertext (AES under the data key named by
-- `key_version`, with its authentication tag), `pan_hmac` the keyed hash
-- the PAN index uses.

CREATE TABLE tokens (
    -- The token's digits (a token is not a PAN: it is what merchants see).
    token        text     PRIMARY KEY,
    -- One of 4,096 virtual shards, from the PAN's keyed hash: every token
    -- of a card lands on one shard.
    shard        integer  NOT NULL CHECK (shard BETWEEN 0 AND 4095),
    pan_sealed   bytea    NOT NULL,
    key_version  integer  NOT NULL,
    -- The engine's TokenState byte: 0 inactive, 1 active, 2 suspended,
    -- 3 deleted, 4 locked.
    state        smallint NOT NULL,
    expiry_yymm  integer  NOT NULL,
    -- Replay state, as the engine's `vault::replay`: the highest accepted
    -- ATC (-1: none yet) and a 47-bit window, bit k = ATC atc_hi - 1 - k
    -- accepted.
    atc_hi       integer  NOT NULL DEFAULT -1,
    atc_window   bigint   NOT NULL DEFAULT 0,
    -- Bumped by every change: a cache can tell a stale row.
    version      bigint   NOT NULL DEFAULT 0,
    -- The fencing epoch of the lease its shard is served under: an
    -- acceptance under any other epoch matches nothing.
    owner_epoch  bigint   NOT NULL DEFAULT 0
);
CREATE INDEX tokens_shard ON tokens (shard);

-- Every token of a card (one per device) under the card's keyed hash.
CREATE TABLE pan_index (
    pan_hmac bytea NOT NULL,
    token    text  NOT NULL REFERENCES tokens (token),
    PRIMARY KEY (pan_hmac, token)
);

-- Every accepted ATC with the authorization that used it, so that a
-- retried authorization (the same request after an in-doubt commit) gets
-- its original answer rather than a replay decline. Pruned by age.
CREATE TABLE atc_log (
    token       text        NOT NULL,
    atc         integer     NOT NULL,
    auth_id     bytea       NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token, atc)
);

-- Who serves which shard, under which epoch.
CREATE TABLE shard_leases (
    shard  integer PRIMARY KEY CHECK (shard BETWEEN 0 AND 4095),
    owner  text    NOT NULL,
    epoch  bigint  NOT NULL
);
CREATE SEQUENCE lease_epoch START 1;
