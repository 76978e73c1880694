//! The `ble` sink against BlueZ simulated by python3-dbusmock (template `bluez5`, plus the
//! light's GATT service and characteristic added with `AddObject`) on a private dbus-daemon:
//! the bytes written are the mapped modes, a light that vanishes is found again, and a missing
//! adapter holds nothing up. Needs dbus-daemon and python3-dbusmock: skipped loudly when
//! missing, a failure under CI=true.

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use ocpipe::event::{Event, Payload, StatusInfo};
use ocpipe::sinks::push_targets::PushTargets;

fn status(code: &str, mode: &str) -> Event {
    let s = StatusInfo {
        port: 4096,
        instance: "http://127.0.0.1:4096".into(),
        session_id: Some("ses_1".into()),
        code: code.into(),
        mode: mode.into(),
        ..Default::default()
    };
    Event::new("test".into(), chrono::Utc::now(), Payload::Status(Box::new(s)))
}

/// One simulated light for this test binary, its bus made the system bus before anything here
/// talks D-Bus (libdbus reads DBUS_SYSTEM_BUS_ADDRESS once per process).
fn light() -> Option<std::sync::MutexGuard<'static, BleLight>> {
    static LIGHT: OnceLock<Option<Mutex<BleLight>>> = OnceLock::new();
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let light = LIGHT.get_or_init(|| {
        let light = BleLight::start(DIR.get_or_init(|| tempfile::tempdir().unwrap()).path())?;
        // SAFETY: set once, before any test of this binary starts a sink.
        unsafe { std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &light.bus) };
        Some(Mutex::new(light))
    });
    Some(light.as_ref()?.lock().unwrap_or_else(|e| e.into_inner()))
}

async fn until(limit: Duration, f: impl FnMut() -> Option<()>) {
    assert!(wait_for_async(limit, f).await.is_some(), "timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The light is shared by this binary's tests; holding it is what keeps them apart.
#[allow(clippy::await_holding_lock)]
async fn the_light_gets_the_mapped_modes_and_is_found_again_after_vanishing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("ocpipe=info").try_init();
    let dir = tempfile::tempdir().unwrap();
    let Some(mut light) = light() else { return };
    // The light is shared with this binary's other tests: count from here.
    let base = light.writes().len();
    let written = |light: &BleLight| light.writes()[base..].to_vec();
    let fed = start_sink(dir.path(), "ble", "device_name = \"AI-Light\"\nformat = \"byte\"\nretry_secs = 1\n");

    // Until the light is connected only the newest status counts; once it is, each is written.
    fed.tx.send(status("session_completed", "success")).await.unwrap();
    until(Duration::from_secs(20), || (written(&light).len() == 1).then_some(())).await;
    for (code, mode) in [("busy", "busy"), ("permission", "alarm"), ("idle", "idle")] {
        fed.tx.send(status(code, mode)).await.unwrap();
    }
    until(Duration::from_secs(10), || (written(&light).len() >= 4).then_some(())).await;
    // The seed's table, in the documented byte format: success 0x04, busy 0x01, alarm 0x05, idle 0x00.
    assert_eq!(written(&light), [vec![4], vec![1], vec![5], vec![0]]);

    // The light goes out of range; statuses go on; it comes back and shows the newest.
    light.vanish();
    fed.tx.send(status("running", "ai")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    fed.tx.send(status("reasoning", "thinking")).await.unwrap();
    let back = Instant::now();
    light.come_back();
    until(Duration::from_secs(20), || (written(&light).len() >= 5).then_some(())).await;
    assert_eq!(written(&light)[4], [2], "the newest mode (thinking) after the light came back");
    eprintln!("light found again and written {:.1} s after it came back", back.elapsed().as_secs_f64());
    fed.tx.send(status("completed", "success")).await.unwrap();
    until(Duration::from_secs(10), || (written(&light).len() >= 6).then_some(())).await;
    assert_eq!(written(&light)[5], [4]);
    assert_eq!(written(&light).len(), 6, "`ai` was superseded while the light was away");

    let m = fed.finish().await;
    assert_eq!((m.received, m.sent, m.errors), (7, 7, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_adapter_or_light_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    // BlueZ is there, but not this adapter (and not this light): nothing can be written.
    let Some(light) = light() else { return };
    drop(light);
    let fed = start_sink(dir.path(), "ble", "device_name = \"No-Such-Light\"\nadapter = \"hci9\"\nretry_secs = 1\n");
    let start = Instant::now();
    for _ in 0..1000 {
        fed.tx.send(status("busy", "busy")).await.unwrap();
        fed.tx.send(status("idle", "idle")).await.unwrap();
    }
    let m = fed.finish().await;
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!((m.received, m.errors), (2000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn lights_added_through_the_status_api_are_driven() {
    let dir = tempfile::tempdir().unwrap();
    let Some(light) = light() else { return };
    // No light in the config: only what the page's API wrote to its push-targets file.
    let fed = start_sink(dir.path(), "ble", "device_name = \"\"\ntargets_from = \"page\"\nretry_secs = 1\n");
    let overlay = dir.path().join("data/page");
    std::fs::create_dir_all(&overlay).unwrap();
    let before = light.writes().len();
    std::fs::write(
        overlay.join("push-targets.toml"),
        "[[ble]]\nid = 1\ndevice_name = \"AI-Light\"\nservice_uuid = \"b8b7e001-7a6b-4f4f-9a8b-11c0ffee0001\"\n\
         char_uuid = \"b8b7e002-7a6b-4f4f-9a8b-11c0ffee0001\"\nenabled = true\n",
    )
    .unwrap();
    // Ready once the sink drives the light the file lists (its link is reported to the page).
    let targets = fed.cx.shared::<PushTargets>("page");
    until(Duration::from_secs(10), || targets.link("ble", 1).map(|_| ())).await;
    fed.tx.send(status("error", "error")).await.unwrap();
    until(Duration::from_secs(20), || (light.writes().len() > before).then_some(())).await;
    assert_eq!(light.writes().last().map(Vec::as_slice), Some(&b"error"[..]));
    let m = fed.finish().await;
    assert_eq!((m.received, m.sent, m.errors), (1, 1, 0));
}
