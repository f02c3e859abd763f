//! The Prometheus text exposition format, version 0.0.4: `# HELP` / `# TYPE` lines
//! and samples, with label values and help text escaped as the format requires.
//!
//! Pure: bytes appended to a `Vec<u8>`, no I/O. It must never write a line that a
//! Prometheus parser rejects, whatever a label value holds (room or reason strings
//! can come from clients): `\`, `"` and line feeds are escaped, nothing else needs to
//! be. The caller writes each family's samples together, right after its header.

use std::io::Write;

use crate::link::histogram::Snapshot;

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Appends exposition text to a buffer.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }

    /// The `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.extend_from_slice(b"# HELP ");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        escape(help, false, self.out);
        self.out.extend_from_slice(b"\n# TYPE ");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(kind.name().as_bytes());
        self.out.push(b'\n');
    }

    /// One sample line with an integer value.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_and_labels(name, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample line with a float value.
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.name_and_labels(name, labels, None);
        self.out.push(b' ');
        float(value, self.out);
        self.out.push(b'\n');
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram family from a snapshot (bounds in seconds): cumulative
    /// `_bucket{le=…}` lines ending with `+Inf`, then `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, s: &Snapshot) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut le = Vec::with_capacity(24);
        for (bound, n) in s.cumulative() {
            le.clear();
            match bound {
                Some(b) => float(b, &mut le),
                None => le.extend_from_slice(b"+Inf"),
            }
            self.name_and_labels(&bucket, &[], Some(&le));
            let _ = writeln!(self.out, " {n}");
        }
        self.sample_f64(&format!("{name}_sum"), &[], s.sum_seconds());
        self.sample(&format!("{name}_count"), &[], s.count());
    }

    fn name_and_labels(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&[u8]>) {
        self.out.extend_from_slice(name.as_bytes());
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push(b'{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"=\"");
            escape(v, true, self.out);
            self.out.push(b'"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"le=\"");
            self.out.extend_from_slice(le);
            self.out.push(b'"');
        }
        self.out.push(b'}');
    }
}

/// Escapes a label value (`quote`: also `"`) or help text: `\` → `\\`, line feed →
/// `\n`, and in label values `"` → `\"`.
pub fn escape(s: &str, quote: bool, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            _ => out.push(b),
        }
    }
}

/// A float as Prometheus reads it (`+Inf`, `-Inf`, `NaN` for the special values).
fn float(v: f64, out: &mut Vec<u8>) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::histogram::{Histogram, BOUNDS_NS};
    use proptest::prelude::*;
    use std::time::Duration;

    fn text(f: impl FnOnce(&mut Writer<'_>)) -> String {
        let mut out = Vec::new();
        f(&mut Writer::new(&mut out));
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_family_has_help_and_type_then_its_samples() {
        let t = text(|w| {
            w.family(
                "wspush_closes_total",
                Kind::Counter,
                "Closes.\nBy why \\ how.",
            );
            w.sample("wspush_closes_total", &[("reason", "kicked")], 3);
            w.sample("wspush_closes_total", &[("reason", "idle"), ("x", "y")], 0);
            w.single("wspush_rooms", Kind::Gauge, "Rooms.", 7);
        });
        assert_eq!(
            t,
            "# HELP wspush_closes_total Closes.\\nBy why \\\\ how.\n\
             # TYPE wspush_closes_total counter\n\
             wspush_closes_total{reason=\"kicked\"} 3\n\
             wspush_closes_total{reason=\"idle\",x=\"y\"} 0\n\
             # HELP wspush_rooms Rooms.\n\
             # TYPE wspush_rooms gauge\n\
             wspush_rooms 7\n"
        );
    }

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        let t = text(|w| w.sample("m", &[("room", "a\\b\"c\nd")], 1));
        assert_eq!(t, "m{room=\"a\\\\b\\\"c\\nd\"} 1\n");
    }

    #[test]
    fn a_histogram_is_cumulative_with_inf_equal_to_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut s = Snapshot::default();
        h.add_to(&mut s);
        let t = text(|w| w.histogram("lat_seconds", "Latency.", &s));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[2], "lat_seconds_bucket{le=\"0.00005\"} 1");
        assert!(lines.contains(&"lat_seconds_bucket{le=\"0.005\"} 2"), "{t}");
        assert!(lines.contains(&"lat_seconds_bucket{le=\"10\"} 2"), "{t}");
        assert!(lines.contains(&"lat_seconds_bucket{le=\"+Inf\"} 3"), "{t}");
        assert!(lines.contains(&"lat_seconds_count 3"), "{t}");
        assert!(lines.contains(&"lat_seconds_sum 60.00301"), "{t}");
        assert_eq!(lines.len(), 2 + BOUNDS_NS.len() + 1 + 2);
    }

    #[test]
    fn special_floats_are_spelled_the_prometheus_way() {
        let t = text(|w| {
            w.sample_f64("a", &[], f64::INFINITY);
            w.sample_f64("b", &[], f64::NEG_INFINITY);
            w.sample_f64("c", &[], f64::NAN);
            w.sample_f64("d", &[], 0.25);
        });
        assert_eq!(t, "a +Inf\nb -Inf\nc NaN\nd 0.25\n");
    }

    /// The reverse of `escape` for a label value, as a Prometheus parser reads it.
    fn unescape(s: &str) -> Option<String> {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            match c {
                '\\' => match it.next()? {
                    '\\' => out.push('\\'),
                    'n' => out.push('\n'),
                    '"' => out.push('"'),
                    _ => return None,
                },
                '"' | '\n' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    proptest! {
        /// Whatever a label value holds, the sample stays one line whose quoted value
        /// reads back as the original.
        #[test]
        fn any_label_value_stays_on_one_line_and_reads_back(v in any::<String>()) {
            const END: &str = "\"} 1\n";
            let t = text(|w| w.sample("m", &[("l", &v)], 1));
            prop_assert!(t.ends_with(END), "{}", t);
            prop_assert_eq!(t.matches('\n').count(), 1);
            let inner = &t["m{l=\"".len()..t.len() - END.len()];
            prop_assert_eq!(unescape(inner), Some(v));
        }

        #[test]
        fn any_help_text_stays_on_one_line(v in any::<String>()) {
            let t = text(|w| w.family("m", Kind::Gauge, &v));
            prop_assert_eq!(t.matches('\n').count(), 2);
        }
    }
}
