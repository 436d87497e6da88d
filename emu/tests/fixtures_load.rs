use std::sync::Arc;
use cuwire_emu::*;
#[test]
fn all_fixtures_load() {
    let m = Arc::new(DeviceMemory::new(0x7000_0000_0000, 1 << 30));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut bad = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().map(|x| x == "ptx").unwrap_or(false) {
            match Module::load(&std::fs::read(&p).unwrap(), &m) {
                Ok(md) => println!("{}: {:?}", p.display(), md.kernel_names()),
                Err(e) => bad.push(format!("{}: {e}", p.display())),
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
