//! The hidden `client` subcommand: a child process of cuwire-bench that drives the real shim
//! with its own connection and prints one JSON object on stdout (raw samples in nanoseconds,
//! so the parent can merge several clients into one histogram).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::pace::{self, Pacer};
use crate::shim::{Driver, EMPTY_PTX};

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The shim to load.
    #[arg(long)]
    pub shim: PathBuf,
    /// `single` (every single-client measurement) or `latency` (synchronous calls only).
    #[arg(long, default_value = "single")]
    pub suite: String,
    /// Timed iterations of each latency measurement.
    #[arg(long, default_value_t = 2000)]
    pub ops: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Fire-and-forget launches timed (followed by one synchronize).
    #[arg(long, default_value_t = 20000)]
    pub launches: usize,
    /// Copy sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Bytes to move per size and direction (at least one copy, at most 100).
    #[arg(long, default_value_t = 256 << 20)]
    pub budget: usize,
    /// Print READY once connected and wait for a line on stdin before measuring.
    #[arg(long)]
    pub wait_go: bool,
    /// `latency` suite: calls per second on average, Poisson arrivals (0: back to back).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

fn timed(n: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<u64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Ok(samples)
}

/// `n` calls of `f` at `rate` per second on average (see [`crate::pace`]), each timed.
fn paced(n: usize, rate: f64, mut f: impl FnMut() -> Result<()>) -> Result<Vec<u64>> {
    let mut pacer = Pacer::new(rate, pace::seed());
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let due = pacer.due();
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let origin = pacer.origin(due);
        f()?;
        let end = Instant::now();
        pacer.done(end);
        samples.push(end.duration_since(origin).as_nanos() as u64);
    }
    Ok(samples)
}

pub fn run(args: ClientArgs) -> Result<()> {
    let drv = Driver::load(&args.shim)?;
    drv.init_context()?;
    let out = match args.suite.as_str() {
        "latency" => latency(&drv, &args)?,
        "single" => single(&drv, &args)?,
        other => bail!("unknown suite {other}"),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")?;
    stdout.flush()?;
    Ok(())
}

fn latency(drv: &Driver, args: &ClientArgs) -> Result<Value> {
    for _ in 0..args.warmup {
        drv.ctx_synchronize()?;
    }
    if args.wait_go {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY")?;
        out.flush()?;
        drop(out);
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("waiting for GO")?;
    }
    let t = Instant::now();
    let samples =
        if args.rate > 0.0 { paced(args.ops, args.rate, || drv.ctx_synchronize())? } else { timed(args.ops, 0, || drv.ctx_synchronize())? };
    Ok(json!({ "ctx_synchronize": samples, "wall_s": t.elapsed().as_secs_f64() }))
}

fn single(drv: &Driver, args: &ClientArgs) -> Result<Value> {
    let sync = timed(args.ops, args.warmup, || drv.ctx_synchronize())?;
    let mem_info = timed(args.ops, args.warmup, || drv.mem_get_info().map(|_| ()))?;

    let f = drv.load_function(EMPTY_PTX, "empty")?;
    let launch_sync = timed(args.ops, args.warmup, || {
        drv.launch_empty(f)?;
        drv.ctx_synchronize()
    })?;
    // Fire-and-forget: the rate counts the final synchronize, which proves they all ran.
    for _ in 0..args.launches.min(1000) {
        drv.launch_empty(f)?;
    }
    drv.ctx_synchronize()?;
    let t = Instant::now();
    for _ in 0..args.launches {
        drv.launch_empty(f)?;
    }
    let issued = t.elapsed().as_secs_f64();
    drv.ctx_synchronize()?;
    let total = t.elapsed().as_secs_f64();

    let bandwidth = bandwidth(drv, args)?;
    let async_pinned = htod_async_pinned(drv, args)?;
    Ok(json!({
        "htod_async_pinned": async_pinned,
        "ctx_synchronize": sync,
        "mem_get_info": mem_info,
        "launch_synchronize": launch_sync,
        "launches": args.launches,
        "launch_issue_s": issued,
        "launch_total_s": total,
        "bandwidth": bandwidth,
    }))
}

/// An asynchronous copy of the largest size from page-locked memory: how long the call takes
/// (it returns before the bytes are sent, as a DMA copy would) and how long until synchronised.
fn htod_async_pinned(drv: &Driver, args: &ClientArgs) -> Result<Value> {
    let Some(&max) = args.sizes.iter().max() else { return Ok(Value::Null) };
    let dev = drv.mem_alloc(max)?;
    let mut pinned = drv.alloc_host(max)?;
    for (i, b) in pinned.as_mut_slice().iter_mut().enumerate() {
        *b = (i / 4096) as u8;
    }
    // Once untimed: the emulated GPU backs its memory on first write.
    drv.htod_async_then_sync(dev, &pinned, max)?;
    let reps = (args.budget / max.max(1)).clamp(2, 100);
    let (mut issue, mut total) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (i, t) = drv.htod_async_then_sync(dev, &pinned, max)?;
        issue.push(i.as_nanos() as u64);
        total.push(t.as_nanos() as u64);
    }
    drv.free_host(pinned)?;
    drv.mem_free(dev)?;
    Ok(json!({ "size": max, "issue_ns": issue, "total_ns": total }))
}

fn bandwidth(drv: &Driver, args: &ClientArgs) -> Result<Value> {
    let Some(&max) = args.sizes.iter().max() else { return Ok(json!([])) };
    let dev = drv.mem_alloc(max)?;
    let mut pageable = vec![0u8; max];
    for (i, b) in pageable.iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut pinned = drv.alloc_host(max)?;
    pinned.as_mut_slice().copy_from_slice(&pageable);
    // Warm up the path once (connection windows, allocators) at up to 16 MiB, and write the
    // whole device buffer once: the emulated GPU backs its memory lazily, on first write, and a
    // fresh page costs a fault in the server (slow in a VM), which a GPU's cuMemAlloc'd memory
    // does not. Copies are then timed into memory that exists, as an application's reused
    // buffers are.
    let warm = max.min(16 << 20);
    drv.htod(dev, &pageable)?;
    drv.dtoh(&mut pageable[..warm], dev)?;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        // At least two, so the best of them is not a first touch.
        let reps = (args.budget / size.max(1)).clamp(2, 100);
        let mut row = serde_json::Map::new();
        row.insert("size".into(), json!(size));
        row.insert("reps".into(), json!(reps));
        for (name, buf) in [("pageable", &mut pageable[..size]), ("pinned", &mut pinned.as_mut_slice()[..size])] {
            let htod = timed(reps, 0, || drv.htod(dev, buf))?;
            let dtoh = timed(reps, 0, || drv.dtoh(buf, dev))?;
            row.insert(format!("htod_{name}"), json!(htod));
            row.insert(format!("dtoh_{name}"), json!(dtoh));
        }
        rows.push(Value::Object(row));
    }
    drv.free_host(pinned)?;
    drv.mem_free(dev)?;
    Ok(Value::Array(rows))
}
