//! How long one empty-kernel launch takes on the emulated backend, in process (no network).
use cuwire_server::backend::emu::{EmuBackend, EmuConfig};
use cuwire_server::backend::Backend;
use std::time::Instant;

fn main() {
    let b = EmuBackend::new(EmuConfig { memories: vec![1 << 30], ..EmuConfig::default() });
    let ctx = b.ctx_create(0, 0).unwrap();
    let m = b.module_load(ctx, b".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry empty()\n{\n ret;\n}\n").unwrap();
    let f = b.module_function(ctx, m.id, "empty").unwrap();
    let dims = cuwire_protocol::LaunchDims { grid: [1, 1, 1], block: [1, 1, 1], shared_mem_bytes: 0 };
    let n = 20000;
    let t = Instant::now();
    for _ in 0..n {
        b.launch(ctx, f, dims, 0, &[]).unwrap();
    }
    let dt = t.elapsed();
    println!("{n} empty launches in {:?}: {:.2} us each", dt, dt.as_secs_f64() * 1e6 / n as f64);
}
