//! Replays the committed fuzz seed corpus (fuzz/corpus/<target>/) through the fuzz targets'
//! own functions (fuzz/src/lib.rs, included here as a module), so every `cargo test` runs the
//! targets without a fuzzer: frame decoding, the handshake, and request dispatch on the
//! emulated GPU.
//!
//! The corpus must be what `seeds()` makes: when the wire format changes, rewrite it with
//! `CUWIRE_FUZZ_BLESS=1 cargo test -p cuwire-server --test fuzz_corpus`.
#![forbid(unsafe_code)]

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn committed(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = corpus_dir(target);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn committed_seeds_are_the_generated_ones() {
    let bless = std::env::var("CUWIRE_FUZZ_BLESS").is_ok_and(|v| v == "1");
    for target in targets::TARGETS {
        let made: BTreeMap<String, Vec<u8>> =
            targets::seeds().into_iter().filter(|(t, _, _)| *t == target).map(|(_, n, b)| (n.to_owned(), b)).collect();
        assert!(!made.is_empty(), "no seeds for {target}");
        if bless {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &made {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
        let have = committed(target);
        for (name, bytes) in &made {
            assert!(
                have.get(name) == Some(bytes),
                "fuzz/corpus/{target}/{name} is missing or stale: rewrite the corpus with \
                 `CUWIRE_FUZZ_BLESS=1 cargo test -p cuwire-server --test fuzz_corpus`"
            );
        }
    }
}

fn replay(target: &str) {
    let corpus = committed(target);
    assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty");
    for (name, bytes) in corpus {
        eprintln!("{target}/{name}: {} bytes", bytes.len());
        targets::run(target, &bytes);
    }
}

#[test]
fn frame_decode_corpus() {
    replay("frame_decode");
}

#[test]
fn handshake_corpus() {
    replay("handshake");
}

#[test]
fn dispatch_corpus() {
    replay("dispatch");
}

/// The session seed really reaches the backend: every call in it succeeds.
#[test]
fn the_session_seed_runs_without_errors() {
    use cuwire_protocol::frame::Decoder;
    use cuwire_protocol::{Call, ServerMsg};
    let bytes = std::fs::read(corpus_dir("dispatch").join("session")).unwrap();
    let mut session = targets::dispatch_session();
    let mut decoder = Decoder::default();
    decoder.feed(&bytes);
    let mut calls = 0;
    while let Some(raw) = decoder.next_frame().unwrap() {
        let call: Call = raw.decode().unwrap();
        for (msg, _) in session.handle(call, raw.payload).messages {
            if let ServerMsg::Reply { result, latched, seq } = msg {
                assert!(result.is_ok() && latched.is_none(), "call {seq} of the session seed failed: {result:?} {latched:?}");
            }
        }
        calls += 1;
    }
    assert!(calls >= 10);
}
