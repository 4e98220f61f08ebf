//! A real browser for the incident page: Debian's Chromium, headless, driven over WebDriver by
//! `chromedriver`, one driver per test binary and one browser session per test. A driver or
//! browser that cannot start fails the test loudly.
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder, Locator};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where Debian installs them (`apt-get install chromium chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The driver's process group, for [`kill_group`].
static GROUP: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// At exit: the driver and every browser it started.
extern "C" fn kill_group() {
    let group = GROUP.load(std::sync::atomic::Ordering::SeqCst);
    if group > 0 {
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
}

/// The shared driver's URL, started on first use; it dies with the test binary.
pub fn driver() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            // Its own process group, with the browsers it starts: all of it is killed when
            // the test binary exits (a test that fails leaves no browser behind).
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The driver goes when the test binary goes: its parent-death signal follows the thread
        // that started it, so that thread lives as long as the binary.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (started, spawned) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = command.spawn();
            let ok = child.is_ok();
            if let Ok(child) = &child {
                GROUP.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
                unsafe {
                    libc::atexit(kill_group);
                }
            }
            let _ = started.send(child.map(|_| ()));
            if ok {
                loop {
                    std::thread::park();
                }
            }
        });
        spawned.recv().unwrap().expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        format!("http://127.0.0.1:{port}")
    })
}

/// A new headless Chromium session.
pub async fn browser() -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver())
        .await
        .expect("Chromium starts under chromedriver")
}

/// `[data-testid="ID"]`.
pub fn testid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

/// Waits (up to 10 s) until `check` gives `Some`, polling the page every 25 ms.
pub async fn until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    until_within(what, Duration::from_secs(10), check).await
}

/// Waits (up to `within`) until `check` gives `Some`, polling the page every 25 ms.
pub async fn until_within<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The trimmed text of the element with this test id, once it exists.
pub async fn text_of(client: &Client, id: &str) -> Option<String> {
    let element = client.find(Locator::Css(&testid(id))).await.ok()?;
    Some(element.text().await.ok()?.trim().to_owned())
}

/// An attribute of the element with this test id, once it exists.
pub async fn attribute_of(client: &Client, id: &str, name: &str) -> Option<String> {
    let element = client.find(Locator::Css(&testid(id))).await.ok()?;
    element.attr(name).await.ok()?
}

/// Waits until the element with this test id has exactly this trimmed text.
pub async fn wait_text(client: &Client, id: &str, expected: &str) {
    until(&format!("{id} to read {expected:?}"), || async {
        (text_of(client, id).await.as_deref() == Some(expected)).then_some(())
    })
    .await;
}

/// Clicks the element with this test id once it exists.
pub async fn click(client: &Client, id: &str) {
    let element = until(&format!("{id} to appear"), || async {
        client.find(Locator::Css(&testid(id))).await.ok()
    })
    .await;
    element
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {id}: {e}"));
}

/// Types into the element with this test id (cleared first).
pub async fn type_into(client: &Client, id: &str, text: &str) {
    let element = until(&format!("{id} to appear"), || async {
        client.find(Locator::Css(&testid(id))).await.ok()
    })
    .await;
    element.clear().await.unwrap();
    element.send_keys(text).await.unwrap();
}

/// Opens the page at `base` and logs in with `secret`; waits until the schema layer is shown.
pub async fn log_in(client: &Client, base: &str, secret: &str) {
    client.goto(base).await.expect("the page loads");
    type_into(client, "token-input", secret).await;
    click(client, "login").await;
    until("the page to show the schema version", || async {
        text_of(client, "schema-version")
            .await
            .filter(|t| !t.is_empty())
    })
    .await;
}
