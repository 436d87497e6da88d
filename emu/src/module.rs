//! A loaded PTX module: its kernels (pre-decoded), their parameter layouts and
//! attributes, and its `.global`/`.const` variables allocated in device memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::decode::{self, Program};
use crate::error::EmuError;
use crate::memory::DeviceMemory;
use crate::ptx::{self, DeclSpace, InitVal};

/// The largest kernel parameter buffer the driver accepts (CUDA 12.1+).
pub const MAX_PARAM_BYTES: u32 = 32764;

/// One kernel parameter's place in the packed parameter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamInfo {
    pub offset: u32,
    pub size: u32,
    pub align: u32,
}

/// The values `cuFuncGetAttribute` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncAttributes {
    pub max_threads_per_block: i32,
    pub shared_size_bytes: i32,
    pub const_size_bytes: i32,
    pub local_size_bytes: i32,
    pub num_regs: i32,
    pub ptx_version: i32,
    pub binary_version: i32,
}

#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub name: String,
    pub params: Vec<ParamInfo>,
    pub attrs: FuncAttributes,
}

impl KernelInfo {
    /// Size of the packed parameter buffer.
    pub fn param_bytes(&self) -> u32 {
        self.params.last().map(|p| p.offset + p.size).unwrap_or(0)
    }

    /// Same as `param_bytes`, computed by the decoder (kept for consistency checks).
    pub(crate) fn check(&self, prog: &crate::decode::Program) -> bool {
        prog.param_bytes == self.param_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalVar {
    pub addr: u64,
    pub size: u64,
}

pub(crate) struct Kernel {
    pub info: KernelInfo,
    pub prog: Arc<Program>,
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
    /// Opt-in limit for dynamic shared memory (cuFuncSetAttribute
    /// MAX_DYNAMIC_SHARED_SIZE_BYTES); 0 = the default 48 KiB total.
    pub max_dynamic_shared: AtomicU32,
}

/// A loaded module. `Send + Sync`.
pub struct Module {
    pub(crate) kernels: Vec<Kernel>,
    by_name: HashMap<String, usize>,
    globals: HashMap<String, GlobalVar>,
    allocations: Mutex<Vec<u64>>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("kernels", &self.kernel_names()).field("globals", &self.globals).finish()
    }
}

const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const FATBIN_KIND_PTX: u16 = 1;
/// Entry flag of a compressed payload.
const FATBIN_FLAG_COMPRESSED: u64 = 0x2000;

fn le16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The uncompressed PTX entries of a fatbinary (one or more concatenated containers),
/// as (arch, text), highest architecture first.
pub fn fatbin_ptx(image: &[u8]) -> Vec<(u32, &str)> {
    let mut out = Vec::new();
    let mut c = 0usize;
    while le32(image, c) == Some(FATBIN_MAGIC) {
        let (Some(hsize), Some(fsize)) = (le16(image, c + 6), le64(image, c + 8)) else { break };
        let start = c + hsize as usize;
        let Some(end) = start.checked_add(fsize as usize).filter(|&e| e <= image.len()) else { break };
        let mut e = start;
        while e + 64 <= end {
            let (Some(kind), Some(ehs), Some(size)) = (le16(image, e), le32(image, e + 4), le64(image, e + 8)) else {
                break;
            };
            let arch = le32(image, e + 28).unwrap_or(0);
            let flags = le64(image, e + 40).unwrap_or(0);
            let p = e + ehs as usize;
            let Some(q) = p.checked_add(size as usize).filter(|&q| q <= end) else { break };
            if kind == FATBIN_KIND_PTX && flags & FATBIN_FLAG_COMPRESSED == 0 {
                let payload = &image[p..q];
                let n = payload.iter().position(|&b| b == 0).unwrap_or(payload.len());
                if let Ok(t) = std::str::from_utf8(&payload[..n]) {
                    if t.contains(".version") {
                        out.push((arch, t));
                    }
                }
            }
            if ehs == 0 && size == 0 {
                break;
            }
            e = q;
        }
        c = end.div_ceil(8) * 8;
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out
}

/// Extracts the PTX text of an image, refusing binary formats clearly.
fn image_text(image: &[u8]) -> Result<&str, EmuError> {
    if image.starts_with(b"\x7fELF") {
        return Err(EmuError::InvalidPtx(
            "the image is a cubin (ELF); the emulated device runs PTX only: load the PTX \
             (e.g. compile with -ptx or --gpu-architecture=compute_XX)"
                .into(),
        ));
    }
    if image.starts_with(&FATBIN_MAGIC.to_le_bytes()) || image.starts_with(&[0x46, 0x62, 0xc1, 0x46]) {
        return Err(EmuError::InvalidPtx(
            "the fatbinary holds no uncompressed PTX the emulated device could run (it runs PTX only, \
             not SASS; embed PTX, e.g. nvcc -gencode arch=compute_80,code=compute_80 -Xfatbin -compress-all=false)"
                .into(),
        ));
    }
    let end = image.iter().position(|&b| b == 0).unwrap_or(image.len());
    std::str::from_utf8(&image[..end]).map_err(|e| EmuError::InvalidPtx(format!("the image is not PTX text: {e}")))
}

fn write_init(mem: &DeviceMemory, addr: u64, v: &ptx::VarDecl, syms: &HashMap<String, GlobalVar>) -> Result<(), EmuError> {
    let es = v.elem_size() as usize;
    let is_float = v.ty.starts_with('f');
    let mut bytes = Vec::with_capacity(v.init.len() * es);
    for x in &v.init {
        let bits: u64 = match x {
            InitVal::Int(i) => {
                if is_float {
                    if es == 4 {
                        (*i as i64 as f32).to_bits() as u64
                    } else {
                        (*i as i64 as f64).to_bits()
                    }
                } else {
                    *i
                }
            }
            InitVal::Float(f) => {
                if es == 4 {
                    (*f as f32).to_bits() as u64
                } else if es == 2 {
                    half::f16::from_f64(*f).to_bits() as u64
                } else {
                    f.to_bits()
                }
            }
            InitVal::F32Bits(b) => {
                if es == 8 {
                    (f32::from_bits(*b) as f64).to_bits()
                } else {
                    *b as u64
                }
            }
            InitVal::F64Bits(b) => {
                if es == 4 {
                    (f64::from_bits(*b) as f32).to_bits() as u64
                } else {
                    *b
                }
            }
            InitVal::Sym(s, off) => {
                let g = syms
                    .get(s)
                    .ok_or_else(|| EmuError::InvalidPtx(format!("line {}: initialiser of {} names unknown symbol {s}", v.line, v.name)))?;
                g.addr.wrapping_add(*off as u64)
            }
        };
        let b = bits.to_le_bytes();
        bytes.extend_from_slice(&b[..es.min(8)]);
        bytes.resize(bytes.len() + es.saturating_sub(8), 0);
    }
    let size = v.size() as usize;
    bytes.truncate(size);
    if !bytes.is_empty() {
        mem.write(addr, &bytes)?;
    }
    Ok(())
}

impl Module {
    /// Loads a PTX image (text, possibly NUL-terminated): parses and pre-decodes every
    /// kernel (refusing unsupported instructions here) and allocates the module's
    /// `.global` and `.const` variables in `mem`, initialised.
    pub fn load(image: &[u8], mem: &Arc<DeviceMemory>) -> Result<Module, EmuError> {
        if image.starts_with(&FATBIN_MAGIC.to_le_bytes()) {
            // run the PTX of the highest architecture that loads
            let mut first_err = None;
            for (_, text) in fatbin_ptx(image) {
                match Module::load(text.as_bytes(), mem) {
                    Ok(m) => return Ok(m),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            return Err(first_err.unwrap_or_else(|| image_text(image).unwrap_err()));
        }
        image_text(image)?; // refuses binary formats with a clear message
                            // Several PTX texts separated by NUL bytes form one linked module (what a
                            // cuLinkAddData/cuLinkComplete sequence amounts to): declarations of one are
                            // resolved against the definitions of the others.
        let mut parts = Vec::new();
        for (i, chunk) in image.split(|&b| b == 0).enumerate() {
            let looks_like_ptx = |t: &str| t.contains(".version") || t.contains(".entry") || t.contains(".func");
            let text = match std::str::from_utf8(chunk) {
                Ok(t) if looks_like_ptx(t) => t,
                // bytes after the terminating NUL of the first text are ignored unless they
                // are PTX themselves
                _ if i > 0 => continue,
                Ok(_) => return Err(EmuError::InvalidPtx("the image does not look like PTX text".into())),
                Err(e) => return Err(EmuError::InvalidPtx(format!("the image is not PTX text: {e}"))),
            };
            parts.push(ptx::parse(text)?);
        }
        let m = ptx::link(parts)?;
        let mut globals = HashMap::new();
        let mut allocations = Vec::new();
        let mut const_bytes = 0u64;
        let result = (|| -> Result<Vec<Kernel>, EmuError> {
            // allocate first, then initialise (initialisers may take other variables' addresses)
            for v in &m.vars {
                if v.is_extern || !matches!(v.space, DeclSpace::Global | DeclSpace::Const) {
                    continue;
                }
                let size = v.size().max(1);
                if v.space == DeclSpace::Const {
                    const_bytes += size;
                }
                let addr = mem.alloc(size)?;
                allocations.push(addr);
                globals.insert(v.name.clone(), GlobalVar { addr, size: v.size() });
            }
            for v in &m.vars {
                if let Some(g) = globals.get(&v.name) {
                    if !v.init.is_empty() {
                        write_init(mem, g.addr, v, &globals)?;
                    }
                }
            }
            let ptx_version = (m.version.0 * 10 + m.version.1) as i32;
            let binary_version = m
                .target
                .split(',')
                .find_map(|t| t.strip_prefix("sm_").or_else(|| t.strip_prefix("compute_")))
                .and_then(|s| s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok())
                .unwrap_or(80);
            let mut kernels = Vec::new();
            for f in m.funcs.iter().filter(|f| f.is_entry && f.body.is_some()) {
                let prog = decode::decode_kernel(&m, f, &globals)?;
                let mut params = Vec::new();
                let mut off = 0u32;
                for p in &f.params {
                    let align = p.align.max(1);
                    off = off.div_ceil(align).saturating_mul(align);
                    params.push(ParamInfo { offset: off, size: p.size(), align });
                    off = off.saturating_add(p.size());
                }
                if off > MAX_PARAM_BYTES {
                    return Err(EmuError::InvalidPtx(format!(
                        "line {}: kernel {} has {off} bytes of parameters, more than {MAX_PARAM_BYTES}",
                        f.line, f.name
                    )));
                }
                // what .reqntid/.maxntid allow, and what the interpreter's per-block state
                // bound allows (so the attribute agrees with launch validation)
                let per_thread = prog.nregs as u64 * 8 + prog.local_bytes as u64;
                let by_state = (crate::exec::MAX_CTA_STATE_BYTES / per_thread.max(1) / 32 * 32).clamp(32, 1024);
                let maxthreads =
                    f.reqntid.or(f.maxntid).map(|d| d.iter().map(|&x| x as u64).product::<u64>()).unwrap_or(1024).min(1024).min(by_state)
                        as i32;
                let attrs = FuncAttributes {
                    max_threads_per_block: maxthreads,
                    shared_size_bytes: prog.static_shared as i32,
                    const_size_bytes: const_bytes as i32,
                    local_size_bytes: prog.local_bytes as i32,
                    num_regs: prog.num_regs_estimate() as i32,
                    ptx_version,
                    binary_version,
                };
                let info = KernelInfo { name: f.name.clone(), params, attrs };
                debug_assert!(info.check(&prog));
                kernels.push(Kernel {
                    info,
                    prog: Arc::new(prog),
                    maxntid: f.maxntid,
                    reqntid: f.reqntid,
                    max_dynamic_shared: AtomicU32::new(0),
                });
            }
            Ok(kernels)
        })();
        match result {
            Ok(kernels) => {
                let by_name = kernels.iter().enumerate().map(|(i, k)| (k.info.name.clone(), i)).collect();
                Ok(Module { kernels, by_name, globals, allocations: Mutex::new(allocations) })
            }
            Err(e) => {
                for a in allocations {
                    let _ = mem.free(a);
                }
                Err(e)
            }
        }
    }

    pub fn kernel_names(&self) -> Vec<String> {
        self.kernels.iter().map(|k| k.info.name.clone()).collect()
    }

    /// A `.entry` function of the module.
    pub fn kernel(&self, name: &str) -> Option<&KernelInfo> {
        self.by_name.get(name).map(|&i| &self.kernels[i].info)
    }

    pub(crate) fn kernel_impl(&self, name: &str) -> Option<&Kernel> {
        self.by_name.get(name).map(|&i| &self.kernels[i])
    }

    /// A `.global` or `.const` module variable.
    pub fn global(&self, name: &str) -> Option<GlobalVar> {
        self.globals.get(name).copied()
    }

    /// Opt a kernel into more dynamic shared memory (cuFuncSetAttribute with
    /// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES). Static + dynamic may then reach
    /// 163 KiB (the cc 8.0 limit).
    pub fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), EmuError> {
        let k = self.kernel_impl(kernel).ok_or_else(|| EmuError::NotFound(format!("kernel {kernel}")))?;
        if bytes as u64 + k.prog.static_shared as u64 > crate::exec::MAX_SHARED_OPTIN as u64 {
            return Err(EmuError::InvalidValue(format!("{bytes} bytes of dynamic shared memory exceed the device limit")));
        }
        k.max_dynamic_shared.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Frees the module's variables. Idempotent.
    pub fn unload(&self, mem: &DeviceMemory) {
        let mut a = self.allocations.lock().unwrap_or_else(|e| e.into_inner());
        for p in a.drain(..) {
            let _ = mem.free(p);
        }
    }
}
