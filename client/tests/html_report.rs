//! The HTML report in a real browser: `iosvctl lab --format html` and `iosvctl report
//! --html` rendered by headless Chromium (Debian package `chromium`, installed by
//! `scripts/test`). Asserts the page ran its script without a console message, that the
//! per-driver SVG plots are in the rendered DOM, that hostile names stay text, and takes a
//! screenshot. With `IOSV_UPDATE_DOCS=1` the default lab's screenshot is written to
//! `docs/lab-report.png` (the README shows it).
//!
//! Without Chromium the test says so and passes, except under CI (`CI=true`), where a
//! missing browser fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IOSVCTL: &str = env!("CARGO_BIN_EXE_iosvctl");

/// The Chromium binary: `$IOSV_CHROMIUM`, else the first of chromium, chromium-browser,
/// google-chrome on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IOSV_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn browser_or_skip() -> Option<PathBuf> {
    match chromium() {
        Some(b) => Some(b),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("headless Chromium is required under CI (Debian package `chromium`; scripts/test installs it)")
        }
        None => {
            eprintln!(
                "SKIPPED: the HTML report's browser test needs Chromium (Debian package `chromium`, installed by scripts/test, or IOSV_CHROMIUM=PATH); not found on PATH"
            );
            None
        }
    }
}

/// Runs `cmd` to its end or `limit`, whichever is first (then it is killed). Both pipes
/// are drained while it runs (a DOM larger than a pipe buffer would block it otherwise).
fn run_with_limit(mut cmd: Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the browser");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "the browser did not finish in {limit:?}\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Headless Chromium on `page` with `args`; its own profile directory under `work`.
fn browse(browser: &Path, work: &Path, page: &Path, args: &[&str]) -> Output {
    browse_url(browser, work, &format!("file://{}", page.display()), args)
}

/// Headless Chromium on `url` with `args`.
fn browse_url(browser: &Path, work: &Path, url: &str, args: &[&str]) -> Output {
    let profile = tempfile::tempdir_in(work).unwrap();
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url);
    let out = run_with_limit(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The console messages (and uncaught errors) Chromium logged for the page.
fn console_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect()
}

/// Loads `page`, asserts no console message and a finished script, returns the DOM.
fn rendered_dom(browser: &Path, work: &Path, page: &Path) -> String {
    let out = browse(browser, work, page, &["--dump-dom"]);
    let console = console_lines(&out.stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(
        dom.contains("data-ready=\"1\""),
        "the report's script did not run to its end"
    );
    dom
}

fn screenshot(browser: &Path, work: &Path, page: &Path, png: &Path) {
    let arg = format!("--screenshot={}", png.display());
    browse(browser, work, page, &[&arg, "--window-size=1280,1800"]);
    let bytes = std::fs::read(png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 20_000, "screenshot of {} bytes", bytes.len());
}

#[test]
fn console_detection_works() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let page = work.path().join("canary.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><script>console.error('iosv-canary');</script></body></html>",
    )
    .unwrap();
    let out = browse(&browser, work.path(), &page, &["--dump-dom"]);
    let console = console_lines(&out.stderr);
    assert!(
        console.iter().any(|l| l.contains("iosv-canary")),
        "a console.error was not seen in Chromium's log: the absence check would prove nothing\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn default_lab_report_renders_with_its_plots() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let page = work.path().join("report.html");
    let out = Command::new(IOSVCTL)
        .args(["lab", "--format", "html", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = String::from_utf8(out.stdout).unwrap();
    // Self-contained: nothing is loaded from anywhere.
    for external in ["src=\"http", "href=\"http", "<link", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the report");
    }
    std::fs::write(&page, &html).unwrap();

    let dom = rendered_dom(&browser, work.path(), &page);
    let plots = dom.matches("<svg class=\"series\"").count();
    assert_eq!(plots, 5, "one plot per driver of the default lab");
    for driver in [
        "nic.sys",
        "gpu.sys",
        "stor.sys",
        "sensorhub.sys",
        "legacyfpga.sys",
    ] {
        assert!(dom.contains(&format!("<h3>{driver}</h3>")), "{driver}");
    }
    assert!(dom.contains("<path class=\"live\" d=\"M"));
    assert!(dom.contains("<g class=\"violation\"><title>#0 IOSV001"));
    assert_eq!(dom.matches("<tr data-rule=").count(), 38);
    assert!(dom.contains("id=\"mappings\""));

    // The filters, preset by the link: only the 4 warnings stay shown.
    let url = format!("file://{}#severity=warning", page.display());
    let out = browse_url(&browser, work.path(), &url, &["--dump-dom"]);
    assert!(console_lines(&out.stderr).is_empty());
    let filtered = String::from_utf8(out.stdout).unwrap();
    assert!(
        filtered.contains("<span id=\"shown\">4</span>"),
        "filter not applied"
    );
    let shown: Vec<&str> = filtered
        .split("<tr data-rule=")
        .skip(1)
        .filter(|row| !row.split('>').next().unwrap_or("").contains("hidden"))
        .collect();
    assert_eq!(shown.len(), 4);
    assert!(shown
        .iter()
        .all(|r| r.contains("data-severity=\"warning\"")));

    let png = work.path().join("lab-report.png");
    screenshot(&browser, work.path(), &page, &png);
    if std::env::var_os("IOSV_UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/lab-report.png");
        std::fs::copy(&png, &docs).unwrap();
        eprintln!("wrote {}", docs.display());
    }
}

#[test]
fn saved_json_lines_with_hostile_names_render_as_text() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("device.jsonl");
    let evil = "<img src=x onerror=alert(1)>\\\"'&.sys";
    let lines = [
        format!(
            r#"{{"kind":"sample","t_ns":1000,"drivers":[{{"name":"{evil}","live":1,"live_bytes":4096}}]}}"#
        ),
        format!(
            r#"{{"kind":"violation","seq":3,"rule":"IOSV004","name":"unmap-unknown","severity":"error","driver":"{evil}","timestamp_ns":2000,"address":"0x1","message":"<script>alert(2)</script>","call_stack":["{evil}+0x10"],"map_stack":[]}}"#
        ),
        "this line is not JSON".to_string(),
        format!(
            r#"{{"kind":"sample","t_ns":3000,"drivers":[{{"name":"{evil}","live":0,"live_bytes":0}}]}}"#
        ),
        format!(
            r#"{{"kind":"mapping","driver":"{evil}","base":"0x2","size":4096,"physical":"0x3","cache":{{"name":"MmNonCached"}},"map_time_ns":2500,"age_ns":500,"stack":["C:\\src\\<x>.c"]}}"#
        ),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let page = work.path().join("device.html");
    let out = Command::new(IOSVCTL)
        .arg("report")
        .arg("--html")
        .arg(&page)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3 skipped"));

    let dom = rendered_dom(&browser, work.path(), &page);
    assert!(!dom.contains("<img"), "markup from the input was rendered");
    assert!(
        !dom.contains("<script>alert"),
        "a script from the input was rendered"
    );
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert_eq!(dom.matches("<svg class=\"series\"").count(), 1);
    assert!(dom.contains("line 3:"));
    screenshot(
        &browser,
        work.path(),
        &page,
        &work.path().join("device.png"),
    );
}
