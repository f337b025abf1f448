//! The HTML report: one self-contained file (inline CSS, one small inline script for the
//! filters, inline SVG plots; nothing loaded from anywhere) made from a JSON-lines stream
//! of iosvctl's `--format json` outputs — `lab`, `violations` (also `--follow`),
//! `mappings` and `status` lines, in any mix and order.
//!
//! It shows the run summary, the violations (filter by rule, driver and severity, also
//! preset by a link such as `report.html#severity=warning&driver=nic.sys`; each row
//! expands to both stacks), the live mappings, and per driver a plot of its live
//! mappings and mapped bytes over time with its violations marked
//! ([`plot`]). The time series comes from `sample` lines (the host records one after
//! every scenario step; `violations --follow` writes one per poll of the statistics) and
//! from `status` lines (each is one sample); a `mappings` listing adds the live counts at
//! its time.
//!
//! Every text from the input is HTML-escaped ([`escape`]); lines that are not JSON
//! objects are listed in the report (and said on stderr), nothing else is dropped.

pub mod plot;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Longest input line read (a longer one is reported as unreadable).
pub const MAX_LINE: usize = 1 << 20;

/// HTML-escapes `s` for text and for double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "&#x{:x};", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// One driver at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverPoint {
    /// The image name.
    pub name: String,
    /// Live mappings.
    pub live: u64,
    /// Bytes they span.
    pub live_bytes: u64,
}

/// Every driver at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Endpoint time (ns).
    pub t_ns: u64,
    /// The drivers.
    pub drivers: Vec<DriverPoint>,
}

/// What a JSON-lines stream holds, sorted by kind.
#[derive(Debug, Clone, Default)]
pub struct ReportData {
    /// The `lab` line, if any.
    pub lab: Option<Value>,
    /// The last `status` line.
    pub status: Option<Value>,
    /// `violation` lines, deduplicated by `seq` (a stream may repeat a read).
    pub violations: Vec<Value>,
    /// `mapping` lines of the last listing.
    pub mappings: Vec<Value>,
    /// The time series, oldest first.
    pub samples: Vec<Sample>,
    /// `end` lines.
    pub ends: Vec<Value>,
    /// `gap` lines (lost or discarded records).
    pub gaps: Vec<Value>,
    /// Lines that could not be read: (line number, why).
    pub unreadable: Vec<(usize, String)>,
    /// Objects of another kind (`config`, `rule`, …): counted, not shown.
    pub other: usize,
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_str()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    })
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        v => v.to_string(),
    }
}

fn sample_of_drivers(t_ns: u64, drivers: &Value) -> Option<Sample> {
    let drivers = drivers
        .as_array()?
        .iter()
        .filter_map(|d| {
            Some(DriverPoint {
                name: d.get("name").and_then(Value::as_str)?.to_string(),
                live: d.get("live").and_then(Value::as_u64).unwrap_or(0),
                live_bytes: d.get("live_bytes").and_then(Value::as_u64).unwrap_or(0),
            })
        })
        .collect();
    Some(Sample { t_ns, drivers })
}

impl ReportData {
    /// Reads a JSON-lines stream. Blank lines are skipped; a line that is not a JSON
    /// object is listed in [`unreadable`](Self::unreadable).
    pub fn from_json_lines(text: &str) -> ReportData {
        let mut d = ReportData::default();
        let mut seen = BTreeSet::new();
        let mut listing_now: Option<u64> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i.saturating_add(1);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line.len() > MAX_LINE {
                d.unreadable
                    .push((n, format!("longer than {MAX_LINE} bytes")));
                continue;
            }
            let v: Value = match serde_json::from_str(line) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    d.unreadable.push((n, "not a JSON object".to_string()));
                    continue;
                }
                Err(e) => {
                    d.unreadable.push((n, e.to_string()));
                    continue;
                }
            };
            match v.get("kind").and_then(Value::as_str).unwrap_or("") {
                "lab" => d.lab = Some(v),
                "status" => {
                    if let (Some(t), Some(s)) =
                        (v.get("now_ns").and_then(Value::as_u64), v.get("drivers"))
                    {
                        if let Some(s) = sample_of_drivers(t, s) {
                            d.samples.push(s);
                        }
                    }
                    d.status = Some(v);
                }
                "sample" => {
                    if let (Some(t), Some(s)) =
                        (v.get("t_ns").and_then(Value::as_u64), v.get("drivers"))
                    {
                        match sample_of_drivers(t, s) {
                            Some(s) => d.samples.push(s),
                            None => d.unreadable.push((n, "sample without drivers".into())),
                        }
                    } else {
                        d.unreadable
                            .push((n, "sample without t_ns or drivers".to_string()));
                    }
                }
                "violation" => {
                    let key = (
                        v.get("seq").and_then(Value::as_u64),
                        v.get("timestamp_ns").and_then(Value::as_u64),
                    );
                    if key.0.is_none() || seen.insert(key) {
                        d.violations.push(v);
                    }
                }
                "mapping" => {
                    // A new listing (another time) replaces the earlier one.
                    let now = v.get("map_time_ns").and_then(Value::as_u64).and_then(|m| {
                        v.get("age_ns")
                            .and_then(Value::as_u64)
                            .map(|a| m.saturating_add(a))
                    });
                    if now.is_some() && listing_now.is_some() && now != listing_now {
                        d.mappings.clear();
                    }
                    listing_now = now.or(listing_now);
                    d.mappings.push(v);
                }
                "end" => d.ends.push(v),
                "gap" => d.gaps.push(v),
                _ => d.other = d.other.saturating_add(1),
            }
        }
        if let Some(t) = listing_now {
            // The listing is one more sample: live counts per driver at its time.
            if !d.samples.iter().any(|s| s.t_ns == t) {
                let mut per: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                for m in &d.mappings {
                    let e = per.entry(str_of(&m["driver"])).or_default();
                    e.0 = e.0.saturating_add(1);
                    e.1 = e.1.saturating_add(m["size"].as_u64().unwrap_or(0));
                }
                d.samples.push(Sample {
                    t_ns: t,
                    drivers: per
                        .into_iter()
                        .map(|(name, (live, live_bytes))| DriverPoint {
                            name,
                            live,
                            live_bytes,
                        })
                        .collect(),
                });
            }
        }
        d.samples.sort_by_key(|s| s.t_ns);
        d.violations
            .sort_by_key(|v| v.get("seq").and_then(Value::as_u64).unwrap_or(u64::MAX));
        d
    }

    /// True when the stream held nothing the report can show.
    pub fn is_empty(&self) -> bool {
        self.lab.is_none()
            && self.status.is_none()
            && self.violations.is_empty()
            && self.mappings.is_empty()
            && self.samples.is_empty()
            && self.ends.is_empty()
    }

    /// Every driver named by a sample, a violation or a mapping, sorted.
    pub fn drivers(&self) -> Vec<String> {
        let mut set = BTreeSet::new();
        for s in &self.samples {
            for d in &s.drivers {
                set.insert(d.name.clone());
            }
        }
        for v in &self.violations {
            set.insert(str_of(&v["driver"]));
        }
        for m in &self.mappings {
            set.insert(str_of(&m["driver"]));
        }
        set.remove("-");
        set.into_iter().collect()
    }
}

const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5d6575; --line:#d9dde5; --bg:#ffffff; --head:#f3f5f9;
        --error:#c62828; --warning:#b26a00; --note:#2c6fbb; --live:#2c6fbb; --bytes:#d9822b; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 140px; }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 12px; }
.ok { color: #2e7d32; } .bad { color: var(--error); }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--head); position: sticky; top: 0; }
td.mono, .mono { font-family: ui-monospace, "Cascadia Mono", Consolas, monospace; font-size: 12px; }
.sev { font-weight: 600; } .sev-error { color: var(--error); } .sev-warning { color: var(--warning); }
.sev-note { color: var(--note); }
details summary { cursor: pointer; color: var(--note); }
.stacks { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-top: 6px; }
.stacks ol { margin: 4px 0; padding-left: 22px; }
.filters { display: flex; gap: 12px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
.filters label { color: var(--muted); }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.plot { border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; }
.plot h3 { font-size: 14px; margin: 0 0 4px; }
.legend { color: var(--muted); font-size: 12px; }
.legend i { display: inline-block; width: 18px; height: 3px; vertical-align: middle; margin: 0 4px 0 10px; }
.problems li { color: var(--error); }
footer { color: var(--muted); font-size: 12px; margin-top: 32px; }
"#;

const SCRIPT: &str = r#"
(function () {
  var selects = document.querySelectorAll('select[data-filter]');
  var rows = document.querySelectorAll('#violations tbody tr');
  var count = document.getElementById('shown');
  function apply() {
    var want = {};
    selects.forEach(function (s) { want[s.getAttribute('data-filter')] = s.value; });
    var shown = 0;
    rows.forEach(function (r) {
      var ok = Object.keys(want).every(function (k) {
        return want[k] === '' || r.getAttribute('data-' + k) === want[k];
      });
      r.hidden = !ok;
      if (ok) { shown++; }
    });
    if (count) { count.textContent = String(shown); }
  }
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  // A link may preselect filters: report.html#severity=warning&driver=nic.sys
  location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
    var i = kv.indexOf('=');
    if (i < 1) { return; }
    var key = decodeURIComponent(kv.slice(0, i));
    var value = decodeURIComponent(kv.slice(i + 1));
    selects.forEach(function (s) {
      if (s.getAttribute('data-filter') === key) {
        for (var j = 0; j < s.options.length; j++) {
          if (s.options[j].value === value) { s.value = value; }
        }
      }
    });
  });
  apply();
  document.body.setAttribute('data-ready', '1');
})();
"#;

fn card(out: &mut String, value: &str, label: &str, class: &str) {
    let _ = write!(
        out,
        r#"<div class="card"><b class="{}">{}</b><span>{}</span></div>"#,
        escape(class),
        escape(value),
        escape(label)
    );
}

fn stack_list(v: &Value) -> String {
    let mut s = String::from("<ol class=\"mono\">");
    match v.as_array() {
        Some(frames) if !frames.is_empty() => {
            for f in frames {
                let _ = write!(s, "<li>{}</li>", escape(&str_of(f)));
            }
        }
        _ => s.push_str("<li>(none captured)</li>"),
    }
    s.push_str("</ol>");
    s
}

fn options(out: &mut String, name: &str, label: &str, values: &BTreeSet<String>) {
    let _ = write!(
        out,
        r#"<label>{} <select data-filter="{}"><option value="">all</option>"#,
        escape(label),
        escape(name)
    );
    for v in values {
        let _ = write!(out, r#"<option value="{0}">{0}</option>"#, escape(v));
    }
    out.push_str("</select></label>");
}

/// The report as one self-contained HTML document. `title` names the run.
pub fn render(d: &ReportData, title: &str) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    // Nothing may be fetched: no network, no external scripts or styles.
    h.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">");
    let _ = write!(
        h,
        "<title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    );
    let _ = write!(
        h,
        "<h1>iosv report</h1><p class=\"sub\">{}</p>",
        escape(title)
    );
    summary(&mut h, d);
    plots(&mut h, d);
    violations(&mut h, d);
    mappings(&mut h, d);
    if !d.unreadable.is_empty() {
        let _ = write!(
            h,
            "<h2>Unreadable input</h2><p>{} line(s) of the input could not be read and are not shown:</p><ul class=\"problems mono\">",
            d.unreadable.len()
        );
        for (n, why) in d.unreadable.iter().take(100) {
            let _ = write!(h, "<li>line {n}: {}</li>", escape(why));
        }
        h.push_str("</ul>");
    }
    let _ = write!(
        h,
        "<footer>Generated by iosvctl {} from {} violation(s), {} live mapping(s), {} sample(s).</footer>",
        escape(env!("CARGO_PKG_VERSION")),
        d.violations.len(),
        d.mappings.len(),
        d.samples.len()
    );
    let _ = writeln!(h, "<script>{SCRIPT}</script></body></html>");
    h
}

fn summary(h: &mut String, d: &ReportData) {
    h.push_str("<h2>Run summary</h2><div class=\"cards\" id=\"summary\">");
    let mut by_sev: BTreeMap<String, u64> = BTreeMap::new();
    for v in &d.violations {
        *by_sev.entry(str_of(&v["severity"])).or_default() += 1;
    }
    card(
        h,
        &d.violations.len().to_string(),
        "violations",
        if d.violations.is_empty() { "ok" } else { "bad" },
    );
    for sev in ["error", "warning", "note"] {
        card(
            h,
            &by_sev.get(sev).copied().unwrap_or(0).to_string(),
            sev,
            "",
        );
    }
    card(
        h,
        &d.mappings.len().to_string(),
        "live mappings at the end",
        "",
    );
    let bytes: u64 = d.mappings.iter().filter_map(|m| m["size"].as_u64()).sum();
    card(h, &format!("0x{bytes:x}"), "bytes still mapped", "");
    card(h, &d.drivers().len().to_string(), "drivers", "");
    if let Some(lab) = &d.lab {
        card(h, &str_of(&lab["scenario"]), "scenario", "");
        card(h, &str_of(&lab["steps"]), "steps", "");
        card(h, &str_of(&lab["operations"]), "driver operations", "");
        card(
            h,
            &format!("{} ms", str_of(&lab["duration_ms"])),
            "run time",
            "",
        );
        card(h, &str_of(&lab["injected_total"]), "bugs injected", "");
        let clean = lab.pointer("/audit/clean").and_then(Value::as_bool);
        card(
            h,
            match clean {
                Some(true) => "clean",
                Some(false) => "UNCLEAN",
                None => "-",
            },
            "audit",
            if clean == Some(false) { "bad" } else { "ok" },
        );
    }
    let lost: u64 = d
        .ends
        .iter()
        .chain(d.gaps.iter())
        .filter_map(|e| e["lost"].as_u64())
        .sum();
    if lost > 0 {
        card(
            h,
            &lost.to_string(),
            "records lost: results incomplete",
            "bad",
        );
    }
    if let Some(s) = &d.status {
        card(h, &str_of(&s["endpoint"]), "endpoint", "");
        card(h, &str_of(&s["component_version"]), "iosv version", "");
    }
    h.push_str("</div>");
}

fn plots(h: &mut String, d: &ReportData) {
    h.push_str("<h2>Live mappings over time</h2>");
    let drivers = d.drivers();
    if d.samples.is_empty() {
        h.push_str("<p class=\"sub\">No time series in the input: a `lab` run records one; on a device, `violations --follow --format json` or repeated `status --format json` give one.</p>");
        return;
    }
    h.push_str("<p class=\"legend\">Per driver: <i style=\"background:var(--live)\"></i>live mappings (left axis) <i style=\"background:var(--bytes)\"></i>mapped bytes (right axis) <span style=\"color:var(--error)\">&#9650;</span> violations blamed on the driver. Time from the first sample.</p><div class=\"plots\" id=\"plots\">");
    let t0 = d.samples.first().map_or(0, |s| s.t_ns);
    for name in &drivers {
        let series: Vec<plot::Point> = d
            .samples
            .iter()
            .map(|s| {
                let p = s.drivers.iter().find(|p| &p.name == name);
                plot::Point {
                    t_ns: s.t_ns.saturating_sub(t0),
                    live: p.map_or(0, |p| p.live),
                    bytes: p.map_or(0, |p| p.live_bytes),
                }
            })
            .collect();
        let marks: Vec<plot::Mark> = d
            .violations
            .iter()
            .filter(|v| str_of(&v["driver"]) == *name)
            .filter_map(|v| {
                Some(plot::Mark {
                    t_ns: v["timestamp_ns"].as_u64()?.saturating_sub(t0),
                    label: format!(
                        "#{} {} {} ({})",
                        str_of(&v["seq"]),
                        str_of(&v["rule"]),
                        str_of(&v["name"]),
                        str_of(&v["severity"])
                    ),
                    severity: str_of(&v["severity"]),
                })
            })
            .collect();
        let _ = write!(
            h,
            "<div class=\"plot\"><h3>{}</h3>{}</div>",
            escape(name),
            plot::svg(name, &series, &marks)
        );
    }
    h.push_str("</div>");
}

fn violations(h: &mut String, d: &ReportData) {
    let _ = write!(
        h,
        "<h2>Violations (<span id=\"shown\">{}</span> of {})</h2>",
        d.violations.len(),
        d.violations.len()
    );
    if d.violations.is_empty() {
        h.push_str("<p class=\"sub\">None.</p>");
        return;
    }
    let mut rules = BTreeSet::new();
    let mut drivers = BTreeSet::new();
    let mut sevs = BTreeSet::new();
    for v in &d.violations {
        rules.insert(str_of(&v["rule"]));
        drivers.insert(str_of(&v["driver"]));
        sevs.insert(str_of(&v["severity"]));
    }
    h.push_str("<div class=\"filters\">");
    options(h, "rule", "Rule", &rules);
    options(h, "driver", "Driver", &drivers);
    options(h, "severity", "Severity", &sevs);
    h.push_str("</div><table id=\"violations\"><thead><tr><th>Seq</th><th>Rule</th><th>Name</th><th>Severity</th><th>Driver</th><th>Address</th><th>Passed</th><th>Mapped</th><th>IRQL</th><th>Message and stacks</th></tr></thead><tbody>");
    for v in &d.violations {
        let sev = str_of(&v["severity"]);
        let size = |k: &str| {
            v[k].as_u64()
                .map_or("-".to_string(), |n| format!("0x{n:x}"))
        };
        let _ = write!(
            h,
            "<tr data-rule=\"{rule}\" data-driver=\"{driver}\" data-severity=\"{sev}\"><td>{seq}</td><td class=\"mono\">{rule}</td><td>{name}</td><td class=\"sev sev-{sev}\">{sev}</td><td>{driver}</td><td class=\"mono\">{addr}</td><td class=\"mono\">{passed}</td><td class=\"mono\">{mapped}</td><td>{irql}</td><td><details><summary>{msg}</summary><div class=\"stacks\"><div><b>Stack of the call</b>{call}</div><div><b>Stack of the map</b>{map}</div></div></details></td></tr>",
            rule = escape(&str_of(&v["rule"])),
            driver = escape(&str_of(&v["driver"])),
            sev = escape(&sev),
            seq = escape(&str_of(&v["seq"])),
            name = escape(&str_of(&v["name"])),
            addr = escape(&str_of(&v["address"])),
            passed = escape(&size("passed_size")),
            mapped = escape(&size("mapped_size")),
            irql = escape(&str_of(&v["irql"])),
            msg = escape(&str_of(&v["message"])),
            call = stack_list(&v["call_stack"]),
            map = stack_list(&v["map_stack"]),
        );
    }
    h.push_str("</tbody></table>");
}

fn mappings(h: &mut String, d: &ReportData) {
    let _ = write!(h, "<h2>Live mappings ({})</h2>", d.mappings.len());
    if d.mappings.is_empty() {
        h.push_str("<p class=\"sub\">None in the input.</p>");
        return;
    }
    h.push_str("<table id=\"mappings\"><thead><tr><th>Base</th><th>Size</th><th>Physical</th><th>Cache</th><th>Driver</th><th>Device</th><th>Age</th><th>IRQL</th><th>Flags</th><th>Stack</th></tr></thead><tbody>");
    for m in &d.mappings {
        let mut flags = Vec::new();
        if m["leak_reported"].as_bool() == Some(true) {
            flags.push("leak-reported");
        }
        if m["detached"].as_bool() == Some(true) {
            flags.push("detached");
        }
        let age = m["age_ns"]
            .as_u64()
            .map_or("-".to_string(), crate::model::age);
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td><details><summary>stack</summary>{}</details></td></tr>",
            escape(&str_of(&m["base"])),
            escape(&m["size"].as_u64().map_or("-".to_string(), |n| format!("0x{n:x}"))),
            escape(&str_of(&m["physical"])),
            escape(&str_of(m.pointer("/cache/name").unwrap_or(&Value::Null))),
            escape(&str_of(&m["driver"])),
            escape(&str_of(&m["device"])),
            escape(&age),
            escape(&str_of(&m["irql"])),
            escape(&if flags.is_empty() { "-".to_string() } else { flags.join(", ") }),
            stack_list(&m["stack"]),
        );
    }
    h.push_str("</tbody></table>");
}

/// Hex strings (`"0x1f"`) and numbers as `u64`.
pub fn number(v: &Value) -> Option<u64> {
    u64_of(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_text_and_attributes() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("a\u{1}b"), "a&#x1;b");
    }

    #[test]
    fn unreadable_lines_are_listed_and_the_rest_kept() {
        let text = concat!(
            "{\"kind\":\"violation\",\"seq\":1,\"rule\":\"IOSV001\",\"driver\":\"<evil>.sys\",\"severity\":\"error\",\"timestamp_ns\":5,\"message\":\"m & <b>\",\"call_stack\":[\"a<b>\"],\"map_stack\":[]}\n",
            "not json\n",
            "[1,2]\n",
            "\n",
            "{\"kind\":\"sample\",\"t_ns\":1,\"drivers\":[{\"name\":\"<evil>.sys\",\"live\":2,\"live_bytes\":8192}]}\n",
            "{\"kind\":\"sample\",\"t_ns\":9}\n",
            "{\"kind\":\"config\"}\n",
            "{\"kind\":\"violation\",\"seq\":1,\"timestamp_ns\":5}\n",
        );
        let d = ReportData::from_json_lines(text);
        assert_eq!(d.violations.len(), 1);
        assert_eq!(d.samples.len(), 1);
        assert_eq!(d.other, 1);
        assert_eq!(
            d.unreadable.iter().map(|u| u.0).collect::<Vec<_>>(),
            vec![2, 3, 6]
        );
        let html = render(&d, "t <1>");
        assert!(!html.contains("<evil>"));
        assert!(html.contains("&lt;evil&gt;.sys"));
        assert!(html.contains("m &amp; &lt;b&gt;"));
        assert!(html.contains("a&lt;b&gt;"));
        assert!(html.contains("<title>t &lt;1&gt;</title>"));
        assert!(html.contains("line 2:"));
        assert!(html.contains("<svg"));
        assert!(!html.contains("src=\"http"));
    }

    #[test]
    fn a_mappings_listing_is_one_more_sample() {
        let text = concat!(
            "{\"kind\":\"mapping\",\"driver\":\"nic.sys\",\"size\":4096,\"map_time_ns\":10,\"age_ns\":90}\n",
            "{\"kind\":\"mapping\",\"driver\":\"nic.sys\",\"size\":8192,\"map_time_ns\":20,\"age_ns\":80}\n",
        );
        let d = ReportData::from_json_lines(text);
        assert_eq!(d.mappings.len(), 2);
        assert_eq!(d.samples.len(), 1);
        assert_eq!(d.samples[0].t_ns, 100);
        assert_eq!(d.samples[0].drivers[0].live_bytes, 12288);
    }
}
