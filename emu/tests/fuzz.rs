//! Mutated real PTX must never panic the loader or the interpreter: every outcome is a
//! value (a module, an error), and a launch of whatever loads ends in Ok or an error.

mod common;
use common::*;
use proptest::prelude::*;
use std::time::Duration;

const FIXTURES: &[&str] = &[
    "nvrtc_saxpy.ptx",
    "nvrtc_matmul.ptx",
    "nvrtc_reduce.ptx",
    "nvrtc_warp.ptx",
    "nvrtc_devfunc.ptx",
    "nvrtc_printf.ptx",
    "nvrtc_divergent.ptx",
    "numba_histogram.ptx",
];

fn mutate(src: &[u8], ops: &[(u8, usize, usize)]) -> Vec<u8> {
    let mut v = src.to_vec();
    for &(kind, a, b) in ops {
        if v.is_empty() {
            break;
        }
        let i = a % v.len();
        match kind % 8 {
            // change a digit: other registers, offsets, immediates, sizes, labels
            0..=3 => {
                if let Some(k) = (i..v.len()).find(|&k| v[k].is_ascii_digit()) {
                    v[k] = b'0' + (b % 10) as u8;
                }
            }
            // drop a line
            4 => {
                let s = v[..i].iter().rposition(|&c| c == b'\n').map(|x| x + 1).unwrap_or(0);
                let e = v[i..].iter().position(|&c| c == b'\n').map(|x| i + x + 1).unwrap_or(v.len());
                v.drain(s..e);
            }
            // duplicate a line elsewhere
            5 => {
                let s = v[..i].iter().rposition(|&c| c == b'\n').map(|x| x + 1).unwrap_or(0);
                let e = v[i..].iter().position(|&c| c == b'\n').map(|x| i + x + 1).unwrap_or(v.len());
                let line = v[s..e].to_vec();
                let k = b % v.len();
                let k = v[..k].iter().rposition(|&c| c == b'\n').map(|x| x + 1).unwrap_or(0);
                v.splice(k..k, line);
            }
            6 => {
                let j = (i + b % 8).min(v.len());
                v.drain(i..j);
            }
            _ => {
                let alphabet = b"0123456789abcxyz%.[]{};,-+@!|<>_ \n";
                v[i] = alphabet[b % alphabet.len()];
            }
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("EMU_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200),
        ..ProptestConfig::default()
    })]
    #[test]
    fn mutated_ptx_never_panics(f in 0usize..FIXTURES.len(), ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..4)) {
        let m = mem();
        let src = fixture(FIXTURES[f]);
        let img = mutate(&src, &ops);
        if let Ok(md) = Module::load(&img, &m) {

            let o = ExecOptions { worker_threads: 1, watchdog: Duration::from_millis(20) };
            for k in md.kernel_names() {
                let info = md.kernel(&k).unwrap();
                let params = vec![0u8; info.param_bytes() as usize];
                let _ = launch(&md, &k, &cfg([2, 1, 1], [64, 1, 1], 1024), &params, &m, &o);
            }
            md.unload(&m);
        }
        prop_assert_eq!(m.used(), 0);
    }
}
