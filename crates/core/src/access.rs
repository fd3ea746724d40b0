//! Who may read what: the decision for one resource, given what the customer holds.
//!
//! In order: an unlock of the resource (permanent); else the access rule with the longest prefix of
//! the resource — access when the customer holds any of its entitlements; else access when the
//! resource is itself an entitlement the customer holds; else none. Among several entitlements that
//! open a resource, the one that lasts longest is named (then the first by name).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

/// What a customer holds, and the merchant's rules, as read for one check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Resources unlocked and not refunded.
    pub unlocked: HashSet<String>,
    /// Entitlements of live subscriptions, with when each ends unless renewed.
    pub entitlements: HashMap<String, DateTime<Utc>>,
    /// Access rules: prefix → the entitlements that open it.
    pub rules: HashMap<String, Vec<String>>,
}

/// The answer for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub access: bool,
    /// `unlock`, the entitlement that opens it, or `none`.
    pub reason: String,
    /// When access by an entitlement ends; `None` for an unlock or no access.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Holdings {
    /// The rule with the longest prefix of `resource`: its prefixes probed from the longest down.
    fn best_rule(&self, resource: &str) -> Option<&Vec<String>> {
        (1..=resource.len()).rev().filter(|&end| resource.is_char_boundary(end)).find_map(|end| self.rules.get(&resource[..end]))
    }

    pub fn decide(&self, resource: &str) -> Decision {
        if self.unlocked.contains(resource) {
            return Decision { access: true, reason: "unlock".to_owned(), expires_at: None };
        }
        let granted = match self.best_rule(resource) {
            Some(opening) => opening
                .iter()
                .filter_map(|e| self.entitlements.get(e).map(|until| (e, *until)))
                .max_by(|(a, a_until), (b, b_until)| a_until.cmp(b_until).then_with(|| b.cmp(a))),
            None => self.entitlements.get_key_value(resource).map(|(e, until)| (e, *until)),
        };
        match granted {
            Some((e, until)) => Decision { access: true, reason: e.clone(), expires_at: Some(until) },
            None => Decision { access: false, reason: "none".to_owned(), expires_at: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn holdings() -> Holdings {
        let at = |d| Utc.with_ymd_and_hms(2027, 1, d, 0, 0, 0).single().unwrap();
        Holdings {
            unlocked: ["story/1/ch/2".to_owned()].into(),
            entitlements: [("tier:basic".to_owned(), at(10)), ("tier:gold".to_owned(), at(20)), ("tier:premium".to_owned(), at(20))].into(),
            rules: [
                ("story/".to_owned(), vec!["tier:basic".to_owned()]),
                ("story/1/".to_owned(), vec!["tier:premium".to_owned(), "tier:gold".to_owned()]),
                ("audio/".to_owned(), vec!["addon:audio".to_owned()]),
            ]
            .into(),
        }
    }

    #[test]
    fn unlocks_then_the_longest_rule_then_the_entitlement_itself() {
        let h = holdings();
        assert_eq!(h.decide("story/1/ch/2").reason, "unlock");
        assert_eq!(h.decide("story/2/ch/1").reason, "tier:basic");
        // The longest rule decides; of two held, the longer-lasting, then the first by name.
        assert_eq!(h.decide("story/1/ch/9").reason, "tier:gold");
        let audio = h.decide("audio/7");
        assert_eq!((audio.access, audio.reason.as_str(), audio.expires_at), (false, "none", None));
        assert_eq!(h.decide("tier:premium").reason, "tier:premium");
        assert_eq!(h.decide("tier:silver").reason, "none");
        assert_eq!(h.decide("stor").reason, "none");
    }
}
