//! Round trips, fire-and-forget calls and bytes by function, printed at exit with
//! `CUWIRE_STATS=1`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cuwire_protocol::CallKind;

static ENABLED: AtomicBool = AtomicBool::new(false);

#[derive(Default, Clone, Copy)]
struct Counts {
    round_trips: u64,
    fire_and_forget: u64,
    bytes_out: u64,
    bytes_in: u64,
}

static COUNTS: Mutex<BTreeMap<&'static str, Counts>> = Mutex::new(BTreeMap::new());
/// What QUIC said about the connection when its lane ended.
static PATH: Mutex<Option<String>> = Mutex::new(None);

pub fn enable_from_env() {
    if std::env::var("CUWIRE_STATS").map(|v| v == "1").unwrap_or(false) {
        ENABLED.store(true, Ordering::Relaxed);
    }
}

pub fn record(function: &'static str, kind: CallKind, bytes_out: usize) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut map = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let c = map.entry(function).or_default();
    match kind {
        CallKind::Async => c.fire_and_forget += 1,
        _ => c.round_trips += 1,
    }
    c.bytes_out += bytes_out as u64;
}

pub fn record_reply(function: &'static str, bytes_in: usize) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut map = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(function).or_default().bytes_in += bytes_in as u64;
}

/// Keeps the connection's path figures for the summary: the MTU reached shows whether large
/// datagrams are in use (see `limits::MAX_UDP_PAYLOAD`), lost packets whether the path drops.
pub fn record_path(st: &quinn::ConnectionStats) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let line = format!(
        "path MTU {} bytes, RTT {:?}, {} datagrams sent ({} bytes), {} received ({} bytes), {} packets lost",
        st.path.current_mtu, st.path.rtt, st.udp_tx.datagrams, st.udp_tx.bytes, st.udp_rx.datagrams, st.udp_rx.bytes, st.path.lost_packets
    );
    *PATH.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
}

/// Prints the summary on stderr (at exit, after the connection has ended).
pub fn print() {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let map = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let total = map.values().fold(Counts::default(), |a, c| Counts {
        round_trips: a.round_trips + c.round_trips,
        fire_and_forget: a.fire_and_forget + c.fire_and_forget,
        bytes_out: a.bytes_out + c.bytes_out,
        bytes_in: a.bytes_in + c.bytes_in,
    });
    eprintln!("cuwire stats: {:<28} {:>10} {:>12} {:>14} {:>14}", "function", "round trips", "fire&forget", "bytes out", "bytes in");
    for (name, c) in map.iter() {
        eprintln!("cuwire stats: {:<28} {:>10} {:>12} {:>14} {:>14}", name, c.round_trips, c.fire_and_forget, c.bytes_out, c.bytes_in);
    }
    eprintln!(
        "cuwire stats: {:<28} {:>10} {:>12} {:>14} {:>14}",
        "total", total.round_trips, total.fire_and_forget, total.bytes_out, total.bytes_in
    );
    if let Some(path) = PATH.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        eprintln!("cuwire stats: connection: {path}");
    }
}
