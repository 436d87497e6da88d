//! Runs `cuwire-bench --quick --ops 200` with the tiniest settings against a cuwired it starts
//! itself, and checks that the JSON has every section with positive numbers. No timing is
//! asserted. Needs `cuwired` and `libcuda.so` beside the cuwire-bench executable
//! (`cargo build --workspace`, same profile).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn positive(v: &Value, path: &str) {
    let x = v.pointer(path).and_then(Value::as_f64).unwrap_or_else(|| panic!("{path} is missing or not a number in {v:#}"));
    assert!(x > 0.0 && x.is_finite(), "{path} = {x}, expected a positive number");
}

#[test]
fn quick_run_writes_every_section() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cuwire-bench"));
    let dir = exe.parent().unwrap();
    for needed in ["cuwired", "libcuda.so"] {
        assert!(
            dir.join(needed).exists(),
            "{} is missing: run `cargo build --workspace` (same profile as the tests) first",
            dir.join(needed).display()
        );
    }
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("bench.json");
    let svg = out.path().join("bench.svg");
    let mut child = Command::new(exe)
        .args(["--quick", "--ops", "200", "--launches", "500", "--max-size", "64KiB", "--clients", "1,2", "--pace-seconds", "1"])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .spawn()
        .expect("starting cuwire-bench");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cuwire-bench did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "cuwire-bench failed: {status}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for p in [
        "/sync_latency/ctx_synchronize/p50_us",
        "/sync_latency/ctx_synchronize/p99_us",
        "/sync_latency/ctx_synchronize/p999_us",
        "/sync_latency/mem_get_info/p50_us",
        "/sync_latency/ratio_to_raw_quinn_p50",
        "/launch/fire_and_forget_per_s",
        "/launch/launch_synchronize/p50_us",
        "/launch/inproc_per_s",
        "/htod_async_pinned/total_ms",
        "/htod_async_pinned/Bps",
        "/baselines/quinn_pingpong/current-thread/p50_us",
        "/baselines/quinn_pingpong/multi-thread/p50_us",
        "/baselines/quinn_handoff_pingpong/p50_us",
        "/baselines/tcp_pingpong/p50_us",
        "/baselines/quinn_bulk_best/upload_Bps",
        "/baselines/quinn_bulk_best/download_Bps",
        "/baselines/tcp_bulk/upload_Bps",
        "/baselines/tcp_bulk/download_Bps",
        "/baselines/inproc/ctx_synchronize/p50_us",
        "/baselines/inproc/launches_per_s",
    ] {
        positive(&v, p);
    }
    let bw = v["bandwidth"].as_array().expect("bandwidth rows");
    assert!(!bw.is_empty());
    for row in bw {
        for k in ["htod_pageable_Bps", "htod_pinned_Bps", "dtoh_pageable_Bps", "dtoh_pinned_Bps", "inproc_htod_Bps"] {
            positive(row, &format!("/{k}"));
        }
    }
    let levels = v["concurrency"].as_array().expect("concurrency rows");
    assert_eq!(levels.len(), 2);
    for row in levels {
        positive(row, "/latency/p99_us");
        positive(row, "/calls_per_s");
    }
    // Paced (100 calls/s each by default): every level measured, and really paced. Back to
    // back, two clients make thousands of calls a second; paced, about 200.
    assert_eq!(v["concurrency_paced"]["calls_per_s_each"].as_f64(), Some(100.0));
    let paced = v["concurrency_paced"]["levels"].as_array().expect("paced concurrency rows");
    assert_eq!(paced.len(), 2);
    for row in paced {
        positive(row, "/latency/p99_us");
        positive(row, "/raw_quinn/latency/p99_us");
        let n = row["clients"].as_f64().unwrap();
        for rate in ["/calls_per_s", "/raw_quinn/calls_per_s"] {
            positive(row, rate);
            let r = row.pointer(rate).unwrap().as_f64().unwrap();
            assert!(r < 5.0 * 100.0 * n, "{n} paced clients made {r} calls/s ({rate}), far above 100/s each");
        }
    }
    assert!(!v["targets"].as_array().expect("targets").is_empty());
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("polyline"), "the SVG has no bandwidth lines");
}
