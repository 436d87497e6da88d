//! The driver JIT linker (`cuLinkCreate` … `cuLinkDestroy`), answered in the shim without a
//! round trip. The emulated device runs PTX, so "linking" means delivering PTX: the image
//! `cuLinkComplete` returns is PTX text (NUL-terminated), which `cuModuleLoadData` and
//! `cuLibraryLoadData` send to the server like any other image. Whether that PTX is valid is
//! decided where it is compiled, at module load: its error (`CUDA_ERROR_INVALID_PTX` …) reaches
//! the program from that call, as with any JIT failure of the real driver at load time.
//!
//! Inputs:
//! - PTX (`CU_JIT_INPUT_PTX`): one input is delivered as it is. Several are combined into one
//!   module by [`combine_ptx`]: the highest `.version` and `.target` of the inputs, then every
//!   function prototype, every variable, every function definition, in input order. A `.extern`
//!   declaration that another input defines is resolved (dropped for variables, turned into a
//!   forward declaration for functions); `.weak` and `.common` duplicates keep the first
//!   definition; a symbol defined twice otherwise is a link error. Debug information (`.file`,
//!   `.loc`, `.section`) is dropped when inputs are combined, as file numbers would collide.
//! - a cubin or fatbinary is passed through when it is the only input (the server decides what
//!   it can run: the emulated device runs the PTX inside a fatbinary);
//! - objects, libraries (`libcudadevrt.a`), LTO IR, and machine code mixed with PTX are
//!   refused with `CUDA_ERROR_NOT_SUPPORTED` and a line in the error log saying why.
//!
//! JIT options: the info and error log buffers of `cuLinkCreate` (kept, as the driver keeps
//! them, for the life of the link state) and of each `cuLinkAddData`/`cuLinkAddFile` call are
//! filled here, their `_SIZE_BYTES` values overwritten with the bytes written (NUL included);
//! `CU_JIT_WALL_TIME` receives the milliseconds the link took in the shim. The other options
//! are accepted and have no effect on PTX delivered to the server.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use super::*;
use crate::{client, context, export, ffi};
use cuwire_protocol::limits::MAX_PAYLOAD;
use cuwire_protocol::{cuda, CuError};

const CU_JIT_WALL_TIME: c_int = 2;
const CU_JIT_INFO_LOG_BUFFER: c_int = 3;
const CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: c_int = 4;
const CU_JIT_ERROR_LOG_BUFFER: c_int = 5;
const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;
/// `CU_JIT_NUM_OPTIONS` of CUDA 12.9: option values at or above it are invalid.
const CU_JIT_NUM_OPTIONS: c_int = 34;
/// More options than this in one call is taken as a corrupt argument.
const MAX_OPTIONS: c_uint = 1024;

const CU_JIT_INPUT_CUBIN: c_int = 0;
const CU_JIT_INPUT_PTX: c_int = 1;
const CU_JIT_INPUT_FATBINARY: c_int = 2;
const CU_JIT_INPUT_OBJECT: c_int = 3;
const CU_JIT_INPUT_LIBRARY: c_int = 4;
const CU_JIT_INPUT_NVVM: c_int = 5;

fn kind_name(kind: c_int) -> &'static str {
    match kind {
        CU_JIT_INPUT_CUBIN => "cubin",
        CU_JIT_INPUT_PTX => "PTX",
        CU_JIT_INPUT_FATBINARY => "fatbinary",
        CU_JIT_INPUT_OBJECT => "object",
        CU_JIT_INPUT_LIBRARY => "library",
        CU_JIT_INPUT_NVVM => "NVVM IR (LTO)",
        _ => "unknown",
    }
}

/// A log buffer named by JIT options: where it is, how large, and the option value slot its
/// `_SIZE_BYTES` option is written back through. Addresses are kept as integers: the caller
/// owns the memory and the driver API says it stays valid while it may be written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LogBuffer {
    buf: usize,
    cap: usize,
    size_slot: usize,
}

/// The output options of one call (also read by the module loads, `module.rs`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JitOutputs {
    pub(crate) info: LogBuffer,
    pub(crate) error: LogBuffer,
    wall_time_slot: usize,
}

/// Reads a JIT option list, keeping what the shim writes back.
///
/// # Safety
/// `options` and `values` hold `n` entries each (the driver API's contract).
pub(crate) unsafe fn parse_options(n: c_uint, options: *mut c_int, values: *mut *mut c_void) -> Result<JitOutputs, CuError> {
    let mut out = JitOutputs::default();
    if n == 0 {
        return Ok(out);
    }
    if n > MAX_OPTIONS || options.is_null() || values.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    for i in 0..n as usize {
        // SAFETY: both arrays hold n entries (caller's contract); i < n.
        let (option, value) = unsafe { (options.add(i).read_unaligned(), values.add(i).read_unaligned()) };
        // SAFETY: i < n, so the slot lies inside the values array.
        let slot = unsafe { values.add(i) } as usize;
        match option {
            CU_JIT_WALL_TIME => out.wall_time_slot = slot,
            CU_JIT_INFO_LOG_BUFFER => out.info.buf = value as usize,
            CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES => (out.info.cap, out.info.size_slot) = (value as usize, slot),
            CU_JIT_ERROR_LOG_BUFFER => out.error.buf = value as usize,
            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES => (out.error.cap, out.error.size_slot) = (value as usize, slot),
            o if (0..CU_JIT_NUM_OPTIONS).contains(&o) => {}
            _ => return Err(CuError::INVALID_VALUE),
        }
    }
    Ok(out)
}

impl LogBuffer {
    /// Writes `text` (truncated, NUL-terminated) and the bytes written, NUL included, back
    /// into the size option's slot. Nothing happens without a buffer and a size.
    ///
    /// # Safety
    /// The buffer and slot came from [`parse_options`] on options that are still valid.
    pub(crate) unsafe fn write(&self, text: &str) {
        if self.buf == 0 || self.cap == 0 {
            return;
        }
        let n = text.len().min(self.cap - 1);
        // SAFETY: the buffer holds cap bytes (JIT option contract); n < cap.
        unsafe { ffi::write_cstr(self.buf as *mut c_char, (n + 1) as i32, &text[..n]) }.ok();
        if self.size_slot != 0 {
            // SAFETY: the slot is an entry of the caller's option value array.
            unsafe { ffi::write_opt(self.size_slot as *mut usize, n + 1) };
        }
    }
}

impl LogBuffer {
    /// Empties the buffer: a NUL first byte, and 0 bytes used in the size option's slot.
    ///
    /// # Safety
    /// As [`LogBuffer::write`].
    pub(crate) unsafe fn clear(&self) {
        if self.buf == 0 || self.cap == 0 {
            return;
        }
        // SAFETY: the buffer holds cap >= 1 bytes (JIT option contract).
        unsafe { ffi::write_cstr(self.buf as *mut c_char, 1, "") }.ok();
        if self.size_slot != 0 {
            // SAFETY: the slot is an entry of the caller's option value array.
            unsafe { ffi::write_opt(self.size_slot as *mut usize, 0) };
        }
    }

    /// Whether the caller gave a buffer to write to.
    pub(crate) fn wanted(&self) -> bool {
        self.buf != 0 && self.cap != 0
    }
}

impl JitOutputs {
    /// # Safety
    /// As [`LogBuffer::write`].
    pub(crate) unsafe fn wall_time(&self, ms: f32) {
        if self.wall_time_slot != 0 {
            // The driver stores a float in the value slot itself.
            // SAFETY: the slot is an entry of the caller's option value array.
            unsafe { ffi::write_opt(self.wall_time_slot as *mut usize, ms.to_bits() as usize) };
        }
    }
}

struct Input {
    kind: c_int,
    name: String,
    data: Vec<u8>,
}

struct LinkState {
    /// The options of cuLinkCreate, written back on every call.
    outputs: JitOutputs,
    inputs: Vec<Input>,
    info: String,
    /// The finished image: kept until cuLinkDestroy, as cuLinkComplete's pointer refers to it.
    image: Option<Vec<u8>>,
    started: Instant,
}

static STATES: Mutex<Option<HashMap<u64, LinkState>>> = Mutex::new(None);

fn with_state<R>(h: Handle, f: impl FnOnce(&mut LinkState) -> R) -> Result<R, CuError> {
    let mut states = STATES.lock().unwrap_or_else(|p| p.into_inner());
    let state = states.get_or_insert_with(HashMap::new).get_mut(&(h as u64)).ok_or(CuError::INVALID_HANDLE)?;
    Ok(f(state))
}

/// A failed link step: its message goes to the error logs of the link state and of the call.
fn fail(h: Handle, call: &JitOutputs, code: u32, message: String) -> CuError {
    let message = format!("cuwire linker: {message}");
    if crate::debug() {
        eprintln!("{message}");
    }
    let _ = with_state(h, |s| {
        // SAFETY: the state's options stay valid for its life; the call's for the call.
        unsafe { s.outputs.error.write(&message) };
    });
    // SAFETY: the call's own options are valid during the call.
    unsafe { call.error.write(&message) };
    CuError(code)
}

export! {
    fn cuLinkCreate_v2 | cuLinkCreate (num_options: c_uint, options: *mut c_int, values: *mut *mut c_void, state_out: *mut Handle) {
        if state_out.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        if context::current().is_null() {
            return Err(CuError::INVALID_CONTEXT);
        }
        // SAFETY: option arrays of num_options entries (driver API contract).
        let outputs = unsafe { parse_options(num_options, options, values)? };
        let h = c.mint();
        let state = LinkState { outputs, inputs: Vec::new(), info: String::new(), image: None, started: Instant::now() };
        STATES.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).insert(h, state);
        // SAFETY: CUlinkState* out-parameter.
        unsafe { ffi::write(state_out, h as Handle) }
    }
}

/// Checks and records one input.
fn add_input(h: Handle, call: &JitOutputs, kind: c_int, mut data: Vec<u8>, name: String) -> Result<(), CuError> {
    let already_complete = with_state(h, |s| s.image.is_some())?;
    if already_complete {
        return Err(fail(h, call, cuda::CUDA_ERROR_INVALID_VALUE, format!("cannot add '{name}': the link is already complete")));
    }
    match kind {
        CU_JIT_INPUT_PTX => {
            while data.last() == Some(&0) {
                data.pop();
            }
            let text = std::str::from_utf8(&data).ok().filter(|t| !t.contains('\0'));
            if !text.is_some_and(|t| t.contains(".version") && t.contains(".target")) {
                return Err(fail(
                    h,
                    call,
                    cuda::CUDA_ERROR_INVALID_PTX,
                    format!("input '{name}' is not PTX text (no .version and .target)"),
                ));
            }
        }
        CU_JIT_INPUT_CUBIN | CU_JIT_INPUT_FATBINARY => {}
        CU_JIT_INPUT_OBJECT | CU_JIT_INPUT_LIBRARY | CU_JIT_INPUT_NVVM => {
            return Err(fail(
                h,
                call,
                cuda::CUDA_ERROR_NOT_SUPPORTED,
                format!(
                    "input '{name}' is {} code; the shim links PTX (and passes a single cubin or fatbinary through), not relocatable device code or LTO IR",
                    kind_name(kind)
                ),
            ));
        }
        _ => return Err(CuError::INVALID_VALUE),
    }
    let line = format!("added {} input '{name}' ({} bytes)\n", kind_name(kind), data.len());
    with_state(h, |s| {
        s.info.push_str(&line);
        s.inputs.push(Input { kind, name, data });
        // SAFETY: options valid for the state's life / the call.
        unsafe {
            s.outputs.info.write(&s.info);
            call.info.write(&line);
        }
    })
}

fn input_name(name: *const c_char, default: &str) -> String {
    if name.is_null() {
        return default.to_owned();
    }
    // SAFETY: non-null name: a NUL-terminated string (driver API contract).
    unsafe { ffi::cstr(name) }.map(str::to_owned).unwrap_or_else(|_| default.to_owned())
}

export! {
    fn cuLinkAddData_v2 | cuLinkAddData (state: Handle, kind: c_int, data: *mut c_void, size: usize, name: *const c_char,
                                         num_options: c_uint, options: *mut c_int, values: *mut *mut c_void) {
        // SAFETY: option arrays of num_options entries (driver API contract).
        let call = unsafe { parse_options(num_options, options, values)? };
        with_state(state, |_| ())?;
        if size == 0 || size > MAX_PAYLOAD {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: data holds size readable bytes (driver API contract).
        let bytes = unsafe { ffi::slice(data, size)? }.to_vec();
        add_input(state, &call, kind, bytes, input_name(name, "<data>"))
    }
}

export! {
    /// The file is read here, on the client: the server never sees client paths.
    fn cuLinkAddFile_v2 | cuLinkAddFile (state: Handle, kind: c_int, path: *const c_char,
                                         num_options: c_uint, options: *mut c_int, values: *mut *mut c_void) {
        // SAFETY: option arrays of num_options entries (driver API contract).
        let call = unsafe { parse_options(num_options, options, values)? };
        with_state(state, |_| ())?;
        // SAFETY: NUL-terminated path (driver API contract).
        let path = unsafe { ffi::cstr(path)? };
        let bytes = match std::fs::read(path) {
            Ok(b) if !b.is_empty() && b.len() <= MAX_PAYLOAD => b,
            Ok(_) => return Err(fail(state, &call, cuda::CUDA_ERROR_INVALID_VALUE, format!("{path} is empty or too large"))),
            Err(e) => return Err(fail(state, &call, cuda::CUDA_ERROR_FILE_NOT_FOUND, format!("cannot read {path}: {e}"))),
        };
        add_input(state, &call, kind, bytes, path.to_owned())
    }
}

/// The image of a link: the PTX (combined when several), or the one binary input.
fn link_image(inputs: &[Input]) -> Result<(Vec<u8>, String), String> {
    match inputs {
        [] => Err("nothing to link: no inputs were added".to_owned()),
        [one] if one.kind != CU_JIT_INPUT_PTX => {
            Ok((one.data.clone(), format!("linked by cuwire: 1 {} input, passed through", kind_name(one.kind))))
        }
        _ => {
            if let Some(bin) = inputs.iter().find(|i| i.kind != CU_JIT_INPUT_PTX) {
                return Err(format!(
                    "cannot link {} input '{}' with other inputs: machine code cannot be combined with PTX here",
                    kind_name(bin.kind),
                    bin.name
                ));
            }
            let texts: Vec<(&str, &str)> = inputs.iter().map(|i| (i.name.as_str(), std::str::from_utf8(&i.data).unwrap_or(""))).collect();
            let mut ptx = if let [(_, one)] = texts[..] { one.to_owned() } else { combine_ptx(&texts)? };
            let summary = format!(
                "linked by cuwire: {} PTX input{}, delivered as PTX ({} bytes)",
                inputs.len(),
                if inputs.len() == 1 { "" } else { "s" },
                ptx.len()
            );
            ptx.push('\0');
            Ok((ptx.into_bytes(), summary))
        }
    }
}

export! {
    fn cuLinkComplete(state: Handle, image_out: *mut *mut c_void, size_out: *mut usize) {
        if image_out.is_null() || size_out.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let none = JitOutputs::default();
        let linked = with_state(state, |s| {
            if s.image.is_none() {
                let (image, summary) = link_image(&s.inputs)?;
                s.info.push_str(&summary);
                s.image = Some(image);
            }
            let ms = s.started.elapsed().as_secs_f32() * 1000.0;
            // SAFETY: the state's options stay valid for its life.
            unsafe {
                s.outputs.info.write(&s.info);
                s.outputs.wall_time(ms);
            }
            let image = s.image.as_mut().map(|i| (i.as_mut_ptr(), i.len())).unwrap_or((std::ptr::null_mut(), 0));
            Ok::<_, String>(image)
        })?;
        let (ptr, len) = linked.map_err(|message| fail(state, &none, cuda::CUDA_ERROR_INVALID_IMAGE, message))?;
        // SAFETY: void** and size_t* out-parameters, checked non-null above.
        unsafe {
            ffi::write(image_out, ptr as *mut c_void)?;
            ffi::write(size_out, len)
        }
    }
}

export! {
    fn cuLinkDestroy(state: Handle) {
        let mut states = STATES.lock().unwrap_or_else(|p| p.into_inner());
        states.get_or_insert_with(HashMap::new).remove(&(state as u64)).map(|_| ()).ok_or(CuError::INVALID_HANDLE)
    }
}

// ---- combining PTX modules

/// One top-level statement of a PTX module.
#[derive(Debug)]
enum Item<'a> {
    /// `.version`, `.target`, `.address_size`: (directive, its text).
    Header(&'a str, &'a str),
    /// `.file`, `.section`, and comments: dropped when combining.
    Debug,
    Decl(Decl<'a>),
}

#[derive(Debug)]
struct Decl<'a> {
    text: &'a str,
    name: String,
    func: bool,
    /// A function body or a variable that is not `.extern`.
    defines: bool,
    /// `.weak` or `.common`: a duplicate definition keeps the first.
    mergeable: bool,
    is_extern: bool,
    /// The linkage directive written (`.visible`, `.weak`, or none).
    linkage: &'static str,
}

/// Splits PTX into top-level statements: a statement ends with `;` or with the `}` closing a
/// body at depth 0 (an initializer's `}` is followed by `;`); header and debug directives end
/// with their line.
fn split_top_level(ptx: &str) -> Vec<&str> {
    let b = ptx.as_bytes();
    let (mut out, mut i, mut start, mut depth) = (Vec::new(), 0usize, None::<usize>, 0i32);
    let line_end = |from: usize| b[from..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| from + p);
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => i = line_end(i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = ptx[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2),
            b'"' => i = ptx[i + 1..].find('"').map_or(b.len(), |p| i + 1 + p + 1),
            c if c.is_ascii_whitespace() => i += 1,
            c => {
                let s = *start.get_or_insert(i);
                if depth == 0 && s == i {
                    let word = ptx[i..].split(|c: char| c.is_whitespace()).next().unwrap_or("");
                    if matches!(word, ".version" | ".target" | ".address_size" | ".file") {
                        i = line_end(i);
                        out.push(&ptx[s..i]);
                        start = None;
                        continue;
                    }
                }
                i += 1;
                match c {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        let next = ptx[i..].trim_start().as_bytes().first().copied();
                        if depth == 0 && next != Some(b';') && next != Some(b',') {
                            out.push(&ptx[s..i]);
                            start = None;
                        }
                    }
                    b';' if depth == 0 => {
                        out.push(&ptx[s..i]);
                        start = None;
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(s) = start {
        out.push(&ptx[s..]);
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '%')
}

fn classify(text: &str) -> Result<Item<'_>, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let first = words.first().copied().unwrap_or("");
    match first {
        ".version" | ".target" | ".address_size" => return Ok(Item::Header(first, text)),
        ".file" | ".section" => return Ok(Item::Debug),
        _ => {}
    }
    let head = &text[..text.find(['{', '=', ';']).unwrap_or(text.len())];
    let has = |d: &str| head.split_whitespace().any(|w| w == d);
    let is_extern = has(".extern");
    let mergeable = has(".weak") || has(".common");
    let linkage = if has(".visible") {
        ".visible"
    } else if has(".weak") {
        ".weak"
    } else {
        ""
    };
    if let Some(pos) = head.find(".func").or_else(|| head.find(".entry")) {
        // `.func [(.param … ret)] name (params)`
        let after = head[pos..].split_once(char::is_whitespace).map_or("", |(_, r)| r).trim_start();
        let after = if after.starts_with('(') { after.find(')').map_or("", |p| after[p + 1..].trim_start()) } else { after };
        let name: String = after.chars().take_while(|&c| is_ident_char(c)).collect();
        if name.is_empty() {
            return Err(format!("cannot read the function name of: {}", head.trim()));
        }
        let defines = text.contains('{');
        return Ok(Item::Decl(Decl { text, name, func: true, defines, mergeable, is_extern, linkage }));
    }
    if [".global", ".const", ".shared"].iter().any(|d| has(d)) {
        let name = head
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty() && !w.starts_with('.') && !w.chars().all(|c| c.is_ascii_digit()))
            .map(|w| w.split('[').next().unwrap_or(w).to_owned())
            .next()
            .ok_or_else(|| format!("cannot read the variable name of: {}", head.trim()))?;
        return Ok(Item::Decl(Decl { text, name, func: false, defines: !is_extern, mergeable, is_extern, linkage }));
    }
    if first == ".pragma" || first.is_empty() {
        return Ok(Item::Debug);
    }
    Err(format!("unexpected top-level statement: {}", head.trim()))
}

fn version_of(text: &str) -> (u32, u32) {
    let v = text.split_whitespace().nth(1).unwrap_or("0.0");
    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

fn sm_of(text: &str) -> u32 {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|w| w.strip_prefix("sm_"))
        .map(|n| n.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().unwrap_or(0))
        .unwrap_or(0)
}

/// Combines several PTX modules into one (see the module documentation for the rules).
/// `inputs` are (name, text); an error is the link error's message.
pub fn combine_ptx(inputs: &[(&str, &str)]) -> Result<String, String> {
    let mut version: Option<&str> = None;
    let mut target: Option<&str> = None;
    let mut decls: Vec<(usize, Decl)> = Vec::new();
    for (index, (name, text)) in inputs.iter().enumerate() {
        for stmt in split_top_level(text) {
            match classify(stmt).map_err(|e| format!("input '{name}': {e}"))? {
                Item::Header(".version", t) => {
                    if version.is_none_or(|v| version_of(t) > version_of(v)) {
                        version = Some(t);
                    }
                }
                Item::Header(".target", t) => {
                    if target.is_none_or(|v| sm_of(t) > sm_of(v)) {
                        target = Some(t);
                    }
                }
                Item::Header(_, t) => {
                    if t.split_whitespace().nth(1) != Some("64") {
                        return Err(format!("input '{name}': only 64-bit PTX is supported ({})", t.trim()));
                    }
                }
                Item::Debug => {}
                Item::Decl(d) => decls.push((index, d)),
            }
        }
    }
    let (Some(version), Some(target)) = (version, target) else {
        return Err("the inputs have no .version or .target".to_owned());
    };
    // Definitions: the first of each name; a second is an error unless weak or common.
    let mut defined: HashMap<String, (usize, &'static str)> = HashMap::new();
    let mut keep = vec![true; decls.len()];
    for (k, (index, d)) in decls.iter().enumerate() {
        if !d.defines {
            continue;
        }
        match defined.get(&d.name) {
            None => {
                defined.insert(d.name.clone(), (*index, d.linkage));
            }
            Some(_) if d.mergeable => keep[k] = false,
            Some((first, _)) => {
                return Err(format!("symbol {} is defined in both '{}' and '{}'", d.name, inputs[*first].0, inputs[*index].0));
            }
        }
    }
    let mut out = format!(
        "//\n// combined by cuwire from {} PTX inputs\n//\n\n{}\n{}\n.address_size 64\n\n",
        inputs.len(),
        version.trim(),
        target.trim()
    );
    let mut seen_decl: HashSet<(bool, String)> = HashSet::new();
    // 1. function prototypes (with their linkage resolved), 2. variables, 3. function bodies.
    for (k, (_, d)) in decls.iter().enumerate() {
        let prototype = keep[k] && d.func && !d.defines;
        if !prototype || !seen_decl.insert((true, d.name.clone())) {
            continue;
        }
        match defined.get(&d.name) {
            Some((_, linkage)) if d.is_extern => {
                let resolved = d.text.replacen(".extern", linkage, 1);
                out.push_str(resolved.trim_start());
            }
            _ => out.push_str(d.text),
        }
        out.push_str("\n\n");
    }
    for (k, (_, d)) in decls.iter().enumerate() {
        if !keep[k] || d.func {
            continue;
        }
        if !d.defines && (defined.contains_key(&d.name) || !seen_decl.insert((false, d.name.clone()))) {
            continue;
        }
        out.push_str(d.text);
        out.push_str("\n\n");
    }
    for (k, (_, d)) in decls.iter().enumerate() {
        if keep[k] && d.func && d.defines {
            for line in d.text.lines().filter(|l| l.split_whitespace().next() != Some(".loc")) {
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str = "//\n// Generated\n//\n.version 8.5\n.target sm_80\n.address_size 64\n\n\
        .extern .func (.param .b32 func_retval0) helper\n(\n\t.param .b32 helper_param_0\n)\n;\n\
        .common .global .align 8 .u64 env;\n\
        .global .align 4 .b8 table[8] = {1, 2, 3, 4, 5, 6, 7, 8};\n\
        .visible .entry k(\n\t.param .u64 k_param_0\n)\n{\n\t.reg .b32 %r<3>;\n\t.local .align 8 .b8 depot[8];\n\t.loc 1 2 3\n\tret;\n}\n";
    const HELPER: &str = ".version 8.8\n.target sm_75\n.address_size 64\n.file 1 \"helper.py\"\n\
        .common .global .align 8 .u64 env;\n\
        .visible .func (.param .b32 func_retval0) helper(\n\t.param .b32 helper_param_0\n)\n{\n\tret;\n}\n";

    #[test]
    fn splits_statements() {
        let s = split_top_level(KERNEL);
        assert_eq!(s.len(), 7, "{s:#?}");
        assert!(s[4].starts_with(".common"));
        assert!(s[5].ends_with("8};"));
        assert!(s[6].starts_with(".visible .entry k(") && s[6].ends_with('}'));
    }

    #[test]
    fn combines_and_resolves() {
        let out = combine_ptx(&[("kernel", KERNEL), ("helper", HELPER)]).unwrap();
        assert!(out.contains(".version 8.8\n.target sm_80\n.address_size 64"), "{out}");
        assert_eq!(out.matches(".common .global .align 8 .u64 env;").count(), 1, "{out}");
        assert!(!out.contains(".extern"), "{out}");
        assert!(!out.contains(".loc ") && !out.contains(".file"), "{out}");
        assert!(out.contains(".local .align 8 .b8 depot[8];"), "{out}");
        let proto = out.find(".visible .func (.param .b32 func_retval0) helper\n(").expect("forward declaration");
        let table = out.find(".global .align 4 .b8 table").unwrap();
        let kernel = out.find(".visible .entry k(").unwrap();
        let body = out.find("helper(\n\t.param .b32 helper_param_0\n)\n{").unwrap();
        assert!(proto < table && table < kernel && kernel < body, "{out}");
    }

    #[test]
    fn refuses_duplicate_definitions() {
        let err = combine_ptx(&[("a", KERNEL), ("b", KERNEL)]).unwrap_err();
        assert!(err.contains("symbol table is defined in both 'a' and 'b'"), "{err}");
    }

    #[test]
    fn keeps_unresolved_externs_once() {
        let a = ".version 8.0\n.target sm_80\n.address_size 64\n.extern .global .align 4 .u32 x;\n";
        let out = combine_ptx(&[("a", a), ("b", a)]).unwrap();
        assert_eq!(out.matches(".extern .global .align 4 .u32 x;").count(), 1, "{out}");
    }

    #[test]
    fn single_inputs() {
        let ptx = Input { kind: CU_JIT_INPUT_PTX, name: "p".into(), data: KERNEL.as_bytes().to_vec() };
        let (image, summary) = link_image(std::slice::from_ref(&ptx)).unwrap();
        assert_eq!(&image[..image.len() - 1], KERNEL.as_bytes());
        assert_eq!(image.last(), Some(&0));
        assert!(summary.starts_with("linked by cuwire: 1 PTX input"), "{summary}");
        let cubin = Input { kind: CU_JIT_INPUT_CUBIN, name: "c".into(), data: b"\x7fELF....".to_vec() };
        assert_eq!(link_image(std::slice::from_ref(&cubin)).unwrap().0, b"\x7fELF....");
        assert!(link_image(&[ptx, cubin]).unwrap_err().contains("cannot link cubin input 'c'"));
        assert!(link_image(&[]).is_err());
    }
}
