//! Creators: who shares in a merchant's revenue, where they are paid, the split rules that name
//! them, and what the ledger owes them.
//!
//! A creator belongs to one merchant and gets its own API key (role `creator`) that sees only that
//! creator. Balances come from the ledger account `liabilities:creator:{id}`; what is still pending
//! is the creator's share of payments seen on an invoice but not yet confirmed, computed from the
//! split fixed on that invoice with the same rounding (down) the credit will use.

use std::collections::BTreeMap;

use alloy_primitives::Address;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Order, Page};
use sqlx::{PgConnection, PgPool};
use thiserror::Error;

use crate::ids::new_id;
use crate::invoice::split::{check_creators, CreatorShare, Splits};
use crate::invoice::InvoiceError;
use crate::ledger::{AccountCode, Ledger, LedgerError};
use crate::money::ChainId;

/// Longest creator name.
pub const CREATOR_NAME_LEN_MAX: usize = 200;
/// Most payout addresses one creator may have.
pub const PAYOUT_ADDRESSES_MAX: usize = 32;
/// Most prefix rules one merchant may set.
pub const SPLIT_RULES_MAX: usize = 200;

#[derive(Debug, Error)]
pub enum CreatorError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("creator {id} not found")]
    NotFound { id: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<InvoiceError> for CreatorError {
    fn from(error: InvoiceError) -> Self {
        match error {
            InvoiceError::Invalid { field, reason } => Self::Invalid { field, reason },
            InvoiceError::Database(e) => Self::Database(e),
            InvoiceError::Ledger(e) => Self::Ledger(e),
            other => Self::Invalid { field: "splits", reason: other.to_string() },
        }
    }
}

pub type Result<T, E = CreatorError> = std::result::Result<T, E>;

fn invalid(field: &'static str, reason: impl Into<String>) -> CreatorError {
    CreatorError::Invalid { field, reason: reason.into() }
}

/// Validates a payout address for `chain` and returns it as stored. EVM addresses: 20 bytes of hex;
/// a mixed-case address must carry a valid EIP-55 checksum (a typo in it is caught, not paid to),
/// and every address is stored checksummed. Bitcoin addresses: bech32 or base58 characters only.
pub fn normalize_payout_address(chain: &str, address: &str) -> Result<String> {
    let field = "payout_addresses";
    let chain_id: ChainId = chain.parse().map_err(|e| invalid(field, format!("{chain:?} is not a CAIP-2 chain id: {e}")))?;
    let chain = chain_id.to_string();
    if chain.starts_with("eip155:") {
        let hex = address
            .strip_prefix("0x")
            .ok_or_else(|| invalid(field, format!("{chain}: {address:?} must start with 0x")))?;
        if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(field, format!("{chain}: {address:?} is not 20 bytes of hex")));
        }
        let mixed = hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
        let parsed = if mixed {
            Address::parse_checksummed(address, None)
                .map_err(|_| invalid(field, format!("{chain}: {address:?} fails its EIP-55 checksum")))?
        } else {
            address.parse::<Address>().map_err(|e| invalid(field, format!("{chain}: {address:?}: {e}")))?
        };
        if parsed == Address::ZERO {
            return Err(invalid(field, format!("{chain}: the zero address burns what is sent to it")));
        }
        Ok(parsed.to_checksum(None))
    } else if chain.starts_with("bip122:") {
        let ok = (14..=90).contains(&address.len()) && address.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(invalid(field, format!("{chain}: {address:?} is not a Bitcoin address")));
        }
        Ok(address.to_owned())
    } else {
        Err(invalid(field, format!("{chain}: payouts are made on EVM and Bitcoin chains only")))
    }
}

/// Body of `POST /v1/creators`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCreator {
    pub name: String,
    /// CAIP-2 chain id → address.
    #[serde(default)]
    pub payout_addresses: BTreeMap<String, String>,
}

/// A creator as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatorView {
    pub id: String,
    pub merchant_id: String,
    pub name: String,
    /// CAIP-2 chain id → address (EVM addresses EIP-55 checksummed).
    pub payout_addresses: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
}

/// A new creator and the one-time plaintext of its API key.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewCreator {
    #[serde(flatten)]
    pub creator: CreatorView,
    /// Shown once; only its digest is stored. An idempotent replay of the creation answers `null`.
    #[schema(value_type = Option<String>)]
    pub api_key: String,
}

pub async fn create_creator(pool: &PgPool, merchant_id: &str, request: &CreateCreator) -> Result<NewCreator> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > CREATOR_NAME_LEN_MAX || name.chars().any(char::is_control) {
        return Err(invalid("name", format!("must be 1..={CREATOR_NAME_LEN_MAX} characters, none of them control characters")));
    }
    if request.payout_addresses.len() > PAYOUT_ADDRESSES_MAX {
        return Err(invalid("payout_addresses", format!("at most {PAYOUT_ADDRESSES_MAX}")));
    }
    let mut addresses = BTreeMap::new();
    for (chain, address) in &request.payout_addresses {
        let chain_id: ChainId = chain
            .parse()
            .map_err(|e| invalid("payout_addresses", format!("{chain:?} is not a CAIP-2 chain id: {e}")))?;
        addresses.insert(chain_id.to_string(), normalize_payout_address(chain, address)?);
    }
    let id = new_id("cr");
    let mut tx = pool.begin().await?;
    let created_at: DateTime<Utc> =
        sqlx::query_scalar("INSERT INTO creators (id, merchant_id, name) VALUES ($1, $2, $3) RETURNING created_at")
            .bind(&id)
            .bind(merchant_id)
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    for (chain, address) in &addresses {
        sqlx::query("INSERT INTO creator_payout_addresses (creator_id, chain, address) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(chain)
            .bind(address)
            .execute(&mut *tx)
            .await?;
    }
    let api_key = crate::merchant::issue_creator_key(&mut tx, merchant_id, &id).await?;
    tx.commit().await?;
    Ok(NewCreator {
        creator: CreatorView {
            id,
            merchant_id: merchant_id.to_owned(),
            name: name.to_owned(),
            payout_addresses: addresses,
            created_at,
        },
        api_key,
    })
}

/// A page of the merchant's creators, oldest first, and whether more follow.
pub async fn list_creators(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<CreatorView>, bool)> {
    query_creators(pool, merchant_id, None, page).await
}

/// A page of the merchant's creators (only `only`, when given), oldest first.
async fn query_creators(pool: &PgPool, merchant_id: &str, only: Option<&str>, page: &Page) -> Result<(Vec<CreatorView>, bool)> {
    const ORDER: Order = Order("created_at, id");
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT id, name, created_at FROM creators WHERE merchant_id = $1 AND ($4::text IS NULL OR id = $4) \
           AND {} ORDER BY {} LIMIT $3",
        page.condition(ORDER, "SELECT created_at, id FROM creators WHERE id = $2 AND merchant_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(merchant_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .bind(only)
    .fetch_all(pool)
    .await?;
    let (rows, has_more) = page.finish(rows);
    let ids: Vec<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    let addresses: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.creator_id, a.chain, a.address FROM creator_payout_addresses a WHERE a.creator_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_creator: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (creator_id, chain, address) in addresses {
        by_creator.entry(creator_id).or_default().insert(chain, address);
    }
    let page = rows
        .into_iter()
        .map(|(id, name, created_at)| CreatorView {
            payout_addresses: by_creator.remove(&id).unwrap_or_default(),
            id,
            merchant_id: merchant_id.to_owned(),
            name,
            created_at,
        })
        .collect();
    Ok((page, has_more))
}

/// One of the merchant's creators; `NotFound` for any other (another merchant's looks the same).
pub async fn get_creator(pool: &PgPool, merchant_id: &str, creator_id: &str) -> Result<CreatorView> {
    query_creators(pool, merchant_id, Some(creator_id), &Page::first(1))
        .await?
        .0
        .into_iter()
        .next()
        .ok_or_else(|| CreatorError::NotFound { id: creator_id.to_owned() })
}

/// One rule: the split for invoices whose `order_id` starts with `order_id_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrefixRule {
    pub order_id_prefix: String,
    #[serde(default)]
    pub splits: Vec<CreatorShare>,
    #[serde(default)]
    pub platform_fee_bps: u32,
}

/// Body of `PUT /v1/split_rules` and of its `GET`: the merchant's whole rule set. A `PUT` replaces
/// every rule; invoices that exist keep the split they were created with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitRules {
    /// The split of invoices no prefix rule matches; none when absent.
    #[serde(default)]
    pub default: Option<Splits>,
    /// Longest matching prefix wins over shorter ones and over the default.
    #[serde(default)]
    pub prefixes: Vec<PrefixRule>,
}

pub async fn set_split_rules(pool: &PgPool, merchant_id: &str, rules: &SplitRules) -> Result<SplitRules> {
    if rules.prefixes.len() > SPLIT_RULES_MAX {
        return Err(invalid("prefixes", format!("at most {SPLIT_RULES_MAX} rules")));
    }
    let mut all: Vec<(String, Splits)> = Vec::new();
    if let Some(default) = &rules.default {
        all.push((String::new(), default.clone()));
    }
    for rule in &rules.prefixes {
        if rule.order_id_prefix.is_empty()
            || rule.order_id_prefix.len() > crate::invoice::create::ORDER_ID_LEN_MAX
            || rule.order_id_prefix.chars().any(char::is_control)
        {
            return Err(invalid(
                "order_id_prefix",
                "must be 1..=200 bytes without control characters (the default rule has no prefix)",
            ));
        }
        if all.iter().any(|(p, _)| *p == rule.order_id_prefix) {
            return Err(invalid("order_id_prefix", format!("{:?} is given twice", rule.order_id_prefix)));
        }
        all.push((
            rule.order_id_prefix.clone(),
            Splits { splits: rule.splits.clone(), platform_fee_bps: rule.platform_fee_bps },
        ));
    }
    let mut tx = pool.begin().await?;
    for (_, splits) in &all {
        splits.validate().map_err(InvoiceError::from)?;
        check_creators(&mut tx, merchant_id, splits).await?;
    }
    sqlx::query("DELETE FROM split_rules WHERE merchant_id = $1").bind(merchant_id).execute(&mut *tx).await?;
    for (prefix, splits) in &all {
        sqlx::query("INSERT INTO split_rules (merchant_id, order_id_prefix, platform_fee_bps) VALUES ($1, $2, $3)")
            .bind(merchant_id)
            .bind(prefix)
            .bind(i32::try_from(splits.platform_fee_bps).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        for (position, share) in splits.splits.iter().enumerate() {
            sqlx::query(
                "INSERT INTO split_rule_shares (merchant_id, order_id_prefix, creator_id, bps, position) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(merchant_id)
            .bind(prefix)
            .bind(&share.creator)
            .bind(i32::try_from(share.bps).unwrap_or(i32::MAX))
            .bind(i16::try_from(position).unwrap_or(i16::MAX))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    let mut conn = pool.acquire().await?;
    split_rules(&mut conn, merchant_id).await
}

pub async fn split_rules(conn: &mut PgConnection, merchant_id: &str) -> Result<SplitRules> {
    let rules: Vec<(String, i32)> = sqlx::query_as(
        "SELECT order_id_prefix, platform_fee_bps FROM split_rules WHERE merchant_id = $1 ORDER BY order_id_prefix",
    )
    .bind(merchant_id)
    .fetch_all(&mut *conn)
    .await?;
    let shares: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT order_id_prefix, creator_id, bps FROM split_rule_shares WHERE merchant_id = $1 \
         ORDER BY order_id_prefix, position",
    )
    .bind(merchant_id)
    .fetch_all(&mut *conn)
    .await?;
    let bps = |v: i32, column: &str| -> Result<u32> {
        u32::try_from(v).map_err(|_| invalid("split_rules", format!("stored {column} {v} is not valid")))
    };
    let mut out = SplitRules::default();
    for (prefix, fee) in rules {
        let mut splits = Vec::new();
        for (share_prefix, creator, share_bps) in &shares {
            if *share_prefix == prefix {
                splits.push(CreatorShare { creator: creator.clone(), bps: bps(*share_bps, "bps")? });
            }
        }
        let platform_fee_bps = bps(fee, "platform_fee_bps")?;
        if prefix.is_empty() {
            out.default = Some(Splits { splits, platform_fee_bps });
        } else {
            out.prefixes.push(PrefixRule { order_id_prefix: prefix, splits, platform_fee_bps });
        }
    }
    Ok(out)
}

/// A creator's balance in one asset, in the asset's smallest unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CreatorBalance {
    pub asset: String,
    /// Credited from confirmed payments.
    pub available_minor: String,
    /// The creator's share of payments seen but not yet confirmed.
    pub pending_minor: String,
}

/// `GET /v1/creators/me`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatorAccount {
    pub id: String,
    pub merchant_id: String,
    pub name: String,
    pub balances: Vec<CreatorBalance>,
}

pub async fn creator_account(pool: &PgPool, ledger: &Ledger, creator_id: &str) -> Result<CreatorAccount> {
    let mut conn = pool.acquire().await?;
    let (merchant_id, name): (String, String) = sqlx::query_as("SELECT merchant_id, name FROM creators WHERE id = $1")
        .bind(creator_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| CreatorError::NotFound { id: creator_id.to_owned() })?;
    let mut lines: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (asset, balance) in ledger.balances(&mut conn, &AccountCode::creator(creator_id)).await? {
        lines.insert(asset, (balance.to_string(), "0".to_owned()));
    }
    // Rounded down per payment, as the credit will be.
    let pending: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.asset, sum(floor(p.amount_minor * s.bps / 10000))::text AS pending \
         FROM payments p JOIN invoice_splits s ON s.invoice_id = p.invoice_id AND s.creator_id = $1 \
         WHERE p.status = 'seen' AND p.applied_to = 'invoice' GROUP BY p.asset",
    )
    .bind(creator_id)
    .fetch_all(&mut *conn)
    .await?;
    for (asset, value) in pending {
        lines.entry(asset).or_insert_with(|| ("0".to_owned(), "0".to_owned())).1 = value;
    }
    Ok(CreatorAccount {
        id: creator_id.to_owned(),
        merchant_id,
        name,
        balances: lines
            .into_iter()
            .map(|(asset, (available_minor, pending_minor))| CreatorBalance { asset, available_minor, pending_minor })
            .collect(),
    })
}

pub use crate::ledger::{StatementLine, StatementRange, STATEMENT_PAGE_LIMIT_MAX};

/// A page of the creator's postings (`liabilities:creator:{id}`), oldest first, and whether more
/// follow.
pub async fn statement(pool: &PgPool, creator_id: &str, range: &StatementRange) -> Result<(Vec<StatementLine>, bool)> {
    Ok(crate::ledger::statement(pool, &[AccountCode::creator(creator_id)], range).await?)
}

/// The statement as CSV: `entry_id,at,kind,asset,amount_minor,invoice_id`.
pub fn statement_csv(lines: &[StatementLine]) -> String {
    crate::ledger::statement_csv(lines, false)
}
