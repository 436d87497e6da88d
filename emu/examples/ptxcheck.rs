//! Loads PTX files and lists their kernels, or prints why a file is refused.
//!
//!     cargo run -p cuwire-emu --example ptxcheck -- file.ptx...
fn main() {
    let mem = std::sync::Arc::new(cuwire_emu::DeviceMemory::new(0x7000_0000_0000, 1 << 30));
    for f in std::env::args().skip(1) {
        let img = std::fs::read(&f).expect("read");
        match cuwire_emu::Module::load(&img, &mem) {
            Ok(m) => {
                for k in m.kernel_names() {
                    let i = m.kernel(&k).expect("kernel");
                    println!("{f}: {k} params={:?} attrs={:?}", i.params, i.attrs);
                }
            }
            Err(e) => println!("{f}: error {} (CUresult {})", e, e.cuda_code()),
        }
    }
}
