//! End to end: the page in headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs) driven through WebDriver. A typed query shows the picture the library
//! ranks first, first; an uploaded picture finds itself first; a click opens the full picture,
//! and "more like this" puts it first.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Kills chromedriver and the browser it started (its process group) when the test ends, pass
/// or fail: a failed test never reaches the session's close.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn program(var: &str, default: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.into()));
    assert!(
        p.exists(),
        "{} is missing: install Debian's chromium and chromium-driver (`.ci/run` does), or set {var}",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` until it returns `Some`, for up to 60 s.
async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shown(c: &Client) -> Vec<String> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('#grid .hit')).map(e => e.dataset.path)",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn status(c: &Client) -> String {
    c.find(Locator::Id("status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits for the grid to show `n` pictures with `first` first, after a status with `what`.
async fn grid_shows(c: &Client, n: usize, first: &str, what: &str) -> Vec<String> {
    until(&format!("{first} first for {what}"), async || {
        let st = status(c).await;
        let paths = shown(c).await;
        (st.contains(what) && paths.len() == n && paths[0] == first).then_some(paths)
    })
    .await
}

async fn run(c: &Client, base: &str, f: &Fixture) {
    let n = f.files.len();
    // A query in the address, as a shared link: the library's ranking, best first.
    let want = expected_for_text(&f.db, "a red circle", n);
    c.goto(&format!("{base}/?q=a%20red%20circle"))
        .await
        .unwrap();
    let paths = grid_shows(c, n, &want[0].0, "a red circle").await;
    let want_paths: Vec<String> = want.iter().map(|w| w.0.clone()).collect();
    let mut a = paths.clone();
    let mut b = want_paths.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the grid shows the indexed pictures");
    // The first thumbnail really arrived.
    until("the first thumbnail", async || {
        let v = c
            .execute(
                "const i = document.querySelector('#grid .hit img'); return i.complete && i.naturalWidth > 0",
                vec![],
            )
            .await
            .unwrap();
        (v == Value::Bool(true)).then_some(())
    })
    .await;

    // Typed into the box and submitted.
    let q = c.find(Locator::Id("q")).await.unwrap();
    q.clear().await.unwrap();
    q.send_keys("a blue square").await.unwrap();
    c.find(Locator::Id("go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let want = expected_for_text(&f.db, "a blue square", 1);
    grid_shows(c, n, &want[0].0, "a blue square").await;

    // A picture chosen in the file input, without words: it finds itself.
    let target = &f.files[5];
    q.clear().await.unwrap();
    let file = c.find(Locator::Id("file")).await.unwrap();
    file.send_keys(target.to_str().unwrap()).await.unwrap();
    c.find(Locator::Id("go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let name = target.file_name().unwrap().to_str().unwrap();
    let paths = grid_shows(c, n, target.to_str().unwrap(), name).await;
    c.find(Locator::Id("clear"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Click another picture: the full picture opens; "more like this" puts it first.
    let other = paths[1].clone();
    c.find(Locator::Css(&format!("#grid .hit[data-path=\"{other}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the full picture", async || {
        let v = c
            .execute(
                "const i = document.getElementById('full'); \
                 return !document.getElementById('viewer').hidden && i.complete && i.naturalWidth",
                vec![],
            )
            .await
            .unwrap();
        (v == json!(32)).then_some(())
    })
    .await;
    c.find(Locator::Id("more"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let other_name = Path::new(&other).file_name().unwrap().to_str().unwrap();
    grid_shows(c, n, &other, other_name).await;
}

#[test]
fn the_page_finds_pictures_in_headless_chromium() {
    let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
    let chromium = program("CHROMIUM", "/usr/bin/chromium");
    let f = indexed("browser", 12);
    let base = start(&f.db, 1 << 20);
    let port = free_port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let profile = f.dir.join("chromium-profile");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            // Headless as root in a sandbox-less container with no network beyond loopback.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())],
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = until("chromedriver to start a session", async || {
            ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&url)
                .await
                .ok()
        })
        .await;
        run(&c, &base, &f).await;
        c.close().await.unwrap();
    });
    std::fs::remove_dir_all(&f.dir).unwrap();
}
