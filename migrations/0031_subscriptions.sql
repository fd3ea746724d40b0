-- Plans a merchant sells by the period, and their versions: the terms a subscriber pays under.
-- Changing a plan's terms writes a new version; a subscription keeps the version it was sold
-- until it changes plan.
CREATE TABLE plans (
    id          TEXT PRIMARY KEY CHECK (id ~ '^plan_[0-9a-z]{16,40}$'),
    seq         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The version new subscriptions get.
    version     INTEGER NOT NULL CHECK (version > 0),
    active      BOOLEAN NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX plans_merchant_idx ON plans (merchant_id, seq DESC);

CREATE TABLE plan_versions (
    plan_id               TEXT NOT NULL REFERENCES plans (id),
    version               INTEGER NOT NULL CHECK (version > 0),
    merchant_id           TEXT NOT NULL,
    price_minor           NUMERIC(78, 0) NOT NULL CHECK (price_minor > 0),
    currency              TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval              TEXT NOT NULL CHECK (interval IN ('day', 'week', 'month', 'year')),
    interval_count        INTEGER NOT NULL CHECK (interval_count > 0),
    -- Credits granted at the start of each paid period, in the merchant's credit currency.
    credits_currency      TEXT,
    credits_per_period    NUMERIC(78, 0) CHECK (credits_per_period > 0),
    credits_expire        BOOLEAN NOT NULL DEFAULT false,
    trial_days            INTEGER NOT NULL CHECK (trial_days BETWEEN 0 AND 730),
    entitlements          TEXT[] NOT NULL,
    grace_days            INTEGER NOT NULL CHECK (grace_days BETWEEN 0 AND 60),
    entitlements_in_grace BOOLEAN NOT NULL,
    renewal_lead_s        BIGINT NOT NULL CHECK (renewal_lead_s BETWEEN 0 AND 2592000),
    created_at            TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (plan_id, version),
    FOREIGN KEY (merchant_id, credits_currency) REFERENCES credit_currencies (merchant_id, code),
    CHECK ((credits_currency IS NULL) = (credits_per_period IS NULL))
);

-- A customer's subscription. Period boundaries are counted from `anchor_at` (period number
-- `anchor_period` starts there), so they never drift; `period` is the current period's number.
CREATE TABLE subscriptions (
    id                   TEXT PRIMARY KEY CHECK (id ~ '^sub_[0-9a-z]{16,40}$'),
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    merchant_id          TEXT NOT NULL REFERENCES merchants (id),
    customer_id          TEXT NOT NULL REFERENCES customers (id),
    plan_id              TEXT NOT NULL,
    plan_version         INTEGER NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('incomplete', 'trialing', 'active', 'past_due', 'paused', 'canceled', 'expired')),
    payment              TEXT NOT NULL CHECK (payment IN ('crypto', 'card')),
    -- The card on file (`payment` card): a Stripe PaymentMethod saved on the customer's Stripe
    -- Customer by the first card payment, charged off-session for renewals.
    card_payment_method  TEXT CHECK (length(card_payment_method) <= 100),
    anchor_at            TIMESTAMPTZ NOT NULL,
    anchor_period        INTEGER NOT NULL CHECK (anchor_period > 0),
    period               INTEGER NOT NULL CHECK (period > 0),
    period_start         TIMESTAMPTZ NOT NULL,
    period_end           TIMESTAMPTZ NOT NULL CHECK (period_end > period_start),
    trial_end            TIMESTAMPTZ,
    cancel_at_period_end BOOLEAN NOT NULL DEFAULT false,
    past_due_since       TIMESTAMPTZ,
    paused_at            TIMESTAMPTZ,
    -- Paid time left when paused, given back on resume.
    paused_left_s        BIGINT,
    -- A change of plan taking effect at the next period.
    next_plan_id         TEXT,
    next_plan_version    INTEGER,
    -- Prorated charges and credits for the next invoice (minor units of the plan's currency).
    carry_charge_minor   NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (carry_charge_minor >= 0),
    carry_credit_minor   NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (carry_credit_minor >= 0),
    promo_id             TEXT REFERENCES promo_codes (id),
    -- The subscribing request's Idempotency-Key: a retry answers the same subscription.
    idempotency_key      TEXT CHECK (length(idempotency_key) BETWEEN 1 AND 300),
    canceled_at          TIMESTAMPTZ,
    ended_at             TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (plan_id, plan_version) REFERENCES plan_versions (plan_id, version),
    FOREIGN KEY (next_plan_id, next_plan_version) REFERENCES plan_versions (plan_id, version),
    UNIQUE (merchant_id, idempotency_key)
);
CREATE INDEX subscriptions_customer_idx ON subscriptions (customer_id, seq DESC);
CREATE INDEX subscriptions_merchant_idx ON subscriptions (merchant_id, seq DESC);
CREATE INDEX subscriptions_live_idx ON subscriptions (period_end) WHERE status IN ('incomplete', 'trialing', 'active', 'past_due');

-- Each period of a subscription after the first trial: what it costs, whether it is paid, and
-- whether its credits were granted. Written once per (subscription, period): the scheduler's
-- exactly-once.
CREATE TABLE subscription_periods (
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    period          INTEGER NOT NULL CHECK (period > 0),
    kind            TEXT NOT NULL CHECK (kind IN ('trial', 'paid')),
    starts_at       TIMESTAMPTZ NOT NULL,
    ends_at         TIMESTAMPTZ NOT NULL CHECK (ends_at > starts_at),
    plan_id         TEXT NOT NULL,
    plan_version    INTEGER NOT NULL,
    amount_minor    NUMERIC(78, 0) NOT NULL CHECK (amount_minor >= 0),
    currency        TEXT NOT NULL,
    paid_at         TIMESTAMPTZ,
    credits_granted BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subscription_id, period),
    FOREIGN KEY (plan_id, plan_version) REFERENCES plan_versions (plan_id, version)
);

-- The invoices asking for a period (a new one when the last expired unpaid before the grace ran out).
CREATE TABLE subscription_invoices (
    invoice_id      TEXT PRIMARY KEY REFERENCES invoices (id),
    subscription_id TEXT NOT NULL,
    period          INTEGER NOT NULL,
    attempt         INTEGER NOT NULL CHECK (attempt > 0),
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (subscription_id, period, attempt),
    FOREIGN KEY (subscription_id, period) REFERENCES subscription_periods (subscription_id, period)
);

-- A promo code may be redeemed by a subscription.
ALTER TABLE promo_redemptions ADD COLUMN subscription_id TEXT UNIQUE REFERENCES subscriptions (id);
ALTER TABLE promo_redemptions DROP CONSTRAINT promo_redemptions_check;
ALTER TABLE promo_redemptions ADD CONSTRAINT promo_redemptions_one_target
    CHECK (num_nonnulls(purchase_id, invoice_id, subscription_id) = 1);

-- Which entitlements give access to which resources: the longest matching prefix decides.
CREATE TABLE access_rules (
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    prefix       TEXT NOT NULL CHECK (length(prefix) BETWEEN 1 AND 200),
    entitlements TEXT[] NOT NULL CHECK (cardinality(entitlements) BETWEEN 1 AND 20),
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, prefix)
);

-- A resource a customer unlocked with credits: for good unless refunded. Once per (customer,
-- resource) at a time; unlocked again after a refund, it is the next generation.
CREATE TABLE unlocks (
    customer_id   TEXT NOT NULL REFERENCES customers (id),
    resource      TEXT NOT NULL CHECK (length(resource) BETWEEN 1 AND 200),
    generation    INTEGER NOT NULL DEFAULT 1 CHECK (generation > 0),
    merchant_id   TEXT NOT NULL REFERENCES merchants (id),
    currency      TEXT NOT NULL,
    price_minor   NUMERIC(78, 0) NOT NULL CHECK (price_minor > 0),
    creator_id    TEXT,
    txn_id        TEXT NOT NULL,
    refunded_at   TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, resource, generation)
);
CREATE UNIQUE INDEX unlocks_standing_idx ON unlocks (customer_id, resource) WHERE refunded_at IS NULL;

-- The Stripe Customer of a payrail customer who pays a subscription by card.
CREATE TABLE card_customers (
    customer_id        TEXT PRIMARY KEY REFERENCES customers (id),
    stripe_customer_id TEXT NOT NULL UNIQUE CHECK (stripe_customer_id ~ '^cus_[0-9A-Za-z_]{1,250}$'),
    created_at         TIMESTAMPTZ NOT NULL
);
