//! Public object ids: a type prefix (`inv_`, `pay_`, `mer_`, `evt_`, `key_`) and 24 random base-36
//! characters (about 124 bits), so ids cannot be guessed or enumerated.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 24;

pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(prefix.len() + 1 + RANDOM_LEN);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..RANDOM_LEN {
        id.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
    }
    id
}

/// Whether `id` has the shape of an id with `prefix`; lets the API answer 404 without a query.
pub fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| (16..=40).contains(&rest.len()) && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_differ() {
        let a = new_id("inv");
        let b = new_id("inv");
        assert!(is_id(&a, "inv"));
        assert!(!is_id(&a, "pay"));
        assert_ne!(a, b);
        assert!(!is_id("inv_UPPER0000000000000000", "inv"));
        assert!(!is_id("inv_short", "inv"));
    }
}
