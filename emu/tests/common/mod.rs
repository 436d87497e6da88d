#![allow(dead_code)]
//! Helpers shared by the integration tests.

use std::sync::Arc;

pub use cuwire_emu::*;

pub const BASE: u64 = 0x7000_0000_0000;

pub fn mem() -> Arc<DeviceMemory> {
    Arc::new(DeviceMemory::new(BASE, 4 << 30))
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

pub fn load(m: &Arc<DeviceMemory>, name: &str) -> Module {
    Module::load(&fixture(name), m).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Packs kernel arguments with natural alignment, as cuLaunchKernel's layout does.
#[derive(Default)]
pub struct Args(pub Vec<u8>);

impl Args {
    pub fn new() -> Self {
        Args(Vec::new())
    }
    fn put(mut self, b: &[u8], align: usize) -> Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self.0.extend_from_slice(b);
        self
    }
    pub fn i32(self, v: i32) -> Self {
        self.put(&v.to_le_bytes(), 4)
    }
    pub fn u32(self, v: u32) -> Self {
        self.put(&v.to_le_bytes(), 4)
    }
    pub fn f32(self, v: f32) -> Self {
        self.put(&v.to_le_bytes(), 4)
    }
    pub fn u64(self, v: u64) -> Self {
        self.put(&v.to_le_bytes(), 8)
    }
    pub fn i64(self, v: i64) -> Self {
        self.put(&v.to_le_bytes(), 8)
    }
    pub fn f64(self, v: f64) -> Self {
        self.put(&v.to_le_bytes(), 8)
    }
    pub fn bytes(self, b: &[u8], align: usize) -> Self {
        self.put(b, align)
    }
}

pub fn upload<T: Copy>(m: &DeviceMemory, v: &[T], to_bytes: impl Fn(T) -> Vec<u8>) -> u64 {
    let bytes: Vec<u8> = v.iter().flat_map(|x| to_bytes(*x)).collect();
    let p = m.alloc(bytes.len().max(1) as u64).unwrap();
    m.write(p, &bytes).unwrap();
    p
}

pub fn up_f32(m: &DeviceMemory, v: &[f32]) -> u64 {
    upload(m, v, |x| x.to_le_bytes().to_vec())
}
pub fn up_i32(m: &DeviceMemory, v: &[i32]) -> u64 {
    upload(m, v, |x| x.to_le_bytes().to_vec())
}
pub fn up_u32(m: &DeviceMemory, v: &[u32]) -> u64 {
    upload(m, v, |x| x.to_le_bytes().to_vec())
}
pub fn zeros(m: &DeviceMemory, bytes: u64) -> u64 {
    m.alloc(bytes).unwrap()
}

pub fn down<T>(m: &DeviceMemory, p: u64, n: usize, size: usize, f: impl Fn(&[u8]) -> T) -> Vec<T> {
    let mut b = vec![0u8; n * size];
    m.read(p, &mut b).unwrap();
    b.chunks(size).map(f).collect()
}
pub fn down_f32(m: &DeviceMemory, p: u64, n: usize) -> Vec<f32> {
    down(m, p, n, 4, |c| f32::from_le_bytes(c.try_into().unwrap()))
}
pub fn down_f64(m: &DeviceMemory, p: u64, n: usize) -> Vec<f64> {
    down(m, p, n, 8, |c| f64::from_le_bytes(c.try_into().unwrap()))
}
pub fn down_i32(m: &DeviceMemory, p: u64, n: usize) -> Vec<i32> {
    down(m, p, n, 4, |c| i32::from_le_bytes(c.try_into().unwrap()))
}
pub fn down_u32(m: &DeviceMemory, p: u64, n: usize) -> Vec<u32> {
    down(m, p, n, 4, |c| u32::from_le_bytes(c.try_into().unwrap()))
}
pub fn down_u64(m: &DeviceMemory, p: u64, n: usize) -> Vec<u64> {
    down(m, p, n, 8, |c| u64::from_le_bytes(c.try_into().unwrap()))
}

pub fn cfg(grid: [u32; 3], block: [u32; 3], shared: u32) -> LaunchConfig {
    LaunchConfig { grid, block, shared_mem_bytes: shared }
}
pub fn cfg1(grid: u32, block: u32) -> LaunchConfig {
    cfg([grid, 1, 1], [block, 1, 1], 0)
}

pub fn opts(workers: usize) -> ExecOptions {
    ExecOptions { worker_threads: workers, ..Default::default() }
}

pub fn run(module: &Module, k: &str, c: LaunchConfig, a: &Args, m: &Arc<DeviceMemory>) -> LaunchOutput {
    launch(module, k, &c, &a.0, m, &opts(2)).unwrap_or_else(|e| panic!("{k}: {e}"))
}

/// Distance in units in the last place between two f32 values.
pub fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u32::MAX;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i32::MIN.wrapping_sub(i) as i64
        } else {
            i as i64
        }
    };
    (key(a) - key(b)).unsigned_abs().min(u32::MAX as u64) as u32
}

/// A small deterministic pseudo-random generator for test data.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    pub fn f32(&mut self) -> f32 {
        (self.next() % 20000) as f32 / 1000.0 - 10.0
    }
}
