-- The card rail (Stripe). A card payment is credited only from a verified webhook, through the same
-- path as a chain payment (a `payments` row keyed `stripe:{payment intent}`, its ledger entry, the
-- invoice's status and the outbox row in one transaction). These tables keep what Stripe said and
-- what was asked of it.

-- Each try at paying an invoice by card: one PaymentIntent or Checkout Session. The idempotency key
-- sent to Stripe is the invoice id and the attempt number, so a call retried after a lost answer
-- cannot create a second one.
CREATE TABLE card_attempts (
    id                  TEXT PRIMARY KEY CHECK (id ~ '^ca_[0-9a-z]{16,40}$'),
    invoice_id          TEXT NOT NULL REFERENCES invoices (id),
    attempt             INTEGER NOT NULL CHECK (attempt >= 1),
    idempotency_key     TEXT NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    kind                TEXT NOT NULL CHECK (kind IN ('payment_intent', 'checkout_session')),
    payment_method      TEXT CHECK (length(payment_method) <= 255),
    payment_intent_id   TEXT UNIQUE CHECK (length(payment_intent_id) <= 255),
    checkout_session_id TEXT UNIQUE CHECK (length(checkout_session_id) <= 255),
    checkout_url        TEXT CHECK (length(checkout_url) <= 2048),
    currency            TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor        NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    -- `creating` until Stripe answers; then the PaymentIntent's status (a session is `open`).
    status              TEXT NOT NULL CHECK (status IN ('creating', 'open', 'requires_payment_method', 'requires_confirmation',
                                                        'requires_action', 'processing', 'succeeded', 'failed', 'canceled')),
    failure_code        TEXT CHECK (length(failure_code) <= 255),
    failure_message     TEXT CHECK (length(failure_message) <= 1000),
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    UNIQUE (invoice_id, attempt)
);
-- At most one attempt per invoice is under way or has succeeded: a form sent twice cannot charge twice.
CREATE UNIQUE INDEX card_attempts_live_uq ON card_attempts (invoice_id) WHERE status IN ('creating', 'open', 'processing', 'succeeded');

-- A card payment that was credited, and how much of it went back: refunds and disputes reverse the
-- payment's ledger entry in proportion. `refunded_minor` follows Stripe's cumulative
-- `amount_refunded` of the charge, so reports of it in any order post each refunded cent once.
CREATE TABLE card_payments (
    payment_intent_id TEXT PRIMARY KEY CHECK (length(payment_intent_id) BETWEEN 1 AND 255),
    payment_id        TEXT NOT NULL UNIQUE REFERENCES payments (id),
    invoice_id        TEXT NOT NULL REFERENCES invoices (id),
    merchant_id       TEXT NOT NULL REFERENCES merchants (id),
    charge_id         TEXT UNIQUE CHECK (length(charge_id) <= 255),
    currency          TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor      NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    refunded_minor    NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    disputed_minor    NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (disputed_minor >= 0),
    ledger_entry_id   BIGINT NOT NULL REFERENCES journal_entries (id),
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    CHECK (refunded_minor + disputed_minor <= amount_minor)
);
CREATE INDEX card_payments_invoice_idx ON card_payments (invoice_id);

-- Refunds a merchant asked for through the API. `pending` until Stripe answers.
CREATE TABLE card_refunds (
    id                TEXT PRIMARY KEY CHECK (id ~ '^rf_[0-9a-z]{16,40}$'),
    invoice_id        TEXT NOT NULL REFERENCES invoices (id),
    merchant_id       TEXT NOT NULL REFERENCES merchants (id),
    payment_intent_id TEXT NOT NULL REFERENCES card_payments (payment_intent_id),
    stripe_refund_id  TEXT UNIQUE CHECK (length(stripe_refund_id) <= 255),
    currency          TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor      NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    reason            TEXT CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    status            TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_message   TEXT CHECK (length(failure_message) <= 1000),
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX card_refunds_invoice_idx ON card_refunds (invoice_id, created_at);

-- Every verified Stripe event, whatever came of it: deduplicated by Stripe's event id, and kept when
-- it names no invoice payrail knows (`review`), so nothing Stripe says is dropped. An event about a
-- payment not credited yet (a refund that overtook its payment) waits as `deferred` and is applied
-- right after the payment.
CREATE TABLE stripe_events (
    id                TEXT PRIMARY KEY CHECK (id ~ '^evt_[0-9A-Za-z_]{1,250}$'),
    event_type        TEXT NOT NULL CHECK (length(event_type) BETWEEN 1 AND 255),
    stripe_created_at TIMESTAMPTZ NOT NULL,
    livemode          BOOLEAN NOT NULL,
    payload           JSONB NOT NULL,
    invoice_id        TEXT,
    payment_intent_id TEXT,
    status            TEXT NOT NULL CHECK (status IN ('processed', 'ignored', 'review', 'deferred')),
    note              TEXT CHECK (length(note) <= 1000),
    received_at       TIMESTAMPTZ NOT NULL,
    processed_at      TIMESTAMPTZ
);
CREATE INDEX stripe_events_review_idx ON stripe_events (received_at) WHERE status = 'review';
CREATE INDEX stripe_events_deferred_idx ON stripe_events (payment_intent_id) WHERE status = 'deferred';

-- Each accepted delivery of an event, by its signed timestamp. Stripe signs every retry anew, so
-- the same event with a new timestamp is a retry (acknowledged, not processed again) and the same
-- event with the same timestamp is a copy of a delivery already accepted: a replay, refused.
CREATE TABLE stripe_event_deliveries (
    event_id    TEXT NOT NULL REFERENCES stripe_events (id),
    signed_at   BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (event_id, signed_at)
);
