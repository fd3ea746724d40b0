//! Prometheus metrics, kept in process: gauges and counters by name and labels, rendered in the
//! text exposition format at `/metrics`. Values are integers (counts, heights, milliseconds).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric: its kind, its help text, and its value per label set.
type Series = (Option<Kind>, &'static str, BTreeMap<String, i64>);

#[derive(Debug, Default)]
struct Registry {
    series: BTreeMap<&'static str, Series>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",")
}

fn update(name: &'static str, help: &'static str, kind: Kind, pairs: &[(&str, &str)], f: impl FnOnce(&mut i64)) {
    let mut registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    let entry = registry.series.entry(name).or_insert((Some(kind), help, BTreeMap::new()));
    f(entry.2.entry(labels(pairs)).or_insert(0));
}

/// Sets a gauge.
pub fn gauge(name: &'static str, help: &'static str, pairs: &[(&str, &str)], value: i64) {
    update(name, help, Kind::Gauge, pairs, |v| *v = value);
}

/// Adds to a counter.
pub fn count(name: &'static str, help: &'static str, pairs: &[(&str, &str)], by: i64) {
    update(name, help, Kind::Counter, pairs, |v| *v = v.saturating_add(by));
}

/// Removes one label set of a metric: what it measured is no longer this process's to report.
pub fn forget(name: &'static str, pairs: &[(&str, &str)]) {
    let mut registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = registry.series.get_mut(name) {
        entry.2.remove(&labels(pairs));
    }
}

/// A series' current value (a counter never counted reads as `None`): the console shows the
/// figures `/metrics` exports, read from the same registry.
pub fn value(name: &'static str, pairs: &[(&str, &str)]) -> Option<i64> {
    let registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    registry.series.get(name).and_then(|entry| entry.2.get(&labels(pairs)).copied())
}

/// The text exposition of every series.
pub fn render() -> String {
    let registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = String::new();
    for (name, (kind, help, values)) in &registry.series {
        out.push_str(&format!("# HELP {name} {help}\n"));
        let kind = match kind {
            Some(Kind::Counter) => "counter",
            _ => "gauge",
        };
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        for (labels, value) in values {
            if labels.is_empty() {
                out.push_str(&format!("{name} {value}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_labels() {
        count("payrail_test_total", "A test counter.", &[("chain", "eip155:1")], 2);
        count("payrail_test_total", "A test counter.", &[("chain", "eip155:1")], 3);
        gauge("payrail_test_height", "A test gauge.", &[("chain", "a\"b")], 42);
        let text = render();
        assert!(text.contains("# TYPE payrail_test_total counter\npayrail_test_total{chain=\"eip155:1\"} 5\n"), "{text}");
        assert!(text.contains("payrail_test_height{chain=\"a\\\"b\"} 42"), "{text}");
    }
}
