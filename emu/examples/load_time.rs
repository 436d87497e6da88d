//! Module load (parse + pre-decode) time of every fixture.
//!
//!     cargo run --release -p cuwire-emu --example load_time
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let mem = Arc::new(cuwire_emu::DeviceMemory::new(0x7000_0000_0000, 1 << 30));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for p in files.iter().filter(|p| p.extension().is_some_and(|x| x == "ptx")) {
        let img = std::fs::read(p).unwrap();
        let t = Instant::now();
        let n = 20;
        for _ in 0..n {
            let m = cuwire_emu::Module::load(&img, &mem).unwrap();
            m.unload(&mem);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{:<28} {:>8} bytes {:>10.1} us", p.file_name().unwrap().to_string_lossy(), img.len(), us);
    }
}
