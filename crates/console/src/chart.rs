//! Charts drawn on the server as inline SVG: stacked bars over categories (days, mostly). The
//! numbers are integers of smallest units (or counts) and every coordinate is integer arithmetic
//! on them — no floats anywhere near money. Each chart has a title and description for screen
//! readers, a tooltip per bar segment, and the table of its numbers behind it (shown on demand,
//! and downloadable as CSV like any other table).

use maud::{html, Markup};

use crate::page::{units, Cell, Table};

const WIDTH: u128 = 720;
const HEIGHT: u128 = 240;
const LEFT: u128 = 72;
const RIGHT: u128 = 8;
const TOP: u128 = 12;
const BOTTOM: u128 = 28;
/// Most category labels written under the bars; the others are skipped evenly.
const LABELS_MAX: usize = 10;
/// Series colours, in order (distinguishable in common colour blindness).
const PALETTE: [&str; 8] = ["#2f6fbf", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#7f7f7f", "#f0e442"];

/// One stack layer: a value per category.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<u128>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    /// The CSV download's name.
    /// The chart's id on the page and its table's CSV name.
    pub name: String,
    pub title: String,
    /// What the values count (`USD`, `invoices`), said in the description and the table.
    pub unit: String,
    /// Decimals of the unit: values are in its smallest unit.
    pub decimals: u8,
    pub category_label: &'static str,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

impl Chart {
    fn total(&self, category: usize) -> u128 {
        self.series.iter().filter_map(|s| s.values.get(category)).fold(0u128, |a, v| a.saturating_add(*v))
    }

    fn show(&self, value: u128) -> String {
        units(&value.to_string(), Some(self.decimals))
    }

    /// The numbers drawn, as a table: one row per category, one column per series, and the total.
    pub fn table(&self) -> Table {
        let mut table = Table::new(self.name.clone(), format!("{} ({})", self.title, self.unit), &[self.category_label]);
        table.head.extend(self.series.iter().map(|s| s.name.clone()));
        table.head.push("Total".to_owned());
        for (i, category) in self.categories.iter().enumerate() {
            let mut cells = vec![Cell::text(category.clone())];
            for series in &self.series {
                cells.push(Cell::number(self.show(series.values.get(i).copied().unwrap_or(0))));
            }
            cells.push(Cell::number(self.show(self.total(i))));
            table.push(cells);
        }
        table
    }

    /// Each bar segment: x, top y, height, colour and tooltip.
    fn segments(&self, max: u128, slot: u128, bar: u128) -> Vec<(u128, u128, u128, &'static str, String)> {
        let plot_h = HEIGHT - TOP - BOTTOM;
        let mut out = Vec::new();
        for (i, category) in self.categories.iter().enumerate() {
            let x = LEFT + slot * as_u128(i) + slot.saturating_sub(bar) / 2;
            let mut below = 0u128;
            for (k, series) in self.series.iter().enumerate() {
                let value = series.values.get(i).copied().unwrap_or(0);
                if value == 0 {
                    continue;
                }
                let top = below.saturating_add(value);
                let y0 = TOP + plot_h - scale(below, max, plot_h);
                let y1 = TOP + plot_h - scale(top, max, plot_h);
                let tip = format!("{category} — {}: {} {}", series.name, self.show(value), self.unit);
                out.push((x, y1, (y0 - y1).max(1), PALETTE[k % PALETTE.len()], tip));
                below = top;
            }
        }
        out
    }

    pub fn render(&self, path_query: &str) -> Markup {
        let n = self.categories.len();
        let max = (0..n).map(|i| self.total(i)).max().unwrap_or(0).max(1);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let slot = if n == 0 { plot_w } else { (plot_w / as_u128(n)).max(1) };
        let bar = (slot * 7 / 10).max(1);
        let every = n.div_ceil(LABELS_MAX).max(1);
        let id = self.name.as_str();
        let description = format!(
            "Stacked bars per {}: {}. Highest total {} {}.",
            self.category_label.to_lowercase(),
            self.series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            self.show(max),
            self.unit
        );
        let table = self.table();
        html! {
            figure.chart id=(format!("{id}-chart")) {
                figcaption { h2 { (self.title) } }
                svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
                    aria-labelledby=(format!("{id}-title {id}-desc")) {
                    title id=(format!("{id}-title")) { (self.title) }
                    desc id=(format!("{id}-desc")) { (description) }
                    @for (step, value) in [0, max / 2, max].into_iter().enumerate() {
                        @let y = TOP + plot_h - plot_h * as_u128(step) / 2;
                        line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y) y2=(y) stroke="#d0d4da" stroke-width="1" {}
                        text x=(LEFT - 6) y=(y + 4) text-anchor="end" font-size="11" fill="#4a5260" { (self.show(value)) }
                    }
                    @for (x, y, h, fill, tip) in self.segments(max, slot, bar) {
                        rect x=(x) y=(y) width=(bar) height=(h) fill=(fill) { title { (tip) } }
                    }
                    @for (i, category) in self.categories.iter().enumerate().step_by(every) {
                        text x=(LEFT + slot * as_u128(i) + slot / 2) y=(HEIGHT - 10) text-anchor="middle" font-size="11" fill="#4a5260" { (short_label(category)) }
                    }
                }
                ul.legend {
                    @for (k, series) in self.series.iter().enumerate() {
                        li {
                            svg width="12" height="12" aria-hidden="true" { rect width="12" height="12" fill=(PALETTE[k % PALETTE.len()]) {} }
                            " " (series.name)
                        }
                    }
                }
                details {
                    summary { "Table of this chart" }
                    div.scroll {
                        table {
                            thead { tr { @for h in &table.head { th scope="col" { (h) } } } }
                            tbody { @for (cells, _) in &table.rows { tr { @for c in cells { td { (cell_text(c)) } } } } }
                        }
                    }
                    a.csv href=(crate::page::with_param(path_query, "csv", &self.name)) download { "Download CSV" }
                }
            }
        }
    }
}

fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Text(t) | Cell::Number(t) => t.clone(),
        _ => String::new(),
    }
}

/// `2026-12-06` → `12-06` under the bars (the table keeps the whole date).
fn short_label(category: &str) -> &str {
    if category.len() == 10 && category.as_bytes().get(4) == Some(&b'-') {
        category.get(5..).unwrap_or(category)
    } else {
        category
    }
}

/// `value` of `max` as a length of `length` (`value ≤ max`), rounded down; values too large to
/// multiply are divided first.
fn scale(value: u128, max: u128, length: u128) -> u128 {
    let max = max.max(1);
    match value.checked_mul(length) {
        Some(product) => product / max,
        None => value / (max / length).max(1),
    }
    .min(length)
}

fn as_u128(n: usize) -> u128 {
    u128::try_from(n).unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(values: [[u128; 3]; 2]) -> Chart {
        Chart {
            name: "t".to_owned(),
            title: "Volume".to_owned(),
            unit: "USD".to_owned(),
            decimals: 2,
            category_label: "Day",
            categories: vec!["2026-12-01".to_owned(), "2026-12-02".to_owned(), "2026-12-03".to_owned()],
            series: vec![
                Series { name: "Card".to_owned(), values: values[0].to_vec() },
                Series { name: "Polygon".to_owned(), values: values[1].to_vec() },
            ],
        }
    }

    #[test]
    fn bars_stack_to_their_totals_and_the_highest_fills_the_plot() {
        let c = chart([[100, 0, 50], [300, 200, 0]]);
        let max = 400;
        let slot = (WIDTH - LEFT - RIGHT) / 3;
        let bar = slot * 7 / 10;
        let segments = c.segments(max, slot, bar);
        assert_eq!(segments.len(), 4, "no segment for a zero");
        let plot_h = HEIGHT - TOP - BOTTOM;
        // The first day's two segments stack from the axis to the top of the plot.
        let day1: Vec<_> = segments.iter().filter(|s| s.0 == segments[0].0).collect();
        assert_eq!(day1.iter().map(|s| s.2).sum::<u128>(), plot_h);
        assert_eq!(day1.iter().map(|s| s.1).min(), Some(TOP));
        assert!(segments[0].4.contains("Card: 1.00 USD"), "{}", segments[0].4);
        assert_eq!(c.table().csv(), "Day,Card,Polygon,Total\r\n2026-12-01,1.00,3.00,4.00\r\n2026-12-02,0.00,2.00,2.00\r\n2026-12-03,0.50,0.00,0.50\r\n");
    }

    #[test]
    fn an_empty_or_huge_chart_draws_without_overflow() {
        let empty = chart([[0; 3]; 2]).render("/console");
        assert!(empty.into_string().contains("<svg"));
        let huge = chart([[u128::MAX, u128::MAX, 1], [u128::MAX, 0, 0]]);
        let html = huge.render("/console").into_string();
        assert!(html.contains("<rect"), "{html}");
    }
}
