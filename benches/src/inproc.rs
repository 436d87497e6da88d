//! The backend called in-process: what the emulated GPU itself costs, with no shim, no
//! session and no network.

use std::time::Instant;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use cuwire_protocol::LaunchDims;
use cuwire_server::backend::emu::{EmuBackend, EmuConfig};
use cuwire_server::backend::{Backend, DEFAULT_STREAM};

use crate::shim::EMPTY_PTX;

pub struct InProc {
    pub ctx_synchronize: Vec<u64>,
    pub mem_info: Vec<u64>,
    pub launch: Vec<u64>,
    pub launches_per_s: f64,
    /// (size, htod bytes/s, dtoh bytes/s), best of a few copies.
    pub copies: Vec<(usize, f64, f64)>,
}

fn timed(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Ok(samples)
}

pub fn measure(ops: usize, launches: usize, sizes: &[usize]) -> Result<InProc> {
    let max = sizes.iter().copied().max().unwrap_or(0);
    // The default emulated device (4 GiB) holds the largest copy.
    let backend = EmuBackend::new(EmuConfig::default());
    let e = |e: cuwire_protocol::CuError| anyhow!("in-process backend: {e}");
    let ctx = backend.ctx_create(0, 0).map_err(e)?;
    let module = backend.module_load(ctx, EMPTY_PTX.as_bytes()).map_err(e)?;
    let func = backend.module_function(ctx, module.id, "empty").map_err(e)?;
    let dims = LaunchDims { grid: [1, 1, 1], block: [1, 1, 1], shared_mem_bytes: 0 };
    let warm = ops / 10;
    timed(warm, || backend.ctx_synchronize(ctx).map_err(e))?;
    let ctx_synchronize = timed(ops, || backend.ctx_synchronize(ctx).map_err(e))?;
    let mem_info = timed(ops, || backend.mem_info(0).map(|_| ()).map_err(e))?;
    timed(warm, || backend.launch(ctx, func, dims, DEFAULT_STREAM, &[]).map_err(e))?;
    let launch = timed(ops, || backend.launch(ctx, func, dims, DEFAULT_STREAM, &[]).map_err(e))?;
    let t = Instant::now();
    for _ in 0..launches {
        backend.launch(ctx, func, dims, DEFAULT_STREAM, &[]).map_err(e)?;
    }
    backend.ctx_synchronize(ctx).map_err(e)?;
    let launches_per_s = launches as f64 / t.elapsed().as_secs_f64();

    let mut copies = Vec::new();
    if max > 0 {
        let dev = backend.mem_alloc(ctx, max as u64).map_err(e)?;
        let data = Bytes::from(vec![0x3cu8; max]);
        // Backed once, as the client's buffer is (see client.rs `bandwidth`).
        backend.memcpy_htod(ctx, DEFAULT_STREAM, dev, data.clone()).map_err(e)?;
        for &size in sizes {
            let reps = ((256usize << 20) / size.max(1)).clamp(2, 20);
            let (mut up, mut down) = (f64::MAX, f64::MAX);
            for _ in 0..reps {
                let t = Instant::now();
                backend.memcpy_htod(ctx, DEFAULT_STREAM, dev, data.slice(..size)).map_err(e)?;
                up = up.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let got = backend.memcpy_dtoh(ctx, DEFAULT_STREAM, dev, size as u64).map_err(e)?;
                down = down.min(t.elapsed().as_secs_f64());
                drop(got);
            }
            copies.push((size, size as f64 / up, size as f64 / down));
        }
        backend.mem_free(ctx, dev).map_err(e)?;
    }
    backend.ctx_destroy(ctx).map_err(e)?;
    Ok(InProc { ctx_synchronize, mem_info, launch, launches_per_s, copies })
}
