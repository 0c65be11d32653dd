//! Pieces of the Prometheus text format shared by the listeners' metrics.

use std::fmt::Write;

/// A latency histogram over fixed bucket bounds (seconds).
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Cumulative: `counts[i]` holds observations `<= bounds[i]`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds`, ascending.
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Adds one observation of `secs`.
    pub(crate) fn observe(&mut self, secs: f64) {
        for (c, b) in self.counts.iter_mut().zip(self.bounds) {
            if secs <= *b {
                *c += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    /// Appends the series of `name` (without HELP/TYPE), each with
    /// `labels` (`a="b",` form, possibly empty) before `le`.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {c}");
        }
        let bare = labels.trim_end_matches(',');
        let bare = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}le=\"+Inf\"}} {}\n{name}_sum{bare} {}\n{name}_count{bare} {}",
            self.count, self.sum, self.count
        );
    }
}

/// Appends one metric with a single unlabelled value.
pub(crate) fn single(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Appends the HELP and TYPE lines of a metric whose series follow.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped, as the text format
/// requires.
pub(crate) fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_are_kept() {
        let mut h = Histogram::new(&[0.25, 1.0]);
        h.observe(0.25);
        h.observe(0.5);
        h.observe(4.0);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "op=\"a\",");
        assert_eq!(
            out,
            "x_seconds_bucket{op=\"a\",le=\"0.25\"} 1\nx_seconds_bucket{op=\"a\",le=\"1\"} 2\n\
             x_seconds_bucket{op=\"a\",le=\"+Inf\"} 3\nx_seconds_sum{op=\"a\"} 4.75\nx_seconds_count{op=\"a\"} 3\n"
        );
        let mut out = String::new();
        Histogram::new(&[1.0]).render(&mut out, "y", "");
        assert!(out.contains("\ny_sum 0\ny_count 0\n"), "{out}");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
