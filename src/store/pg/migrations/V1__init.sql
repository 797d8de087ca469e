-- payrecon's PostgreSQL schema, version 1 (docs/postgres.md explains each
-- table and who writes it). Every instance runs the migrations at start,
-- one at a time (an advisory lock), so several starting together is safe.

-- Payments: the record as the API shows it (JSON), with the columns that
-- are searched or locked kept beside it.
CREATE TABLE payments (
    id          text PRIMARY KEY,
    provider    text   NOT NULL,
    state       text   NOT NULL,
    created_ms  bigint NOT NULL,
    updated_ms  bigint NOT NULL,
    record      jsonb  NOT NULL
);
CREATE INDEX payments_provider_state ON payments (provider, state);

-- Each distinct observation of a payment, in order; repeats are counted on
-- the row they repeat.
CREATE TABLE observations (
    payment_id  text    NOT NULL REFERENCES payments (id),
    seq         integer NOT NULL,
    record      jsonb   NOT NULL,
    PRIMARY KEY (payment_id, seq)
);

-- Lookup keys (`connpay|inv|…`), idempotency keys and action keys: each
-- taken once, by the unique constraint.
CREATE TABLE lookup_keys (
    key         text PRIMARY KEY,
    target_id   text NOT NULL
);

-- The callback inbox: de-duplication by the primary key, whichever
-- instance a callback reaches.
CREATE TABLE inbox (
    dedupe_key  text PRIMARY KEY,
    payment_id  text,
    received_ms bigint NOT NULL
);

-- Callbacks for payments not tracked yet.
CREATE TABLE orphans (
    id          bigserial PRIMARY KEY,
    match_key   text   NOT NULL,
    received_ms bigint NOT NULL,
    record      jsonb  NOT NULL
);
CREATE INDEX orphans_match_key ON orphans (match_key);
CREATE INDEX orphans_received ON orphans (received_ms);

-- Open poll windows. A window is polled by the instance holding its lease
-- (claimed with FOR UPDATE SKIP LOCKED); an expired lease is free.
CREATE TABLE windows (
    payment_id     text PRIMARY KEY REFERENCES payments (id),
    provider       text   NOT NULL,
    next_ms        bigint NOT NULL,
    lease_owner    text,
    lease_until_ms bigint
);
CREATE INDEX windows_due ON windows (next_ms);

-- Actions and the outbox (the actions not final). An action is sent by the
-- instance holding its lease, and only after its `sending` mark.
CREATE TABLE actions (
    id             text PRIMARY KEY,
    payment_id     text   NOT NULL REFERENCES payments (id),
    state          text   NOT NULL,
    final          boolean NOT NULL,
    lease_owner    text,
    lease_until_ms bigint,
    record         jsonb  NOT NULL
);
CREATE INDEX actions_of_payment ON actions (payment_id);
CREATE INDEX actions_outbox ON actions (id) WHERE NOT final;

-- Notifications of state changes, in order per payment; one sender per
-- payment at a time (a lease on the payment's oldest notice).
CREATE TABLE notices (
    seq            bigserial PRIMARY KEY,
    payment_id     text    NOT NULL,
    dead           boolean NOT NULL DEFAULT false,
    next_ms        bigint  NOT NULL DEFAULT 0,
    lease_owner    text,
    lease_until_ms bigint,
    record         jsonb   NOT NULL
);
CREATE INDEX notices_waiting ON notices (payment_id, seq) WHERE NOT dead;

-- When each payment was last swept, and by which sweep.
CREATE TABLE sweep_marks (
    payment_id  text PRIMARY KEY,
    mark        jsonb NOT NULL
);

-- Small settings the daemon keeps (a disabled notification URL, …).
CREATE TABLE meta (
    name        text PRIMARY KEY,
    value       text NOT NULL
);

-- Leases on work one instance does at a time (each scheduled sweep).
CREATE TABLE leases (
    name           text PRIMARY KEY,
    owner          text   NOT NULL,
    until_ms       bigint NOT NULL
);
