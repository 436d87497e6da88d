//! The emulated GPU backend: N devices that keep real memory contents and run real PTX on the
//! CPU (the `cuwire-emu` crate). Each context has its own device address space, as on a GPU,
//! so one context's kernels cannot reach another's memory; a device's capacity is shared by its
//! contexts.
//!
//! Work is executed in the order it arrives, at once: a serial schedule is a valid schedule
//! for every stream, so streams and events need no queues here (events record the time their
//! point was reached, streams are always idle when asked).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cuwire_emu::{DeviceMemory, EmuError, ExecOptions, LaunchConfig, Module};
use cuwire_protocol::handshake::DeviceInfo;
use cuwire_protocol::{cuda, CuError, CuResult, DevPtr, FuncAttrs, FunctionInfo, LaunchDims, ParamInfo};
use parking_lot::Mutex;

use super::{Backend, Id, LoadedModule, DEFAULT_STREAM};

/// How the emulated devices look.
#[derive(Debug, Clone)]
pub struct EmuConfig {
    /// Memory of each device (one entry per device).
    pub memories: Vec<u64>,
    pub compute_capability: (i32, i32),
    pub worker_threads: usize,
    pub watchdog: Duration,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig { memories: vec![4 << 30], compute_capability: (8, 0), worker_threads: 0, watchdog: Duration::from_secs(10) }
    }
}

fn err(e: EmuError) -> CuError {
    CuError(e.cuda_code())
}

struct Ctx {
    dev: usize,
    mem: Arc<DeviceMemory>,
    state: Mutex<CtxState>,
}

#[derive(Default)]
struct CtxState {
    streams: HashSet<Id>,
    events: HashMap<Id, Option<Instant>>,
    modules: HashMap<Id, Arc<Module>>,
    functions: HashMap<Id, (Arc<Module>, String)>,
    output: Vec<u8>,
}

pub struct EmuBackend {
    cfg: EmuConfig,
    contexts: Mutex<HashMap<Id, Arc<Ctx>>>,
    /// Serialises allocation across a device's contexts so the capacity holds exactly.
    alloc_lock: Vec<Mutex<()>>,
    next_id: AtomicU64,
    opts: ExecOptions,
}

impl EmuBackend {
    pub fn new(cfg: EmuConfig) -> Self {
        let opts = ExecOptions { worker_threads: cfg.worker_threads, watchdog: cfg.watchdog };
        EmuBackend {
            alloc_lock: (0..cfg.memories.len()).map(|_| Mutex::new(())).collect(),
            cfg,
            contexts: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            opts,
        }
    }

    fn id(&self) -> Id {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn ctx(&self, ctx: Id) -> CuResult<Arc<Ctx>> {
        self.contexts.lock().get(&ctx).cloned().ok_or(CuError::INVALID_CONTEXT)
    }

    fn device_used(&self, dev: usize) -> u64 {
        self.contexts.lock().values().filter(|c| c.dev == dev).map(|c| c.mem.used()).sum()
    }

    fn check_stream(c: &Ctx, stream: Id) -> CuResult<()> {
        if stream == DEFAULT_STREAM || c.state.lock().streams.contains(&stream) {
            Ok(())
        } else {
            Err(CuError::INVALID_HANDLE)
        }
    }

    fn check_dev(&self, dev: usize) -> CuResult<()> {
        if dev < self.cfg.memories.len() {
            Ok(())
        } else {
            Err(CuError::INVALID_DEVICE)
        }
    }
}

/// Attribute values of the emulated device: an A100-like part (compute capability 8.0 unless
/// configured otherwise). Anything not listed is 0.
fn attribute_table(cc: (i32, i32)) -> Vec<(&'static str, i32)> {
    vec![
        ("MAX_THREADS_PER_BLOCK", 1024),
        ("MAX_BLOCK_DIM_X", 1024),
        ("MAX_BLOCK_DIM_Y", 1024),
        ("MAX_BLOCK_DIM_Z", 64),
        ("MAX_GRID_DIM_X", i32::MAX),
        ("MAX_GRID_DIM_Y", 65535),
        ("MAX_GRID_DIM_Z", 65535),
        ("MAX_SHARED_MEMORY_PER_BLOCK", 48 * 1024),
        ("TOTAL_CONSTANT_MEMORY", 64 * 1024),
        ("WARP_SIZE", 32),
        ("MAX_PITCH", i32::MAX),
        ("MAX_REGISTERS_PER_BLOCK", 65536),
        ("CLOCK_RATE", 1_410_000),
        ("TEXTURE_ALIGNMENT", 512),
        ("GPU_OVERLAP", 1),
        ("MULTIPROCESSOR_COUNT", cuwire_emu::exec::NUM_SMS as i32),
        ("KERNEL_EXEC_TIMEOUT", 0),
        ("INTEGRATED", 0),
        ("CAN_MAP_HOST_MEMORY", 0),
        ("COMPUTE_MODE", 0),
        ("SURFACE_ALIGNMENT", 512),
        ("CONCURRENT_KERNELS", 1),
        ("ECC_ENABLED", 0),
        ("PCI_BUS_ID", 0),
        ("PCI_DEVICE_ID", 0),
        ("TCC_DRIVER", 0),
        ("MEMORY_CLOCK_RATE", 1_215_000),
        ("GLOBAL_MEMORY_BUS_WIDTH", 5120),
        ("L2_CACHE_SIZE", 40 * 1024 * 1024),
        ("MAX_THREADS_PER_MULTIPROCESSOR", 2048),
        ("ASYNC_ENGINE_COUNT", 2),
        ("UNIFIED_ADDRESSING", 1),
        ("PCI_DOMAIN_ID", 0),
        ("TEXTURE_PITCH_ALIGNMENT", 32),
        ("COMPUTE_CAPABILITY_MAJOR", cc.0),
        ("COMPUTE_CAPABILITY_MINOR", cc.1),
        ("STREAM_PRIORITIES_SUPPORTED", 1),
        ("GLOBAL_L1_CACHE_SUPPORTED", 1),
        ("LOCAL_L1_CACHE_SUPPORTED", 1),
        ("MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", 164 * 1024),
        ("MAX_REGISTERS_PER_MULTIPROCESSOR", 65536),
        ("MANAGED_MEMORY", 0),
        ("MULTI_GPU_BOARD", 0),
        ("MULTI_GPU_BOARD_GROUP_ID", 0),
        ("SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO", 2),
        ("PAGEABLE_MEMORY_ACCESS", 0),
        ("CONCURRENT_MANAGED_ACCESS", 0),
        ("COMPUTE_PREEMPTION_SUPPORTED", 1),
        ("CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM", 0),
        ("COOPERATIVE_LAUNCH", 0),
        ("MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", 163 * 1024),
        ("MAX_BLOCKS_PER_MULTIPROCESSOR", 32),
        ("MAX_PERSISTING_L2_CACHE_SIZE", 0),
        ("MAX_ACCESS_POLICY_WINDOW_SIZE", 0),
        ("RESERVED_SHARED_MEMORY_PER_BLOCK", 1024),
        ("READ_ONLY_HOST_REGISTER_SUPPORTED", 0),
        // Stream-ordered allocation (cuMemAllocAsync, pools) is answered by the session.
        ("MEMORY_POOLS_SUPPORTED", 1),
        ("DMA_BUF_SUPPORTED", 0),
        ("HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED", 0),
        ("VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED", 0),
        ("IPC_EVENT_SUPPORTED", 0),
        ("CLUSTER_LAUNCH", 0),
        ("DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED", 0),
        ("NUMA_CONFIG", 0),
        ("NUMA_ID", -1),
        ("HOST_NUMA_ID", -1),
    ]
}

impl Backend for EmuBackend {
    fn kind(&self) -> &'static str {
        "emu"
    }

    fn device_work_finishes_in_call(&self) -> bool {
        true
    }

    fn driver_version(&self) -> i32 {
        12090
    }

    fn device_count(&self) -> usize {
        self.cfg.memories.len()
    }

    fn device_info(&self, dev: usize) -> DeviceInfo {
        let (ma, mi) = self.cfg.compute_capability;
        // Several cuda.h names share a number (deprecated aliases): a value set under any of
        // them counts, and every number appears once.
        let table = attribute_table(self.cfg.compute_capability);
        let mut values: std::collections::BTreeMap<i32, i32> = std::collections::BTreeMap::new();
        for (num, name) in cuda::DEVICE_ATTRIBUTES {
            let short = name.trim_start_matches("CU_DEVICE_ATTRIBUTE_");
            let value = match short {
                // The same place as the bus id string below: domain 0, bus dev + 1, device 0.
                "PCI_BUS_ID" => Some(dev as i32 + 1),
                _ => table.iter().find(|(n, _)| *n == short).map(|(_, v)| *v),
            };
            let slot = values.entry(*num).or_insert(0);
            if let Some(v) = value {
                *slot = v;
            }
        }
        let attributes: Vec<(i32, i32)> = values.into_iter().collect();
        let mut uuid = *b"cuwire-emu-gpu\0\0";
        uuid[15] = dev as u8;
        DeviceInfo {
            name: format!("cuwire emulated GPU {dev} (sm_{ma}{mi}, PTX on CPU)"),
            uuid,
            total_mem: self.cfg.memories[dev],
            attributes,
            pci_bus_id: format!("0000:{:02x}:00.0", dev + 1),
        }
    }

    fn device_attribute(&self, dev: usize, attrib: i32) -> CuResult<i32> {
        self.check_dev(dev)?;
        self.device_info(dev).attributes.iter().find(|(a, _)| *a == attrib).map(|(_, v)| *v).ok_or(CuError::INVALID_VALUE)
    }

    fn mem_info(&self, dev: usize) -> CuResult<(u64, u64)> {
        self.check_dev(dev)?;
        let used = self.device_used(dev);
        let total = self.cfg.memories[dev];
        Ok((total.saturating_sub(used), total))
    }

    fn ctx_create(&self, dev: usize, _flags: u32) -> CuResult<Id> {
        self.check_dev(dev)?;
        let id = self.id();
        // Each context its own address space, in a window of its own (the lowest free one), so
        // addresses are also unique among live contexts.
        let window = self.cfg.memories[dev].next_power_of_two().max(1 << 36);
        let mut contexts = self.contexts.lock();
        let used: HashSet<u64> = contexts.values().map(|c| c.mem.base()).collect();
        let base = (1u64..)
            .map(|slot| 0x1000_0000_0000u64.checked_add(slot.checked_mul(window)?))
            .take_while(|b| b.is_some_and(|b| b < 0x7000_0000_0000 || window > 1 << 36))
            .flatten()
            .find(|b| !used.contains(b))
            .ok_or(CuError::OUT_OF_MEMORY)?;
        let mem = Arc::new(DeviceMemory::new(base, self.cfg.memories[dev]));
        contexts.insert(id, Arc::new(Ctx { dev, mem, state: Mutex::default() }));
        Ok(id)
    }

    fn ctx_destroy(&self, ctx: Id) -> CuResult<()> {
        // Dropping the context drops its memory: nothing of it can reach a later allocation.
        self.contexts.lock().remove(&ctx).map(|_| ()).ok_or(CuError::INVALID_CONTEXT)
    }

    fn ctx_synchronize(&self, ctx: Id) -> CuResult<()> {
        self.ctx(ctx).map(|_| ())
    }

    fn mem_alloc(&self, ctx: Id, bytes: u64) -> CuResult<DevPtr> {
        let c = self.ctx(ctx)?;
        if bytes == 0 {
            return Err(CuError::INVALID_VALUE);
        }
        let _guard = self.alloc_lock[c.dev].lock();
        if self.device_used(c.dev).saturating_add(bytes) > self.cfg.memories[c.dev] {
            return Err(CuError::OUT_OF_MEMORY);
        }
        c.mem.alloc(bytes).map_err(err)
    }

    fn mem_free(&self, ctx: Id, ptr: DevPtr) -> CuResult<()> {
        self.ctx(ctx)?.mem.free(ptr).map(|_| ()).map_err(err)
    }

    fn memcpy_htod(&self, ctx: Id, stream: Id, dst: DevPtr, data: Bytes) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)?;
        c.mem.write(dst, &data).map_err(err)
    }

    fn memcpy_dtoh(&self, ctx: Id, stream: Id, src: DevPtr, bytes: u64) -> CuResult<Bytes> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)?;
        c.mem.check_range(src, bytes).map_err(err)?;
        let len = usize::try_from(bytes).map_err(|_| CuError::INVALID_VALUE)?;
        // `read` writes every byte of the range (zeros where nothing was stored).
        super::staging::reply(len, |out| c.mem.read(src, out).map_err(err))
    }

    fn memcpy_dtod(&self, ctx: Id, stream: Id, dst: DevPtr, src: DevPtr, bytes: u64) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)?;
        c.mem.copy(dst, src, bytes).map_err(err)
    }

    fn memset(&self, ctx: Id, stream: Id, dst: DevPtr, value: u32, elem_size: u8, count: u64) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)?;
        let bytes = value.to_le_bytes();
        let pattern = match elem_size {
            1 | 2 | 4 => &bytes[..elem_size as usize],
            _ => return Err(CuError::INVALID_VALUE),
        };
        c.mem.fill(dst, pattern, count).map_err(err)
    }

    fn stream_create(&self, ctx: Id, _flags: u32, _priority: i32) -> CuResult<Id> {
        let c = self.ctx(ctx)?;
        let id = self.id();
        c.state.lock().streams.insert(id);
        Ok(id)
    }

    fn stream_destroy(&self, ctx: Id, stream: Id) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        if c.state.lock().streams.remove(&stream) {
            Ok(())
        } else {
            Err(CuError::INVALID_HANDLE)
        }
    }

    fn stream_synchronize(&self, ctx: Id, stream: Id) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)
    }

    fn stream_query(&self, ctx: Id, stream: Id) -> CuResult<bool> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream).map(|_| true)
    }

    fn stream_wait_event(&self, ctx: Id, stream: Id, event: Id, _flags: u32) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)?;
        if c.state.lock().events.contains_key(&event) {
            Ok(())
        } else {
            Err(CuError::INVALID_HANDLE)
        }
    }

    fn event_create(&self, ctx: Id, _flags: u32) -> CuResult<Id> {
        let c = self.ctx(ctx)?;
        let id = self.id();
        c.state.lock().events.insert(id, None);
        Ok(id)
    }

    fn event_destroy(&self, ctx: Id, event: Id) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        let removed = c.state.lock().events.remove(&event);
        removed.map(|_| ()).ok_or(CuError::INVALID_HANDLE)
    }

    fn event_record(&self, ctx: Id, event: Id, stream: Id) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)?;
        let mut state = c.state.lock();
        match state.events.get_mut(&event) {
            Some(t) => {
                *t = Some(Instant::now());
                Ok(())
            }
            None => Err(CuError::INVALID_HANDLE),
        }
    }

    fn event_synchronize(&self, ctx: Id, event: Id) -> CuResult<()> {
        self.event_query(ctx, event).map(|_| ())
    }

    fn event_query(&self, ctx: Id, event: Id) -> CuResult<bool> {
        let c = self.ctx(ctx)?;
        let state = c.state.lock();
        state.events.get(&event).map(|_| true).ok_or(CuError::INVALID_HANDLE)
    }

    fn event_elapsed(&self, ctx: Id, start: Id, end: Id) -> CuResult<f32> {
        let c = self.ctx(ctx)?;
        let state = c.state.lock();
        let s = state.events.get(&start).ok_or(CuError::INVALID_HANDLE)?;
        let e = state.events.get(&end).ok_or(CuError::INVALID_HANDLE)?;
        match (s, e) {
            (Some(s), Some(e)) => {
                let ms = if e >= s { e.duration_since(*s).as_secs_f64() * 1e3 } else { -(s.duration_since(*e).as_secs_f64() * 1e3) };
                Ok(ms as f32)
            }
            // An event never recorded: the driver's answer.
            _ => Err(CuError(cuda::CUDA_ERROR_INVALID_HANDLE)),
        }
    }

    fn module_load_explained(&self, ctx: Id, image: &[u8]) -> Result<LoadedModule, (CuError, String)> {
        let c = self.ctx(ctx).map_err(|e| (e, String::new()))?;
        let before = c.mem.used();
        // A fatbinary: run the PTX the driver would choose for this device's architecture.
        let ptx;
        let image = if crate::fatbin::is_fatbin(image) {
            let (ma, mi) = self.cfg.compute_capability;
            let (_, text) = crate::fatbin::best_ptx(image, (ma * 10 + mi) as u32).map_err(|e| {
                tracing::info!(error = %e, "module load refused");
                let text = format!("emulated GPU: {e}");
                let code = match e {
                    crate::fatbin::FatbinError::NoPtx { .. } | crate::fatbin::FatbinError::Unsupported(_) => {
                        CuError(cuda::CUDA_ERROR_NO_BINARY_FOR_GPU)
                    }
                    _ => CuError::INVALID_IMAGE,
                };
                (code, text)
            })?;
            ptx = text;
            &ptx[..]
        } else {
            image
        };
        let module = Module::load(image, &c.mem).map_err(|e| {
            tracing::info!(error = %e, "module load refused");
            (err(e.clone()), format!("emulated GPU: {e}"))
        })?;
        let functions = module
            .kernel_names()
            .into_iter()
            .filter_map(|name| module.kernel(&name).cloned())
            .map(|k| FunctionInfo {
                name: k.name.clone(),
                params: k.params.iter().map(|p| ParamInfo { offset: p.offset, size: p.size }).collect(),
                attrs: FuncAttrs {
                    max_threads_per_block: k.attrs.max_threads_per_block,
                    shared_size_bytes: k.attrs.shared_size_bytes,
                    const_size_bytes: k.attrs.const_size_bytes,
                    local_size_bytes: k.attrs.local_size_bytes,
                    num_regs: k.attrs.num_regs,
                    ptx_version: k.attrs.ptx_version,
                    binary_version: k.attrs.binary_version,
                },
            })
            .collect();
        let id = self.id();
        c.state.lock().modules.insert(id, Arc::new(module));
        let global_bytes = c.mem.used().saturating_sub(before);
        Ok(LoadedModule { id, functions, global_bytes })
    }

    fn module_unload(&self, ctx: Id, module: Id) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        let mut state = c.state.lock();
        let m = state.modules.remove(&module).ok_or(CuError::INVALID_HANDLE)?;
        state.functions.retain(|_, (fm, _)| !Arc::ptr_eq(fm, &m));
        m.unload(&c.mem);
        Ok(())
    }

    fn module_function(&self, ctx: Id, module: Id, name: &str) -> CuResult<Id> {
        let c = self.ctx(ctx)?;
        let mut state = c.state.lock();
        let m = state.modules.get(&module).cloned().ok_or(CuError::INVALID_HANDLE)?;
        if m.kernel(name).is_none() {
            return Err(CuError::NOT_FOUND);
        }
        let id = self.id();
        state.functions.insert(id, (m, name.to_owned()));
        Ok(id)
    }

    fn module_global(&self, ctx: Id, module: Id, name: &str) -> CuResult<(DevPtr, u64)> {
        let c = self.ctx(ctx)?;
        let state = c.state.lock();
        let m = state.modules.get(&module).ok_or(CuError::INVALID_HANDLE)?;
        m.global(name).map(|g| (g.addr, g.size)).ok_or(CuError::NOT_FOUND)
    }

    fn launch(&self, ctx: Id, func: Id, dims: LaunchDims, stream: Id, params: &[u8]) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        Self::check_stream(&c, stream)?;
        let (module, name) = c.state.lock().functions.get(&func).cloned().ok_or(CuError::INVALID_HANDLE)?;
        let cfg = LaunchConfig { grid: dims.grid, block: dims.block, shared_mem_bytes: dims.shared_mem_bytes };
        let out = cuwire_emu::launch(&module, &name, &cfg, params, &c.mem, &self.opts).map_err(|e| {
            tracing::debug!(kernel = %name, error = %e, "launch failed");
            err(e)
        })?;
        if !out.printf.is_empty() {
            c.state.lock().output.extend_from_slice(&out.printf);
        }
        Ok(())
    }

    fn func_set_attribute(&self, ctx: Id, func: Id, attrib: i32, value: i32) -> CuResult<()> {
        let c = self.ctx(ctx)?;
        let (module, name) = c.state.lock().functions.get(&func).cloned().ok_or(CuError::INVALID_HANDLE)?;
        match attrib {
            cuda::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
                let bytes = u32::try_from(value).map_err(|_| CuError::INVALID_VALUE)?;
                module.set_max_dynamic_shared(&name, bytes).map_err(err)
            }
            // A carveout preference is a hint the emulated device has no use for.
            cuda::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => Ok(()),
            _ => Err(CuError::NOT_SUPPORTED),
        }
    }

    fn take_output(&self, ctx: Id) -> Vec<u8> {
        match self.ctx(ctx) {
            Ok(c) => std::mem::take(&mut c.state.lock().output),
            Err(_) => Vec::new(),
        }
    }
}
