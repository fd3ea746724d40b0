//! One way to page every list: keyset pagination by an id cursor, forward with `starting_after`
//! and backward with `ending_before`, as `{object: "list", data, has_more}` answers it.
//!
//! A list is ordered by a key (its columns, each ascending or descending, ending in something
//! unique); the cursor is an item's id, and the page is the items strictly after (or before) that
//! item's key. Keys, not offsets: a page stays right while items are added, and costs an index
//! range scan however deep it is. An id that is not in the list (unknown, or another owner's)
//! names no key, so its page is empty.
//!
//! A list reads `limit + 1` rows to learn whether more follow. Backward, it reads in the reverse
//! order (the nearest items first) and turns the page around, so `data` is always in the list's
//! order; `has_more` then says whether more items come *before* the page.

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The items after this one, in the list's order.
    After(String),
    /// The items before this one, nearest last.
    Before(String),
}

/// Which page of a list: at most `limit` items, from the start or either side of a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub cursor: Option<Cursor>,
}

/// A list's order: its key columns, each with its direction (`created_at DESC, id DESC`).
#[derive(Debug, Clone, Copy)]
pub struct Order(pub &'static str);

impl Page {
    /// The first `limit` items.
    pub fn first(limit: i64) -> Self {
        Self { limit, cursor: None }
    }

    /// The cursor's id, to bind where [`Page::condition`] refers to it (`NULL` without one).
    pub fn cursor_id(&self) -> Option<&str> {
        match &self.cursor {
            Some(Cursor::After(id) | Cursor::Before(id)) => Some(id),
            None => None,
        }
    }

    fn backward(&self) -> bool {
        matches!(self.cursor, Some(Cursor::Before(_)))
    }

    /// A condition (`TRUE` without a cursor) keeping the items on the page's side of the cursor
    /// item, whose key `cursor_key` selects (a sub-select of the key's columns, in order, for the
    /// bound cursor id: `SELECT created_at, id FROM api_keys WHERE id = $2 AND merchant_id = $1`).
    pub fn condition(&self, order: Order, cursor_key: &str) -> String {
        let Some(cursor) = &self.cursor else { return "TRUE".to_owned() };
        let columns = order.columns();
        let descending = order.descending();
        // Row comparison orders by the columns left to right, all one way: a key whose columns
        // go different ways is not supported (none exists).
        let after = matches!(cursor, Cursor::After(_));
        let op = if after == descending { "<" } else { ">" };
        format!("({}) {op} ({cursor_key})", columns.join(", "))
    }

    /// The `ORDER BY` list for reading this page: the list's order, reversed for a backward page.
    pub fn order_by(&self, order: Order) -> String {
        let descending = order.descending() != self.backward();
        let dir = if descending { "DESC" } else { "ASC" };
        order.columns().iter().map(|c| format!("{c} {dir}")).collect::<Vec<_>>().join(", ")
    }

    /// The `LIMIT`: one row more than the page, to tell whether more follow.
    pub fn fetch(&self) -> i64 {
        self.limit.saturating_add(1)
    }

    /// The page from the rows read (at most [`Page::fetch`]), in the list's order, and whether
    /// more items lie beyond it in the direction read.
    pub fn finish<T>(&self, mut rows: Vec<T>) -> (Vec<T>, bool) {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        self.arrange(rows, more)
    }

    /// A page a list cut itself (never splitting what belongs together), from its rows in the
    /// order read: in the list's order, with `more` as it found it.
    pub fn arrange<T>(&self, mut rows: Vec<T>, more: bool) -> (Vec<T>, bool) {
        if self.backward() {
            rows.reverse();
        }
        (rows, more)
    }
}

/// The shape most lists have: one owner's rows of one table (`owner = $1`), in `order`, the
/// cursors being values of the `id` column.
#[derive(Debug, Clone, Copy)]
pub struct Listing {
    pub table: &'static str,
    pub columns: &'static str,
    pub owner: &'static str,
    pub id: &'static str,
    pub order: Order,
}

impl Listing {
    /// A page of `owner`'s rows, and whether more follow.
    pub async fn page<T>(&self, pool: &sqlx::PgPool, owner: &str, page: &Page) -> Result<(Vec<T>, bool), sqlx::Error>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let Listing { table, columns, owner: owned_by, id, order } = *self;
        let cursor_key = format!("SELECT {} FROM {table} WHERE {id} = $2 AND {owned_by} = $1", order.columns().join(", "));
        let sql = format!(
            "SELECT {columns} FROM {table} WHERE {owned_by} = $1 AND {} ORDER BY {} LIMIT $3",
            page.condition(order, &cursor_key),
            page.order_by(order),
        );
        let rows = sqlx::query_as(&sql).bind(owner).bind(page.cursor_id()).bind(page.fetch()).fetch_all(pool).await?;
        Ok(page.finish(rows))
    }
}

impl Order {
    fn parts(self) -> impl Iterator<Item = (&'static str, bool)> {
        self.0.split(',').map(|part| {
            let part = part.trim();
            match part.strip_suffix(" DESC") {
                Some(column) => (column.trim(), true),
                None => (part.strip_suffix(" ASC").unwrap_or(part).trim(), false),
            }
        })
    }

    fn columns(self) -> Vec<&'static str> {
        self.parts().map(|(c, _)| c).collect()
    }

    /// Whether the list runs from the largest key down (every column must agree).
    fn descending(self) -> bool {
        let mut parts = self.parts();
        let first = parts.next().is_some_and(|(_, d)| d);
        debug_assert!(parts.all(|(_, d)| d == first), "a key's columns must run one way: {}", self.0);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWEST: Order = Order("created_at DESC, id DESC");
    const OLDEST: Order = Order("seq");

    #[test]
    fn a_first_page_reads_in_order_with_no_condition() {
        let page = Page::first(2);
        assert_eq!(page.condition(NEWEST, "SELECT 1"), "TRUE");
        assert_eq!(page.order_by(NEWEST), "created_at DESC, id DESC");
        assert_eq!(page.fetch(), 3);
        assert_eq!(page.finish(vec![1, 2, 3]), (vec![1, 2], true));
        assert_eq!(page.finish(vec![1, 2]), (vec![1, 2], false));
    }

    #[test]
    fn forward_and_backward_take_each_side_of_the_cursor() {
        let after = Page { limit: 2, cursor: Some(Cursor::After("x".into())) };
        let before = Page { limit: 2, cursor: Some(Cursor::Before("x".into())) };
        assert_eq!(after.condition(NEWEST, "C"), "(created_at, id) < (C)");
        assert_eq!(before.condition(NEWEST, "C"), "(created_at, id) > (C)");
        assert_eq!(after.condition(OLDEST, "C"), "(seq) > (C)");
        assert_eq!(before.condition(OLDEST, "C"), "(seq) < (C)");
        assert_eq!(before.order_by(NEWEST), "created_at ASC, id ASC");
        assert_eq!(before.order_by(OLDEST), "seq DESC");
        assert_eq!(after.order_by(OLDEST), "seq ASC");
        // Read nearest first, answered in the list's order.
        assert_eq!(before.finish(vec![5, 6, 7]), (vec![6, 5], true));
        assert_eq!(before.cursor_id(), Some("x"));
    }
}
