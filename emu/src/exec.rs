//! Running a kernel: CTAs spread over worker threads, each CTA's warps interleaved on
//! one worker (so shared memory needs no synchronisation), warps of 32 lanes with
//! per-lane PCs and min-PC scheduling for divergence and reconvergence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::decode::{hot, Addr, BoolOp, Op, PSrc, Program, Space, Src, Sreg, CC_REG, LOCAL_WIN, NOREG, PARAM_WIN, SHARED_WIN, WIN_SIZE};
use crate::error::EmuError;
use crate::memory::{Allocation, DeviceMemory};
use crate::module::Module;
use crate::ops;

/// Shared memory a CTA may use without opting in (static + dynamic).
pub const MAX_SHARED_DEFAULT: u32 = 48 * 1024;
/// Shared memory per CTA with the opt-in attribute (compute capability 8.0).
pub const MAX_SHARED_OPTIN: u32 = 163 * 1024;
/// Register and local-memory state one CTA may need in the interpreter.
pub const MAX_CTA_STATE_BYTES: u64 = 256 << 20;
/// Number of "SMs" the device reports through `%nsmid`.
pub const NUM_SMS: u32 = 108;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Worker threads for the CTAs; 0 = all cores.
    pub worker_threads: usize,
    /// A launch running longer than this fails with `Timeout`.
    pub watchdog: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions { worker_threads: 0, watchdog: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOutput {
    /// Text of device `printf` calls, in the order they ran.
    pub printf: Vec<u8>,
    /// Thread-instructions executed (for throughput measurements).
    pub thread_instructions: u64,
}

struct Ctx<'a> {
    prog: &'a Program,
    params: &'a [u8],
    mem: &'a DeviceMemory,
    block: [u32; 3],
    grid: [u32; 3],
    nthreads: u32,
    nwarps: u32,
    dyn_smem: u32,
    shared_bytes: usize,
    abort: AtomicBool,
    error: Mutex<Option<EmuError>>,
    printf: Mutex<Vec<u8>>,
    next_cta: AtomicU64,
    total_ctas: u64,
    workers: usize,
    deadline: Instant,
    watchdog: Duration,
    start: Instant,
    instrs: AtomicU64,
}

fn pools() -> &'static Mutex<HashMap<usize, Arc<rayon::ThreadPool>>> {
    static P: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

fn pool_for(n: usize) -> Option<Arc<rayon::ThreadPool>> {
    let mut m = pools().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = m.get(&n) {
        return Some(p.clone());
    }
    let p = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(n).thread_name(move |i| format!("emu-cta-{n}-{i}")).build().ok()?);
    m.insert(n, p.clone());
    Some(p)
}

fn validate(module: &Module, kernel: &str, cfg: &LaunchConfig, params: &[u8]) -> Result<(), EmuError> {
    let k = module.kernel_impl(kernel).ok_or_else(|| EmuError::NotFound(format!("kernel {kernel}")))?;
    let b = cfg.block;
    let g = cfg.grid;
    if b.contains(&0) || g.contains(&0) {
        return Err(EmuError::InvalidConfiguration(format!("zero dimension: grid {g:?} block {b:?}")));
    }
    if b[0] > 1024 || b[1] > 1024 || b[2] > 64 {
        return Err(EmuError::InvalidConfiguration(format!("block {b:?} exceeds (1024, 1024, 64)")));
    }
    if g[0] > i32::MAX as u32 || g[1] > 65535 || g[2] > 65535 {
        return Err(EmuError::InvalidConfiguration(format!("grid {g:?} exceeds (2^31-1, 65535, 65535)")));
    }
    let threads = b[0] as u64 * b[1] as u64 * b[2] as u64;
    let maxt = k.info.attrs.max_threads_per_block as u64;
    if threads > 1024 || threads > maxt {
        return Err(EmuError::OutOfResources(format!("{threads} threads per block, the kernel allows {maxt}")));
    }
    if let Some(r) = k.reqntid {
        if r != b {
            return Err(EmuError::InvalidConfiguration(format!("block {b:?} differs from the kernel's .reqntid {r:?}")));
        }
    }
    if let Some(m) = k.maxntid {
        if threads > m.iter().map(|&x| x as u64).product::<u64>() {
            return Err(EmuError::OutOfResources(format!("block {b:?} exceeds .maxntid {m:?}")));
        }
    }
    let stat = k.prog.static_shared as u64;
    let dynb = cfg.shared_mem_bytes as u64;
    let optin = k.max_dynamic_shared.load(Ordering::Relaxed) as u64;
    let limit = if optin > 0 { (stat + optin).min(MAX_SHARED_OPTIN as u64) } else { MAX_SHARED_DEFAULT as u64 };
    if stat + dynb > limit.max(stat.min(MAX_SHARED_DEFAULT as u64)) || stat + dynb > MAX_SHARED_OPTIN as u64 {
        return Err(EmuError::OutOfResources(format!(
            "{stat} bytes static + {dynb} bytes dynamic shared memory exceed the limit of {limit}"
        )));
    }
    // the interpreter keeps every thread's registers and local memory: bound what one
    // worker may have to allocate for a CTA
    let per_thread = k.prog.nregs as u64 * 8 + k.prog.local_bytes as u64;
    let cta_bytes = per_thread * threads.div_ceil(32) * 32;
    if cta_bytes > MAX_CTA_STATE_BYTES.max(per_thread * 32) {
        return Err(EmuError::OutOfResources(format!(
            "{threads} threads x {per_thread} bytes of registers and local memory exceed the emulator's {} MiB per block",
            MAX_CTA_STATE_BYTES >> 20
        )));
    }
    let need = k.info.param_bytes() as usize;
    if params.len() < need {
        return Err(EmuError::InvalidValue(format!("parameter buffer of {} bytes, kernel {kernel} needs {need}", params.len())));
    }
    Ok(())
}

/// Runs `kernel` to completion on the calling thread (CTAs spread over a thread pool).
pub fn launch(
    module: &Module,
    kernel: &str,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &Arc<DeviceMemory>,
    opts: &ExecOptions,
) -> Result<LaunchOutput, EmuError> {
    let (r, out) = launch_with_output(module, kernel, cfg, params, mem, opts);
    r.map(|_| out)
}

/// Like [`launch`], but also returns the output of a launch that failed: the device printf
/// text produced before the fault and, for a failed `assert`, the line a GPU prints
/// (`file:line: function: block: [..], thread: [..] Assertion `expr` failed.`).
pub fn launch_with_output(
    module: &Module,
    kernel: &str,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &Arc<DeviceMemory>,
    opts: &ExecOptions,
) -> (Result<(), EmuError>, LaunchOutput) {
    match launch_inner(module, kernel, cfg, params, mem, opts) {
        Ok((r, out)) => (r, out),
        Err(e) => (Err(e), LaunchOutput::default()),
    }
}

fn launch_inner(
    module: &Module,
    kernel: &str,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &Arc<DeviceMemory>,
    opts: &ExecOptions,
) -> Result<(Result<(), EmuError>, LaunchOutput), EmuError> {
    validate(module, kernel, cfg, params)?;
    let k = module.kernel_impl(kernel).expect("validated");
    let prog: &Program = &k.prog;
    let nthreads = cfg.block.iter().product::<u32>();
    let total_ctas = cfg.grid.iter().map(|&x| x as u64).product::<u64>();
    let now = Instant::now();
    let mut ctx = Ctx {
        prog,
        params,
        mem,
        block: cfg.block,
        grid: cfg.grid,
        nthreads,
        nwarps: nthreads.div_ceil(32),
        dyn_smem: cfg.shared_mem_bytes,
        shared_bytes: (prog.dyn_shared_offset as usize + cfg.shared_mem_bytes as usize).max(prog.static_shared as usize),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        printf: Mutex::new(Vec::new()),
        next_cta: AtomicU64::new(0),
        total_ctas,
        workers: 1,
        deadline: now + opts.watchdog,
        watchdog: opts.watchdog,
        start: now,
        instrs: AtomicU64::new(0),
    };
    // available_parallelism reads cgroup files on every call: ask once.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let want = if opts.worker_threads == 0 { cores } else { opts.worker_threads };
    let workers = (want as u64).min(total_ctas).max(1) as usize;
    ctx.workers = workers;
    if workers == 1 {
        worker(&ctx, 0);
    } else {
        let pool = if opts.worker_threads == 0 { None } else { pool_for(opts.worker_threads) };
        match pool {
            Some(p) => p.scope(|s| spawn_all(s, &ctx, workers)),
            None => rayon::scope(|s| spawn_all(s, &ctx, workers)),
        }
    }
    let err = ctx.error.lock().unwrap_or_else(|e| e.into_inner()).take();
    let printf = std::mem::take(&mut *ctx.printf.lock().unwrap_or_else(|e| e.into_inner()));
    let out = LaunchOutput { printf, thread_instructions: ctx.instrs.load(Ordering::Relaxed) };
    Ok((err.map_or(Ok(()), Err), out))
}

fn spawn_all<'s, 'a: 's>(s: &rayon::Scope<'s>, ctx: &'s Ctx<'a>, workers: usize) {
    for i in 0..workers {
        s.spawn(move |_| worker(ctx, i as u32));
    }
}

fn fail(ctx: &Ctx, e: EmuError) {
    let mut g = ctx.error.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(e);
    }
    ctx.abort.store(true, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WState {
    Run,
    Barrier,
    Done,
}

struct Warp {
    regs: Vec<u64>,
    preds: Vec<u32>,
    local: Vec<u8>,
    pcs: [u32; 32],
    pc: u32,
    active: u32,
    live: u32,
    blocked: u32,
    waiting_min: u32,
    id: u32,
    state: WState,
    /// The last few allocations this warp touched (saxpy alone alternates between two).
    cache: [Option<Arc<Allocation>>; 4],
    cache_next: usize,
    red_pending: Option<(u8, u32, u32)>,
    count: u64,
}

impl Warp {
    fn new(prog: &Program, id: u32) -> Self {
        Warp {
            regs: vec![0; prog.nregs as usize * 32],
            preds: vec![0; prog.npreds as usize],
            local: vec![0; prog.local_bytes as usize * 32],
            pcs: [0; 32],
            pc: 0,
            active: 0,
            live: 0,
            blocked: 0,
            waiting_min: u32::MAX,
            id,
            state: WState::Done,
            cache: Default::default(),
            cache_next: 0,
            red_pending: None,
            count: 0,
        }
    }

    fn reset(&mut self, lanes: u32) {
        self.live = if lanes >= 32 { u32::MAX } else { (1u32 << lanes) - 1 };
        self.active = self.live;
        self.blocked = 0;
        self.pc = 0;
        self.pcs = [0; 32];
        self.waiting_min = u32::MAX;
        self.state = WState::Run;
        self.red_pending = None;
    }

    /// Picks the lanes with the lowest PC among the runnable ones. False if none.
    fn reschedule(&mut self) -> bool {
        let runnable = self.live & !self.blocked;
        if runnable == 0 {
            self.active = 0;
            return false;
        }
        let mut minpc = u32::MAX;
        let mut m = runnable;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            minpc = minpc.min(self.pcs[l]);
        }
        let mut act = 0u32;
        let mut wmin = u32::MAX;
        let mut m = runnable;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            if self.pcs[l] == minpc {
                act |= 1 << l;
            } else {
                wmin = wmin.min(self.pcs[l]);
            }
        }
        self.active = act;
        self.pc = minpc;
        self.waiting_min = wmin;
        true
    }

    /// The active lanes reached the PC of waiting lanes: run them together again.
    fn merge(&mut self) {
        let waiting = self.live & !self.blocked & !self.active;
        let mut wmin = u32::MAX;
        let mut m = waiting;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            if self.pcs[l] == self.pc {
                self.active |= 1 << l;
            } else {
                wmin = wmin.min(self.pcs[l]);
            }
        }
        self.waiting_min = wmin;
    }

    fn set_pcs(&mut self, mut m: u32, pc: u32) {
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            self.pcs[l] = pc;
        }
    }

    #[inline(always)]
    fn pval(&self, p: PSrc) -> u32 {
        match p {
            PSrc::I(b) => {
                if b {
                    u32::MAX
                } else {
                    0
                }
            }
            PSrc::P(i, neg) => {
                let v = self.preds[i as usize];
                if neg {
                    !v
                } else {
                    v
                }
            }
        }
    }
}

struct Cta {
    warps: Vec<Warp>,
    shared: Vec<u8>,
    /// `bar.red` contributions of the current barrier: lanes with a true predicate, lanes.
    red: [u32; 2],
    ctaid: [u32; 3],
    sm: u32,
}

fn worker(ctx: &Ctx, sm: u32) {
    let mut cta = Cta {
        warps: (0..ctx.nwarps).map(|i| Warp::new(ctx.prog, i)).collect(),
        shared: vec![0; ctx.shared_bytes],
        red: [0; 2],
        ctaid: [0; 3],
        sm: sm % NUM_SMS,
    };
    let mut count = 0u64;
    // CTAs are taken in small runs of consecutive ids: neighbouring CTAs touch neighbouring
    // memory, and one worker keeping them avoids sharing cache lines with another
    let chunk = (ctx.total_ctas / (ctx.workers as u64 * 16)).clamp(1, 64);
    let (mut next, mut end) = (0u64, 0u64);
    loop {
        if ctx.abort.load(Ordering::Relaxed) {
            break;
        }
        if next == end {
            next = ctx.next_cta.fetch_add(chunk, Ordering::Relaxed);
            end = (next + chunk).min(ctx.total_ctas);
            if next >= ctx.total_ctas {
                break;
            }
        }
        let id = next;
        next += 1;
        let gx = ctx.grid[0] as u64;
        let gy = ctx.grid[1] as u64;
        cta.ctaid = [(id % gx) as u32, ((id / gx) % gy) as u32, (id / (gx * gy)) as u32];
        if let Err(e) = run_cta(ctx, &mut cta) {
            fail(ctx, e);
            break;
        }
        if Instant::now() > ctx.deadline {
            fail(ctx, EmuError::Timeout(format!("kernel {} ran longer than {:?}", ctx.prog.name, ctx.watchdog)));
            break;
        }
    }
    for w in &cta.warps {
        count += w.count;
    }
    ctx.instrs.fetch_add(count, Ordering::Relaxed);
}

fn run_cta(ctx: &Ctx, cta: &mut Cta) -> Result<(), EmuError> {
    cta.shared.fill(0);
    cta.red = [0; 2];
    let n = ctx.nthreads;
    for w in cta.warps.iter_mut() {
        let lanes = (n - w.id * 32).min(32);
        w.reset(lanes);
    }
    let mut rounds = 0u32;
    loop {
        // a loop around bar.sync returns to here often without a warp running long:
        // the watchdog and the abort flag are checked here too
        rounds = rounds.wrapping_add(1);
        if rounds & 63 == 0 {
            if ctx.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            if Instant::now() > ctx.deadline {
                return Err(EmuError::Timeout(format!("kernel {} ran longer than {:?}", ctx.prog.name, ctx.watchdog)));
            }
        }
        let mut any_run = false;
        for wi in 0..cta.warps.len() {
            if cta.warps[wi].state == WState::Run {
                any_run = true;
                let st = run_warp(ctx, cta, wi)?;
                cta.warps[wi].state = st;
            }
        }
        if !any_run {
            // nothing runnable: either all done, or every live warp waits at the barrier
            let mut waiting = false;
            let [trues, total] = std::mem::take(&mut cta.red);
            for w in cta.warps.iter_mut() {
                if let Some((mode, d, m)) = w.red_pending.take() {
                    match mode {
                        0 => {
                            let mut mm = m;
                            while mm != 0 {
                                let l = mm.trailing_zeros() as usize;
                                mm &= mm - 1;
                                w.regs[d as usize * 32 + l] = trues as u64;
                            }
                        }
                        _ => {
                            let r = if mode == 1 { trues == total } else { trues > 0 };
                            let p = &mut w.preds[d as usize];
                            *p = (*p & !m) | if r { m } else { 0 };
                        }
                    }
                }
                if w.state == WState::Barrier {
                    waiting = true;
                    w.blocked = 0;
                    w.reschedule();
                    w.state = WState::Run;
                }
            }
            if !waiting {
                return Ok(());
            }
        }
    }
}

#[inline(always)]
fn load_bytes(b: &[u8], off: usize, size: u8) -> u64 {
    match size {
        1 => b[off] as u64,
        2 => u16::from_le_bytes([b[off], b[off + 1]]) as u64,
        4 => u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as u64,
        _ => u64::from_le_bytes(b[off..off + 8].try_into().unwrap()),
    }
}

#[inline(always)]
fn store_bytes(b: &mut [u8], off: usize, size: u8, v: u64) {
    b[off..off + size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
}

/// Where an access goes after resolving generic addresses.
enum Target {
    Global(u64),
    Shared(usize),
    Local(usize),
    Param(usize),
}

struct Mem<'c, 'a> {
    ctx: &'c Ctx<'a>,
    shared: &'c mut [u8],
}

impl Mem<'_, '_> {
    fn resolve(&self, sp: Space, addr: u64, size: u64, lane: usize, line: u32) -> Result<Target, EmuError> {
        let sp = if sp == Space::Generic {
            if (SHARED_WIN..SHARED_WIN + WIN_SIZE).contains(&addr) {
                return self.resolve(Space::Shared, addr - SHARED_WIN, size, lane, line);
            } else if (LOCAL_WIN..LOCAL_WIN + WIN_SIZE).contains(&addr) {
                return self.resolve(Space::Local, addr - LOCAL_WIN, size, lane, line);
            } else if (PARAM_WIN..PARAM_WIN + WIN_SIZE).contains(&addr) {
                return self.resolve(Space::KParam, addr - PARAM_WIN, size, lane, line);
            } else {
                Space::Global
            }
        } else {
            sp
        };
        if addr & (size - 1) != 0 {
            return Err(EmuError::MisalignedAddress(format!(
                "{}-byte access at {addr:#x} ({sp:?} space) in kernel {} line {line}",
                size, self.ctx.prog.name
            )));
        }
        let bad = |what: &str| {
            EmuError::IllegalAddress(format!("{}-byte access at {addr:#x} {what} in kernel {} line {line}", size, self.ctx.prog.name))
        };
        Ok(match sp {
            Space::Shared => {
                if addr.saturating_add(size) > self.shared.len() as u64 {
                    return Err(bad("outside shared memory"));
                }
                Target::Shared(addr as usize)
            }
            Space::Local => {
                let lb = self.ctx.prog.local_bytes as u64;
                if addr.saturating_add(size) > lb {
                    return Err(bad("outside local memory"));
                }
                Target::Local(lane * lb as usize + addr as usize)
            }
            Space::KParam => {
                if addr.saturating_add(size) > self.ctx.params.len() as u64 {
                    return Err(bad("outside the parameter buffer"));
                }
                Target::Param(addr as usize)
            }
            _ => Target::Global(addr),
        })
    }

    #[inline]
    fn global<'w>(&self, w: &'w mut Warp, addr: u64, size: u64, line: u32) -> Result<&'w Allocation, EmuError> {
        let mut hit = usize::MAX;
        for (i, c) in w.cache.iter().enumerate() {
            if matches!(c, Some(a) if a.contains(addr, size)) {
                hit = i;
                break;
            }
        }
        if hit == usize::MAX {
            match self.ctx.mem.find(addr) {
                Some(a) if a.contains(addr, size) => {
                    hit = w.cache_next;
                    w.cache[hit] = Some(a);
                    w.cache_next = (hit + 1) % w.cache.len();
                }
                _ => {
                    return Err(EmuError::IllegalAddress(format!(
                        "{size}-byte global access at {addr:#x} outside any allocation in kernel {} line {line}",
                        self.ctx.prog.name
                    )))
                }
            }
        }
        Ok(w.cache[hit].as_deref().expect("cached"))
    }

    fn load(&self, w: &mut Warp, sp: Space, addr: u64, size: u8, lane: usize, line: u32) -> Result<u64, EmuError> {
        if sp == Space::Global {
            if addr & (size as u64 - 1) != 0 {
                return Err(EmuError::MisalignedAddress(format!(
                    "{size}-byte load at {addr:#x} in kernel {} line {line}",
                    self.ctx.prog.name
                )));
            }
            let a = self.global(w, addr, size as u64, line)?;
            return Ok(a.load(addr - a.base, size as u32));
        }
        Ok(match self.resolve(sp, addr, size as u64, lane, line)? {
            Target::Global(g) => {
                let a = self.global(w, g, size as u64, line)?;
                a.load(g - a.base, size as u32)
            }
            Target::Shared(o) => load_bytes(self.shared, o, size),
            Target::Local(o) => load_bytes(&w.local, o, size),
            Target::Param(o) => load_bytes(self.ctx.params, o, size),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn store(&mut self, w: &mut Warp, sp: Space, addr: u64, size: u8, v: u64, lane: usize, line: u32) -> Result<(), EmuError> {
        if sp == Space::Global {
            if addr & (size as u64 - 1) != 0 {
                return Err(EmuError::MisalignedAddress(format!(
                    "{size}-byte store at {addr:#x} in kernel {} line {line}",
                    self.ctx.prog.name
                )));
            }
            let a = self.global(w, addr, size as u64, line)?;
            a.store(addr - a.base, size as u32, v);
            return Ok(());
        }
        match self.resolve(sp, addr, size as u64, lane, line)? {
            Target::Global(g) => {
                let a = self.global(w, g, size as u64, line)?;
                a.store(g - a.base, size as u32, v);
            }
            Target::Shared(o) => store_bytes(self.shared, o, size, v),
            Target::Local(o) => store_bytes(&mut w.local, o, size, v),
            Target::Param(_) => {
                return Err(EmuError::IllegalAddress(format!(
                    "store to the kernel parameter space in kernel {} line {line}",
                    self.ctx.prog.name
                )))
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn atom(
        &mut self,
        w: &mut Warp,
        sp: Space,
        addr: u64,
        size: u8,
        lane: usize,
        line: u32,
        f: impl Fn(u64) -> u64,
    ) -> Result<u64, EmuError> {
        let m = if size >= 8 { u64::MAX } else { (1u64 << (size * 8)) - 1 };
        match self.resolve(sp, addr, size as u64, lane, line)? {
            Target::Global(g) => {
                let a = self.global(w, g, size as u64, line)?;
                Ok(a.rmw(g - a.base, size as u32, f))
            }
            Target::Shared(o) => {
                let old = load_bytes(self.shared, o, size);
                store_bytes(self.shared, o, size, f(old) & m);
                Ok(old)
            }
            Target::Local(o) => {
                let old = load_bytes(&w.local, o, size);
                store_bytes(&mut w.local, o, size, f(old) & m);
                Ok(old)
            }
            Target::Param(_) => {
                Err(EmuError::IllegalAddress(format!("atomic on the parameter space in kernel {} line {line}", self.ctx.prog.name)))
            }
        }
    }

    /// Reads a NUL-terminated string at a generic address (at most 4 KiB).
    fn cstr(&self, w: &mut Warp, addr: u64, lane: usize, line: u32) -> Result<Vec<u8>, EmuError> {
        let mut out = Vec::new();
        for i in 0..4096u64 {
            let b = self.load(w, Space::Generic, addr.wrapping_add(i), 1, lane, line)? as u8;
            if b == 0 {
                break;
            }
            out.push(b);
        }
        Ok(out)
    }
}

#[inline(always)]
fn sreg(ctx: &Ctx, cta: &Cta, w: &Warp, s: Sreg, lane: usize) -> u64 {
    let lin = w.id * 32 + lane as u32;
    let b = ctx.block;
    match s {
        Sreg::Tid(0) if b[1] == 1 && b[2] == 1 => lin as u64,
        Sreg::Tid(0) => (lin % b[0]) as u64,
        Sreg::Tid(1) => ((lin / b[0]) % b[1]) as u64,
        Sreg::Tid(_) => (lin / (b[0] * b[1])) as u64,
        Sreg::Ntid(c) => b[c as usize] as u64,
        Sreg::Ctaid(c) => cta.ctaid[c as usize] as u64,
        Sreg::Nctaid(c) => ctx.grid[c as usize] as u64,
        Sreg::LaneId => lane as u64,
        Sreg::WarpId => w.id as u64,
        Sreg::NWarpId => 64,
        Sreg::SmId => cta.sm as u64,
        Sreg::NSmId => NUM_SMS as u64,
        Sreg::GridId => 1,
        Sreg::Clock => (ctx.start.elapsed().as_nanos() as u64) & 0xffff_ffff,
        Sreg::Clock64 => ctx.start.elapsed().as_nanos() as u64,
        Sreg::GlobalTimer => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
        Sreg::DynSmem => ctx.dyn_smem as u64,
        Sreg::TotalSmem => ctx.shared_bytes as u64,
        Sreg::LanemaskEq => 1u64 << lane,
        Sreg::LanemaskLt => (1u64 << lane) - 1,
        Sreg::LanemaskLe => (1u64 << (lane + 1)) - 1,
        Sreg::LanemaskGt => (!((1u64 << (lane + 1)) - 1)) & 0xffff_ffff,
        Sreg::LanemaskGe => (!((1u64 << lane) - 1)) & 0xffff_ffff,
    }
}

macro_rules! each_lane {
    ($mask:expr, $l:ident, $body:block) => {{
        let mut __m: u32 = $mask;
        while __m != 0 {
            let $l = __m.trailing_zeros() as usize;
            __m &= __m - 1;
            $body
        }
    }};
}

fn comb(v: bool, c: Option<(BoolOp, PSrc)>, pv: u32, l: usize) -> bool {
    match c {
        None => v,
        Some((op, _)) => {
            let q = (pv >> l) & 1 != 0;
            match op {
                BoolOp::And => v && q,
                BoolOp::Or => v || q,
                BoolOp::Xor => v ^ q,
            }
        }
    }
}

fn run_warp(ctx: &Ctx, cta: &mut Cta, wi: usize) -> Result<WState, EmuError> {
    let (shared, warps) = (&mut cta.shared, &mut cta.warps);
    let w = &mut warps[wi];
    let red = &mut cta.red;
    let cta_ro = Cta { warps: Vec::new(), shared: Vec::new(), red: [0; 2], ctaid: cta.ctaid, sm: cta.sm };
    let mut mem = Mem { ctx, shared };
    let code = &ctx.prog.code[..];
    let cta_warps = ctx.nwarps;
    let mut budget: u32 = 0;
    let mut count: u64 = 0;
    macro_rules! v {
        ($s:expr, $l:expr) => {
            match $s {
                Src::R(r) => w.regs[r as usize * 32 + $l],
                Src::I(x) => x,
                Src::S(s) => sreg(ctx, &cta_ro, w, s, $l),
            }
        };
    }
    let result = loop {
        if w.pc == w.waiting_min {
            w.merge();
        }
        budget = budget.wrapping_add(1);
        if budget & 0x3fff == 0 {
            if ctx.abort.load(Ordering::Relaxed) {
                break Ok(WState::Done);
            }
            if Instant::now() > ctx.deadline {
                break Err(EmuError::Timeout(format!("kernel {} ran longer than {:?}", ctx.prog.name, ctx.watchdog)));
            }
            // time slice: let the CTA's other warps run (a warp may be spinning on a
            // flag that another warp of the CTA sets)
            if cta_warps > 1 {
                break Ok(WState::Run);
            }
        }
        let ins = &code[w.pc as usize];
        let mask = w.active & w.pval(ins.guard);
        count += mask.count_ones() as u64;
        match ins.op {
            Op::Mov { d, a } => {
                let av = gather(ctx, &cta_ro, w, a);
                scatter(w, d, &av, mask);
            }
            Op::Un { d, a, f } => each_lane!(mask, l, {
                w.regs[d as usize * 32 + l] = f(v!(a, l));
            }),
            Op::Bin { d, a, b, f, k } => {
                let (av, bv) = (gather(ctx, &cta_ro, w, a), gather(ctx, &cta_ro, w, b));
                let mut out = [0u64; 32];
                macro_rules! lanes2 {
                    (|$x:ident, $y:ident| $e:expr) => {
                        for l in 0..32 {
                            let ($x, $y) = (av[l], bv[l]);
                            out[l] = $e;
                        }
                    };
                }
                match k {
                    hot::ADD32 => lanes2!(|x, y| (x as u32).wrapping_add(y as u32) as u64),
                    hot::ADD64 => lanes2!(|x, y| x.wrapping_add(y)),
                    hot::SUB32 => lanes2!(|x, y| (x as u32).wrapping_sub(y as u32) as u64),
                    hot::MUL32 => lanes2!(|x, y| (x as u32).wrapping_mul(y as u32) as u64),
                    hot::MULWIDE_S32 => lanes2!(|x, y| ((x as u32 as i32 as i64) * (y as u32 as i32 as i64)) as u64),
                    hot::MULWIDE_U32 => lanes2!(|x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
                    hot::SHL32 => lanes2!(|x, y| if (y as u32) < 32 { (x << y) & 0xffff_ffff } else { 0 }),
                    hot::SHL64 => lanes2!(|x, y| if (y as u32) < 64 { x << y } else { 0 }),
                    hot::AND => lanes2!(|x, y| x & y),
                    hot::OR => lanes2!(|x, y| x | y),
                    hot::FADD32 => lanes2!(|x, y| (f32::from_bits(x as u32) + f32::from_bits(y as u32)).to_bits() as u64),
                    hot::FMUL32 => lanes2!(|x, y| (f32::from_bits(x as u32) * f32::from_bits(y as u32)).to_bits() as u64),
                    _ => lanes2!(|x, y| f(x, y)),
                }
                scatter(w, d, &out, mask);
            }
            Op::Tern { d, a, b, c, f, k } => {
                let (av, bv, cv) = (gather(ctx, &cta_ro, w, a), gather(ctx, &cta_ro, w, b), gather(ctx, &cta_ro, w, c));
                let mut out = [0u64; 32];
                match k {
                    hot::FFMA32 => {
                        for l in 0..32 {
                            let r = fma32(f32::from_bits(av[l] as u32), f32::from_bits(bv[l] as u32), f32::from_bits(cv[l] as u32));
                            out[l] = r.to_bits() as u64;
                        }
                    }
                    hot::MAD32 => {
                        for l in 0..32 {
                            out[l] = (av[l] as u32).wrapping_mul(bv[l] as u32).wrapping_add(cv[l] as u32) as u64;
                        }
                    }
                    _ => {
                        for l in 0..32 {
                            out[l] = f(av[l], bv[l], cv[l]);
                        }
                    }
                }
                scatter(w, d, &out, mask);
            }
            Op::Quad { d, a, b, c, e, f } => each_lane!(mask, l, {
                w.regs[d as usize * 32 + l] = f(v!(a, l), v!(b, l), v!(c, l), v!(e, l));
            }),
            Op::Cvt { d, a, s } => each_lane!(mask, l, {
                w.regs[d as usize * 32 + l] = ops::cvt(v!(a, l), &s);
            }),
            Op::Setp { p, q, a, b, f, comb: cb } => {
                let cv = cb.map(|(_, s)| w.pval(s)).unwrap_or(0);
                let (av, bv) = (gather(ctx, &cta_ro, w, a), gather(ctx, &cta_ro, w, b));
                let mut r = 0u32;
                for l in 0..32 {
                    r |= (f(av[l], bv[l]) as u32) << l;
                }
                let (pm, qm) = match cb {
                    None => (r & mask, !r & mask),
                    Some((BoolOp::And, _)) => (r & cv & mask, !r & cv & mask),
                    Some((BoolOp::Or, _)) => ((r | cv) & mask, (!r | cv) & mask),
                    Some((BoolOp::Xor, _)) => ((r ^ cv) & mask, (!r ^ cv) & mask),
                };
                if p != NOREG {
                    let o = &mut w.preds[p as usize];
                    *o = (*o & !mask) | pm;
                }
                if q != NOREG {
                    let o = &mut w.preds[q as usize];
                    *o = (*o & !mask) | qm;
                }
            }
            Op::Set { d, a, b, f, comb: cb, t } => {
                let cv = cb.map(|(_, s)| w.pval(s)).unwrap_or(0);
                each_lane!(mask, l, {
                    let r = comb(f(v!(a, l), v!(b, l)), cb, cv, l);
                    w.regs[d as usize * 32 + l] = if r { t } else { 0 };
                })
            }
            Op::Selp { d, a, b, p } => {
                let pv = w.pval(p);
                each_lane!(mask, l, {
                    w.regs[d as usize * 32 + l] = if (pv >> l) & 1 != 0 { v!(a, l) } else { v!(b, l) };
                })
            }
            Op::PLogic { d, a, b, op } => {
                let (x, y) = (w.pval(a), w.pval(b));
                let r = match op {
                    BoolOp::And => x & y,
                    BoolOp::Or => x | y,
                    BoolOp::Xor => x ^ y,
                };
                let o = &mut w.preds[d as usize];
                *o = (*o & !mask) | (r & mask);
            }
            Op::Ld { sp, d, n, size, sext, dbits, a } => {
                let dm = if dbits >= 64 { u64::MAX } else { (1u64 << dbits) - 1 };
                if sext == 0 && fast_load(w, &mem, sp, a, d, n, size, mask) {
                    w.pc += 1;
                    continue;
                }
                each_lane!(mask, l, {
                    let addr = eff(w, a, l);
                    if n > 1 && addr & (n as u64 * size as u64 - 1) != 0 {
                        return finish(
                            w,
                            count,
                            Err(EmuError::MisalignedAddress(format!(
                                "vector load at {addr:#x} in kernel {} line {}",
                                ctx.prog.name, ins.line
                            ))),
                        );
                    }
                    for (k, &dk) in d.iter().enumerate().take(n as usize) {
                        let mut x = match mem.load(w, sp, addr.wrapping_add((k as u64) * size as u64), size, l, ins.line) {
                            Ok(x) => x,
                            Err(e) => return finish(w, count, Err(e)),
                        };
                        if sext != 0 && sext < 64 {
                            x = ((((x << (64 - sext)) as i64) >> (64 - sext)) as u64) & dm;
                        }
                        w.regs[dk as usize * 32 + l] = x;
                    }
                })
            }
            Op::St { sp, s, n, size, a } => {
                if n == 1 && fast_store(w, &mut mem, sp, a, s[0], size, mask) {
                    w.pc += 1;
                    continue;
                }
                each_lane!(mask, l, {
                    let addr = eff(w, a, l);
                    if n > 1 && addr & (n as u64 * size as u64 - 1) != 0 {
                        return finish(
                            w,
                            count,
                            Err(EmuError::MisalignedAddress(format!(
                                "vector store at {addr:#x} in kernel {} line {}",
                                ctx.prog.name, ins.line
                            ))),
                        );
                    }
                    for (k, sv) in s.iter().enumerate().take(n as usize) {
                        let x = v!(*sv, l);
                        if let Err(e) = mem.store(w, sp, addr.wrapping_add((k as u64) * size as u64), size, x, l, ins.line) {
                            return finish(w, count, Err(e));
                        }
                    }
                })
            }
            Op::Atom { sp, d, a, b, c, size, f } => {
                each_lane!(mask, l, {
                    let addr = eff(w, a, l);
                    let (bv, cv) = (v!(b, l), v!(c, l));
                    match mem.atom(w, sp, addr, size, l, ins.line, |old| f(old, bv, cv)) {
                        Ok(old) => {
                            if d != NOREG {
                                w.regs[d as usize * 32 + l] = old;
                            }
                        }
                        Err(e) => return finish(w, count, Err(e)),
                    }
                })
            }
            Op::Bra { t } => {
                let nt = w.active & !mask;
                if nt == 0 {
                    if t <= w.waiting_min {
                        w.pc = t;
                    } else {
                        let act = w.active;
                        w.set_pcs(act, t);
                        w.reschedule();
                    }
                } else if mask == 0 {
                    w.pc += 1;
                } else {
                    w.set_pcs(mask, t);
                    w.set_pcs(nt, w.pc + 1);
                    w.reschedule();
                }
                continue;
            }
            Op::Exit => {
                w.live &= !mask;
                w.active &= !mask;
                if w.active == 0 {
                    if w.live == 0 {
                        break Ok(WState::Done);
                    }
                    if !w.reschedule() {
                        break Ok(WState::Barrier);
                    }
                    continue;
                }
            }
            Op::BarRed { mode, d, a } => {
                let pv = w.pval(a) & mask;
                red[0] += pv.count_ones();
                red[1] += mask.count_ones();
                w.red_pending = Some((mode, d, mask));
                w.blocked |= mask;
                w.set_pcs(mask, w.pc + 1);
                w.active &= !mask;
                if w.active == 0 {
                    if !w.reschedule() {
                        break Ok(WState::Barrier);
                    }
                    continue;
                }
            }
            Op::Bar => {
                w.blocked |= mask;
                w.set_pcs(mask, w.pc + 1);
                w.active &= !mask;
                if w.active == 0 {
                    if !w.reschedule() {
                        break Ok(WState::Barrier);
                    }
                    continue;
                }
            }
            Op::Trap => {
                if mask != 0 {
                    break Err(EmuError::Trap(format!("trap instruction in kernel {} line {}", ctx.prog.name, ins.line)));
                }
            }
            Op::Nop => {}
            Op::Shfl { mode, d, p, a, b, c } => {
                let mut vals = [0u64; 32];
                let mut ok = 0u32;
                each_lane!(mask, l, {
                    let bv = (v!(b, l) & 31) as i32;
                    let cv = v!(c, l) as u32;
                    let segmask = ((cv >> 8) & 31) as i32;
                    let clamp = (cv & 31) as i32;
                    let lane = l as i32;
                    let max_lane = (lane & segmask) | (clamp & !segmask);
                    let min_lane = lane & segmask;
                    let (j, pv) = match mode {
                        0 => {
                            let j = lane - bv;
                            (j, j >= max_lane)
                        }
                        1 => {
                            let j = lane + bv;
                            (j, j <= max_lane)
                        }
                        2 => {
                            let j = lane ^ bv;
                            (j, j <= max_lane)
                        }
                        _ => {
                            let j = min_lane | (bv & !segmask);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if pv { j } else { lane };
                    vals[l] = v!(a, j as usize);
                    if pv {
                        ok |= 1 << l;
                    }
                });
                each_lane!(mask, l, {
                    w.regs[d as usize * 32 + l] = vals[l] & 0xffff_ffff;
                });
                if p != NOREG {
                    let o = &mut w.preds[p as usize];
                    *o = (*o & !mask) | ok;
                }
            }
            Op::Vote { mode, d, a } => {
                let pv = w.pval(a) & mask;
                match mode {
                    0..=2 => {
                        let r = match mode {
                            0 => pv == mask,
                            1 => pv != 0,
                            _ => pv == 0 || pv == mask,
                        };
                        let o = &mut w.preds[d as usize];
                        *o = (*o & !mask) | if r { mask } else { 0 };
                    }
                    _ => each_lane!(mask, l, {
                        w.regs[d as usize * 32 + l] = pv as u64;
                    }),
                }
            }
            Op::Activemask { d } => {
                let act = w.active;
                each_lane!(mask, l, {
                    w.regs[d as usize * 32 + l] = act as u64;
                })
            }
            Op::Match { all, d, p, a } => {
                let mut vals = [0u64; 32];
                each_lane!(mask, l, {
                    vals[l] = v!(a, l);
                });
                let mut allsame = true;
                let first = vals[mask.trailing_zeros().min(31) as usize];
                each_lane!(mask, l, {
                    if vals[l] != first {
                        allsame = false;
                    }
                });
                each_lane!(mask, l, {
                    let r = if all {
                        if allsame {
                            mask
                        } else {
                            0
                        }
                    } else {
                        let mut m = 0u32;
                        each_lane!(mask, k, {
                            if vals[k] == vals[l] {
                                m |= 1 << k;
                            }
                        });
                        m
                    };
                    w.regs[d as usize * 32 + l] = r as u64;
                });
                if p != NOREG {
                    let o = &mut w.preds[p as usize];
                    *o = (*o & !mask) | if allsame { mask } else { 0 };
                }
            }
            Op::Carry { kind, d, a, b, c, w64, signed, set_cc } => {
                let bits = if w64 { 64 } else { 32 };
                let m: u128 = if w64 { u64::MAX as u128 } else { 0xffff_ffff };
                each_lane!(mask, l, {
                    let cf = (w.regs[CC_REG as usize * 32 + l] & 1) as u128;
                    let (x, y, z) = (v!(a, l) as u128 & m, v!(b, l) as u128 & m, v!(c, l) as u128 & m);
                    let prod = |x: u128, y: u128| -> u128 {
                        if signed {
                            let sx = ((x << (128 - bits)) as i128) >> (128 - bits);
                            let sy = ((y << (128 - bits)) as i128) >> (128 - bits);
                            sx.wrapping_mul(sy) as u128
                        } else {
                            x * y
                        }
                    };
                    let (r, co) = match kind {
                        0 | 1 => {
                            let s = x + y + if kind == 1 { cf } else { 0 };
                            (s & m, (s >> bits) & 1)
                        }
                        2 | 3 => {
                            let sub = y + if kind == 3 { cf } else { 0 };
                            (x.wrapping_sub(sub) & m, (x < sub) as u128)
                        }
                        _ => {
                            let p = prod(x, y);
                            let part = if kind & 1 == 1 { (p >> bits) & m } else { p & m };
                            let s = part + z + if kind >= 6 { cf } else { 0 };
                            (s & m, (s >> bits) & 1)
                        }
                    };
                    w.regs[d as usize * 32 + l] = r as u64;
                    if set_cc {
                        w.regs[CC_REG as usize * 32 + l] = co as u64;
                    }
                })
            }
            Op::Redux { d, a, f } => {
                let mut acc: Option<u64> = None;
                each_lane!(mask, l, {
                    let x = v!(a, l);
                    acc = Some(match acc {
                        None => x,
                        Some(y) => f(y, x),
                    });
                });
                let r = acc.unwrap_or(0);
                each_lane!(mask, l, {
                    w.regs[d as usize * 32 + l] = r;
                })
            }
            Op::Pack { d, s, n, w: width } => each_lane!(mask, l, {
                let mut r = 0u64;
                let m = if width >= 64 { u64::MAX } else { (1u64 << width) - 1 };
                for (k, sv) in s.iter().enumerate().take(n as usize) {
                    r |= (v!(*sv, l) & m).checked_shl(k as u32 * width as u32).unwrap_or(0);
                }
                w.regs[d as usize * 32 + l] = r;
            }),
            Op::Unpack { d, a, n, w: width } => each_lane!(mask, l, {
                let x = v!(a, l);
                let m = if width >= 64 { u64::MAX } else { (1u64 << width) - 1 };
                for (k, dr) in d.iter().enumerate().take(n as usize) {
                    w.regs[*dr as usize * 32 + l] = x.checked_shr(k as u32 * width as u32).unwrap_or(0) & m;
                }
            }),
            Op::Printf { ret, fmt, args } => {
                each_lane!(mask, l, {
                    if let Err(e) = do_printf(ctx, &mut mem, w, l, ret, fmt, args, ins.line) {
                        return finish(w, count, Err(e));
                    }
                })
            }
            Op::AssertFail { msg, file, line, func } => {
                if mask != 0 {
                    let l = mask.trailing_zeros() as usize;
                    let (m, f, ln, fun) = assert_message(&mut mem, w, l, msg, file, line, func, ins.line);
                    let c = cta_ro.ctaid;
                    let t: Vec<u64> = (0..3).map(|i| sreg(ctx, &cta_ro, w, Sreg::Tid(i), l)).collect();
                    let text = format!(
                        "{f}:{ln}: {fun}: block: [{},{},{}], thread: [{},{},{}] Assertion `{m}` failed.\n",
                        c[0], c[1], c[2], t[0], t[1], t[2]
                    );
                    append_printf(ctx, text.as_bytes());
                    break Err(
                        EmuError::Trap(format!("assertion failed in kernel {}: `{m}` at {f}:{ln} in {fun}", ctx.prog.name)).into_assert()
                    );
                }
            }
        }
        w.pc += 1;
    };
    finish(w, count, result)
}

/// Finds the allocation holding `[addr, addr+size)` through the warp's small cache.
#[inline(always)]
fn cached<'c>(
    cache: &'c mut [Option<Arc<Allocation>>; 4],
    next: &mut usize,
    mem: &DeviceMemory,
    addr: u64,
    size: u64,
) -> Option<&'c Allocation> {
    let mut hit = usize::MAX;
    for (i, c) in cache.iter().enumerate() {
        if matches!(c, Some(a) if a.contains(addr, size)) {
            hit = i;
            break;
        }
    }
    if hit == usize::MAX {
        let a = mem.find(addr)?;
        if !a.contains(addr, size) {
            return None;
        }
        hit = *next;
        cache[hit] = Some(a);
        *next = (hit + 1) % cache.len();
    }
    cache[hit].as_deref()
}

/// Scalar loads from shared or global memory without faults: the common case, done
/// without per-lane dispatch. Returns false (having changed nothing that matters) when
/// the slow path must run, e.g. to report a fault.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fast_load(w: &mut Warp, mem: &Mem, sp: Space, a: Addr, d: [u32; 4], n: u8, size: u8, mask: u32) -> bool {
    let Warp { regs, cache, cache_next, .. } = w;
    let n = n as usize;
    let sz = size as u64;
    let span = sz * n as u64;
    // results go to a scratch array first: a destination may be the address register,
    // and the slow path re-runs every lane if one faults
    let mut tmp = [[0u64; 32]; 4];
    let mut ok = true;
    macro_rules! bytes_space {
        ($buf:expr) => {{
            let buf: &[u8] = $buf;
            each_lane!(mask, l, {
                let addr = match a.base {
                    Some(r) => regs[r as usize * 32 + l],
                    None => 0,
                }
                .wrapping_add(a.off as u64);
                if addr & (span - 1) != 0 || addr.saturating_add(span) > buf.len() as u64 {
                    ok = false;
                    break;
                }
                for (k, t) in tmp.iter_mut().enumerate().take(n) {
                    t[l] = load_bytes(buf, (addr + k as u64 * sz) as usize, size);
                }
            });
        }};
    }
    match sp {
        Space::Shared => bytes_space!(&*mem.shared),
        Space::KParam => bytes_space!(mem.ctx.params),
        Space::Global => {
            each_lane!(mask, l, {
                let addr = match a.base {
                    Some(r) => regs[r as usize * 32 + l],
                    None => 0,
                }
                .wrapping_add(a.off as u64);
                if addr & (span - 1) != 0 {
                    ok = false;
                    break;
                }
                match cached(cache, cache_next, mem.ctx.mem, addr, span) {
                    Some(al) => {
                        for (k, t) in tmp.iter_mut().enumerate().take(n) {
                            t[l] = al.load(addr + k as u64 * sz - al.base, size as u32);
                        }
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            });
        }
        _ => ok = false,
    }
    if ok {
        for (k, t) in tmp.iter().enumerate().take(n) {
            let dk = d[k] as usize * 32;
            each_lane!(mask, l, {
                regs[dk + l] = t[l];
            });
        }
    }
    ok
}

/// Scalar stores to shared or global memory; false when the slow path must run (a
/// fault). Lanes stored before the fault are stored again by the slow path (same values).
#[inline(always)]
fn fast_store(w: &mut Warp, mem: &mut Mem, sp: Space, a: Addr, s: Src, size: u8, mask: u32) -> bool {
    if matches!(s, Src::S(_)) {
        return false;
    }
    let Warp { regs, cache, cache_next, .. } = w;
    let sz = size as u64;
    let val = |regs: &[u64], l: usize| match s {
        Src::R(r) => regs[r as usize * 32 + l],
        Src::I(x) => x,
        Src::S(_) => 0,
    };
    match sp {
        Space::Shared => {
            let len = mem.shared.len() as u64;
            let mut ok = true;
            each_lane!(mask, l, {
                let addr = match a.base {
                    Some(r) => regs[r as usize * 32 + l],
                    None => 0,
                }
                .wrapping_add(a.off as u64);
                if addr & (sz - 1) != 0 || addr.saturating_add(sz) > len {
                    ok = false;
                    break;
                }
                store_bytes(mem.shared, addr as usize, size, val(regs, l));
            });
            ok
        }
        Space::Global => {
            let mut ok = true;
            each_lane!(mask, l, {
                let addr = match a.base {
                    Some(r) => regs[r as usize * 32 + l],
                    None => 0,
                }
                .wrapping_add(a.off as u64);
                if addr & (sz - 1) != 0 {
                    ok = false;
                    break;
                }
                match cached(cache, cache_next, mem.ctx.mem, addr, sz) {
                    Some(al) => al.store(addr - al.base, size as u32, val(regs, l)),
                    None => {
                        ok = false;
                        break;
                    }
                }
            });
            ok
        }
        _ => false,
    }
}

/// An operand's value in all 32 lanes.
#[inline(always)]
fn gather(ctx: &Ctx, cta: &Cta, w: &Warp, s: Src) -> [u64; 32] {
    match s {
        Src::R(r) => {
            let r = r as usize * 32;
            w.regs[r..r + 32].try_into().expect("32 lanes")
        }
        Src::I(x) => [x; 32],
        Src::S(sr) => std::array::from_fn(|l| sreg(ctx, cta, w, sr, l)),
    }
}

/// Writes the lanes of `mask` of register `d`.
#[inline(always)]
fn scatter(w: &mut Warp, d: u32, out: &[u64; 32], mask: u32) {
    let d = d as usize * 32;
    let dst = &mut w.regs[d..d + 32];
    if mask == u32::MAX {
        dst.copy_from_slice(out);
    } else {
        each_lane!(mask, l, {
            dst[l] = out[l];
        });
    }
}

/// Fused multiply-add with one rounding (the hardware instruction where the build
/// enables it, libm's exact fmaf otherwise).
#[inline(always)]
fn fma32(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

#[inline(always)]
fn eff(w: &Warp, a: Addr, l: usize) -> u64 {
    match a.base {
        Some(r) => w.regs[r as usize * 32 + l],
        None => 0,
    }
    .wrapping_add(a.off as u64)
}

fn finish(w: &mut Warp, count: u64, r: Result<WState, EmuError>) -> Result<WState, EmuError> {
    w.count += count;
    r
}

trait IntoAssert {
    fn into_assert(self) -> EmuError;
}
impl IntoAssert for EmuError {
    fn into_assert(self) -> EmuError {
        match self {
            EmuError::Trap(m) => EmuError::Trap(format!("assert: {m}")),
            e => e,
        }
    }
}

fn frame_u64(w: &Warp, ctx: &Ctx, lane: usize, off: u32) -> u64 {
    let lb = ctx.prog.local_bytes as usize;
    let o = lane * lb + off as usize;
    if off == NOREG || o + 8 > w.local.len() {
        return 0;
    }
    load_bytes(&w.local, o, 8)
}

#[allow(clippy::too_many_arguments)]
fn assert_message(
    mem: &mut Mem,
    w: &mut Warp,
    l: usize,
    msg: u32,
    file: u32,
    line: u32,
    func: u32,
    pl: u32,
) -> (String, String, u32, String) {
    let ctx = mem.ctx;
    let s = |mem: &mut Mem, w: &mut Warp, off: u32| -> String {
        let p = frame_u64(w, ctx, l, off);
        mem.cstr(w, p, l, pl).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
    };
    let m = s(mem, w, msg);
    let f = s(mem, w, file);
    let fun = s(mem, w, func);
    let ln = frame_u64(w, ctx, l, line) as u32;
    (m, f, ln, fun)
}

fn append_printf(ctx: &Ctx, text: &[u8]) {
    let mut buf = ctx.printf.lock().unwrap_or_else(|e| e.into_inner());
    let room = MAX_PRINTF_BYTES.saturating_sub(buf.len());
    buf.extend_from_slice(&text[..text.len().min(room)]);
}

#[allow(clippy::too_many_arguments)]
fn do_printf(ctx: &Ctx, mem: &mut Mem, w: &mut Warp, l: usize, ret: u32, fmt: u32, args: u32, line: u32) -> Result<(), EmuError> {
    let fp = frame_u64(w, ctx, l, fmt);
    let ap = frame_u64(w, ctx, l, args);
    let f = mem.cstr(w, fp, l, line)?;
    let mut out = Vec::new();
    let mut argoff = 0u64;
    let mut i = 0;
    let mut nargs = 0u64;
    while i < f.len() {
        let c = f[i];
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        if i < f.len() && f[i] == b'%' {
            out.push(b'%');
            i += 1;
            continue;
        }
        let start = i;
        while i < f.len() && b"-+ #0".contains(&f[i]) {
            i += 1;
        }
        while i < f.len() && (f[i].is_ascii_digit() || f[i] == b'.' || f[i] == b'*') {
            i += 1;
        }
        let flags_end = i;
        let mut long = 0;
        while i < f.len() && b"hlLqjzt".contains(&f[i]) {
            if f[i] == b'l' || f[i] == b'L' || f[i] == b'q' || f[i] == b'j' || f[i] == b'z' || f[i] == b't' {
                long += 1;
            }
            i += 1;
        }
        if i >= f.len() {
            break;
        }
        let conv = f[i];
        i += 1;
        let spec = std::str::from_utf8(&f[start..flags_end]).unwrap_or("");
        let size: u64 = match conv {
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A' => 8,
            b's' | b'p' => 8,
            _ => {
                if long > 0 {
                    8
                } else {
                    4
                }
            }
        };
        argoff = argoff.div_ceil(size) * size;
        let raw = if ap == 0 { 0 } else { mem.load(w, Space::Generic, ap.wrapping_add(argoff), size as u8, l, line)? };
        argoff += size;
        nargs += 1;
        let text = match conv {
            b'd' | b'i' => {
                let v = if size == 8 { raw as i64 } else { raw as u32 as i32 as i64 };
                fmt_num(spec, v.to_string(), v < 0)
            }
            b'u' => fmt_num(spec, raw.to_string(), false),
            b'x' => fmt_num(spec, format!("{raw:x}"), false),
            b'X' => fmt_num(spec, format!("{raw:X}"), false),
            b'o' => fmt_num(spec, format!("{raw:o}"), false),
            b'c' => ((raw as u8) as char).to_string(),
            b'p' => format!("0x{raw:x}"),
            b's' => {
                let s = if raw == 0 { b"(null)".to_vec() } else { mem.cstr(w, raw, l, line)? };
                pad(spec, String::from_utf8_lossy(&s).into_owned())
            }
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A' => fmt_float(spec, conv, f64::from_bits(raw)),
            _ => String::new(),
        };
        out.extend_from_slice(text.as_bytes());
    }
    if ret != NOREG {
        let lb = ctx.prog.local_bytes as usize;
        let o = l * lb + ret as usize;
        if o + 4 <= w.local.len() {
            store_bytes(&mut w.local, o, 4, nargs);
        }
    }
    append_printf(ctx, &out);
    Ok(())
}

/// Widths and precisions of device printf are capped (a real GPU's printf buffer is small).
const MAX_PRINTF_FIELD: usize = 512;
/// Device printf text kept per launch (CUDA's default printf FIFO is 1 MiB).
pub const MAX_PRINTF_BYTES: usize = 1 << 20;

fn parse_spec(spec: &str) -> (bool, bool, bool, usize, Option<usize>) {
    let mut left = false;
    let mut zero = false;
    let mut plus = false;
    let mut rest = spec;
    while let Some(c) = rest.chars().next() {
        match c {
            '-' => left = true,
            '0' => zero = true,
            '+' => plus = true,
            ' ' | '#' => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    let (w, p) = match rest.split_once('.') {
        Some((w, p)) => (w, Some(p.parse::<usize>().unwrap_or(0).min(MAX_PRINTF_FIELD))),
        None => (rest, None),
    };
    (left, zero, plus, w.parse::<usize>().unwrap_or(0).min(MAX_PRINTF_FIELD), p)
}

fn pad(spec: &str, s: String) -> String {
    let (left, _, _, width, _) = parse_spec(spec);
    if s.len() >= width {
        s
    } else if left {
        format!("{s:<width$}")
    } else {
        format!("{s:>width$}")
    }
}

fn fmt_num(spec: &str, digits: String, neg: bool) -> String {
    let (left, zero, plus, width, _) = parse_spec(spec);
    let (sign, body) = if neg {
        ("-", digits[1..].to_string())
    } else if plus {
        ("+", digits)
    } else {
        ("", digits)
    };
    let len = sign.len() + body.len();
    if len >= width {
        format!("{sign}{body}")
    } else if left {
        format!("{sign}{body}{}", " ".repeat(width - len))
    } else if zero {
        format!("{sign}{}{body}", "0".repeat(width - len))
    } else {
        format!("{}{sign}{body}", " ".repeat(width - len))
    }
}

fn fmt_float(spec: &str, conv: u8, v: f64) -> String {
    let (left, zero, plus, width, prec) = parse_spec(spec);
    let p = prec.unwrap_or(6);
    let mut s = if v.is_nan() {
        "nan".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        match conv {
            b'e' | b'E' => c_exp(v, p),
            b'g' | b'G' => {
                let p = if p == 0 { 1 } else { p };
                let exp = if v == 0.0 { 0 } else { v.abs().log10().floor() as i32 };
                let mut s =
                    if exp < -4 || exp >= p as i32 { c_exp(v, p - 1) } else { format!("{:.*}", (p as i32 - 1 - exp).max(0) as usize, v) };
                if !spec.contains('#') {
                    if let Some(epos) = s.find('e') {
                        let (m, e) = s.split_at(epos);
                        let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
                        s = format!("{m}{e}");
                    } else if s.contains('.') {
                        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
                    }
                }
                s
            }
            _ => format!("{v:.p$}"),
        }
    };
    if conv.is_ascii_uppercase() {
        s = s.to_uppercase();
    }
    if plus && !s.starts_with('-') {
        s = format!("+{s}");
    }
    if s.len() < width {
        if left {
            s = format!("{s:<width$}");
        } else if zero && v.is_finite() {
            let (sign, body) = if s.starts_with('-') || s.starts_with('+') { s.split_at(1) } else { ("", s.as_str()) };
            s = format!("{sign}{}{body}", "0".repeat(width - s.len()));
        } else {
            s = format!("{s:>width$}");
        }
    }
    s
}

fn c_exp(v: f64, p: usize) -> String {
    let s = format!("{v:.p$e}");
    // Rust prints 1.5e3; C prints 1.5e+03
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = if let Some(d) = e.strip_prefix('-') { ('-', d) } else { ('+', e) };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}
