//! The GPU pool: which tenants may connect, where their sessions are placed, what each tenant
//! may take (quotas over all its sessions), and how tenants share a GPU's time.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cuwire_protocol::{CuError, CuResult};
use parking_lot::{Condvar, Mutex, RwLock};
use serde_json::json;

use crate::backend::Backend;
use crate::config::{Admission, Placement, PoolPolicy, TenantConfig};

/// Why a connection was refused after TLS (a metrics label and a log reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownTenant(String),
    Revoked(String),
    TooManySessions(String),
    NoDevice(String),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownTenant(_) => "unknown_tenant",
            Refusal::Revoked(_) => "revoked",
            Refusal::TooManySessions(_) => "too_many_sessions",
            Refusal::NoDevice(_) => "no_device",
        }
    }
    pub fn reason(&self) -> String {
        match self {
            Refusal::UnknownTenant(t) => format!("tenant {t:?} is not configured on this pool"),
            Refusal::Revoked(s) => format!("the client certificate (serial {s}) is revoked"),
            Refusal::TooManySessions(t) => format!("tenant {t:?} is at its session limit"),
            Refusal::NoDevice(t) => format!("no GPU of this pool is allowed for tenant {t:?}"),
        }
    }
}

/// What a session learns when admitted.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub session: u64,
    /// The tenant's devices 0..k-1 as pool (backend) device ordinals.
    pub devices: Vec<usize>,
}

/// A session as the operator sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub tenant: String,
    pub devices: Vec<usize>,
    pub remote: String,
    pub pid: u32,
    pub host: String,
    pub started: SystemTime,
}

#[derive(Debug, Default, Clone)]
struct TenantUsage {
    sessions: usize,
    contexts: usize,
    streams: usize,
    /// Bytes held on each device.
    memory: BTreeMap<usize, u64>,
}

impl TenantUsage {
    fn total(&self) -> u64 {
        self.memory.values().sum()
    }
}

#[derive(Default)]
struct PoolState {
    tenants: HashMap<String, TenantUsage>,
    sessions: BTreeMap<u64, SessionInfo>,
}

/// Weighted fair sharing of one device's time between tenants (stride scheduling): the waiting
/// tenant that has used the least time per unit of share goes next, so a tenant flooding work
/// gets its share and no more, and a newcomer starts at the current virtual time.
#[derive(Default)]
struct DeviceScheduler {
    state: Mutex<SchedState>,
    turn: Condvar,
}

#[derive(Default)]
struct SchedState {
    busy: bool,
    /// Virtual time each tenant has used (seconds / share).
    pass: HashMap<String, f64>,
    /// Device seconds each tenant has used.
    used: HashMap<String, f64>,
    /// Waiting work: ticket -> tenant. The next to run is the waiter whose tenant has the
    /// smallest pass *now* (not at arrival: a tenant with several sessions must not get a turn
    /// per session), the earliest ticket among equals.
    waiting: BTreeMap<u64, String>,
    next_ticket: u64,
    /// Where a tenant that was idle starts again: the smallest pass among waiting tenants, so
    /// idling earns no credit to starve others later.
    floor: f64,
}

impl SchedState {
    fn next(&self) -> Option<u64> {
        self.waiting
            .iter()
            .map(|(t, tenant)| (self.pass.get(tenant).copied().unwrap_or(0.0), *t))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, t)| t)
    }
}

/// Credit (seconds of device time per unit of share) a tenant keeps across an absence.
const GRACE: f64 = 0.1;

impl DeviceScheduler {
    fn run<T>(&self, tenant: &str, share: f64, work: impl FnOnce() -> T) -> T {
        let mut s = self.state.lock();
        // A tenant back from a short absence (the round trip between its synchronize and its next
        // batch) keeps up to GRACE of credit; a long idle earns no more than that.
        let floor = s.floor - GRACE;
        match s.pass.get_mut(tenant) {
            Some(p) => *p = p.max(floor),
            None => {
                s.pass.insert(tenant.to_owned(), floor.max(0.0));
            }
        }
        // The uncontended case (the device idle, nobody waiting) goes straight on: this runs
        // for every launch, copy and memset.
        if s.busy || !s.waiting.is_empty() {
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.insert(ticket, tenant.to_owned());
            while s.busy || s.next() != Some(ticket) {
                self.turn.wait(&mut s);
            }
            s.waiting.remove(&ticket);
        }
        s.busy = true;
        drop(s);
        let start = Instant::now();
        let out = work();
        let used = start.elapsed().as_secs_f64();
        let mut s = self.state.lock();
        let s = &mut *s;
        match s.pass.get_mut(tenant) {
            Some(p) => *p += used / share.max(1e-6),
            None => {
                s.pass.insert(tenant.to_owned(), used / share.max(1e-6));
            }
        }
        match s.used.get_mut(tenant) {
            Some(u) => *u += used,
            None => {
                s.used.insert(tenant.to_owned(), used);
            }
        }
        s.busy = false;
        if !s.waiting.is_empty() {
            let waiting_min = s.waiting.values().filter_map(|t| s.pass.get(t)).cloned().fold(f64::INFINITY, f64::min);
            if waiting_min.is_finite() {
                s.floor = s.floor.max(waiting_min);
            }
            self.turn.notify_all();
        }
        out
    }
}

pub struct Pool {
    backend: Arc<dyn Backend>,
    policy: RwLock<PoolPolicy>,
    state: Mutex<PoolState>,
    room: Condvar,
    scheduler: Vec<DeviceScheduler>,
    next_session: AtomicU64,
}

impl Pool {
    pub fn new(backend: Arc<dyn Backend>, policy: PoolPolicy) -> Arc<Pool> {
        let n = backend.device_count();
        Arc::new(Pool {
            scheduler: (0..n).map(|_| DeviceScheduler::default()).collect(),
            backend,
            policy: RwLock::new(policy),
            state: Mutex::new(PoolState::default()),
            room: Condvar::new(),
            next_session: AtomicU64::new(1),
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Replaces tenants, quotas and policies (SIGHUP). Sessions stay; new limits apply to what
    /// they do next.
    pub fn set_policy(&self, policy: PoolPolicy) {
        *self.policy.write() = policy;
        self.room.notify_all();
    }

    fn limits(&self, tenant: &str) -> TenantConfig {
        let p = self.policy.read();
        match &p.tenants {
            Some(t) => t.get(tenant).cloned().unwrap_or_default(),
            None => TenantConfig::default(),
        }
    }

    pub fn share(&self, tenant: &str) -> f64 {
        // Without cloning the tenant's configuration: this runs for every piece of device work.
        let p = self.policy.read();
        p.tenants.as_ref().and_then(|t| t.get(tenant)).and_then(|c| c.share).unwrap_or(1.0)
    }

    /// Decides whether a tenant may open a session and where it goes. Blocks up to the
    /// admission timeout when the policy says to wait for room.
    pub fn admit(&self, tenant: &str, serial: &str, info: SessionInfo) -> Result<Admitted, Refusal> {
        let (limits, policy) = {
            let p = self.policy.read();
            if p.revoked.iter().any(|r| r == serial) {
                return Err(Refusal::Revoked(serial.to_owned()));
            }
            let limits = match &p.tenants {
                Some(t) => t.get(tenant).cloned().ok_or_else(|| Refusal::UnknownTenant(tenant.to_owned()))?,
                None => TenantConfig::default(),
            };
            (limits, (p.placement, p.admission, p.admission_timeout))
        };
        let (placement, admission, timeout) = policy;
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        loop {
            let sessions = state.tenants.get(tenant).map(|u| u.sessions).unwrap_or(0);
            let limit = self.limits(tenant).max_sessions.or(limits.max_sessions);
            if limit.is_none_or(|l| sessions < l) {
                break;
            }
            if admission == Admission::Fail || self.room.wait_until(&mut state, deadline).timed_out() {
                let sessions = state.tenants.get(tenant).map(|u| u.sessions).unwrap_or(0);
                if limit.is_none_or(|l| sessions < l) {
                    break;
                }
                return Err(Refusal::TooManySessions(tenant.to_owned()));
            }
        }
        let devices = self.place(&state, tenant, &limits, placement);
        if devices.is_empty() {
            return Err(Refusal::NoDevice(tenant.to_owned()));
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        state.tenants.entry(tenant.to_owned()).or_default().sessions += 1;
        state.sessions.insert(id, SessionInfo { devices: devices.clone(), ..info });
        metrics::gauge!("cuwire_sessions", "tenant" => tenant.to_owned()).increment(1.0);
        Ok(Admitted { session: id, devices })
    }

    fn place(&self, state: &PoolState, tenant: &str, limits: &TenantConfig, placement: Placement) -> Vec<usize> {
        let n = self.backend.device_count();
        let allowed: Vec<usize> = limits.gpus.clone().unwrap_or_else(|| (0..n).collect()).into_iter().filter(|d| *d < n).collect();
        let k = limits.devices_per_session.unwrap_or(allowed.len()).min(allowed.len());
        let sessions_on = |d: usize| state.sessions.values().filter(|s| s.devices.contains(&d)).count();
        let _ = tenant;
        let mut ranked = allowed.clone();
        match placement {
            Placement::Pack => ranked.sort_by_key(|d| (std::cmp::Reverse(sessions_on(*d)), *d)),
            Placement::Spread => ranked.sort_by_key(|d| (sessions_on(*d), *d)),
            Placement::LeastLoaded => {
                ranked.sort_by_key(|d| (std::cmp::Reverse(self.backend.mem_info(*d).map(|(f, _)| f).unwrap_or(0)), sessions_on(*d), *d))
            }
        }
        ranked.truncate(k);
        ranked
    }

    /// A session ended: its slot is free again.
    pub fn leave(&self, session: u64) {
        let mut state = self.state.lock();
        if let Some(info) = state.sessions.remove(&session) {
            if let Some(u) = state.tenants.get_mut(&info.tenant) {
                u.sessions = u.sessions.saturating_sub(1);
            }
            metrics::gauge!("cuwire_sessions", "tenant" => info.tenant).decrement(1.0);
        }
        drop(state);
        self.room.notify_all();
    }

    fn refuse(&self, tenant: &str, kind: &'static str) -> CuError {
        metrics::counter!("cuwire_quota_refusals_total", "tenant" => tenant.to_owned(), "kind" => kind).increment(1);
        tracing::info!(%tenant, kind, "over quota");
        match kind {
            "memory" => CuError::OUT_OF_MEMORY,
            _ => CuError(cuwire_protocol::cuda::CUDA_ERROR_OUT_OF_MEMORY),
        }
    }

    /// Takes `bytes` of the tenant's memory quota on a device, or refuses without touching it.
    pub fn reserve_memory(&self, tenant: &str, dev: usize, bytes: u64) -> CuResult<()> {
        let limits = self.limits(tenant);
        let mut state = self.state.lock();
        let u = state.tenants.entry(tenant.to_owned()).or_default();
        let on_dev = u.memory.get(&dev).copied().unwrap_or(0);
        let over_dev = limits.memory_per_gpu.is_some_and(|q| on_dev.saturating_add(bytes) > q);
        let over_total = limits.memory_total.is_some_and(|q| u.total().saturating_add(bytes) > q);
        if over_dev || over_total {
            drop(state);
            return Err(self.refuse(tenant, "memory"));
        }
        *u.memory.entry(dev).or_default() += bytes;
        let now = on_dev + bytes;
        drop(state);
        metrics::gauge!("cuwire_memory_bytes", "tenant" => tenant.to_owned(), "gpu" => dev.to_string()).set(now as f64);
        Ok(())
    }

    pub fn release_memory(&self, tenant: &str, dev: usize, bytes: u64) {
        let mut state = self.state.lock();
        if let Some(u) = state.tenants.get_mut(tenant) {
            let m = u.memory.entry(dev).or_default();
            *m = m.saturating_sub(bytes);
            let now = *m;
            drop(state);
            metrics::gauge!("cuwire_memory_bytes", "tenant" => tenant.to_owned(), "gpu" => dev.to_string()).set(now as f64);
        }
    }

    fn reserve_count(
        &self,
        tenant: &str,
        kind: &'static str,
        limit: Option<usize>,
        field: fn(&mut TenantUsage) -> &mut usize,
    ) -> CuResult<()> {
        let mut state = self.state.lock();
        let u = state.tenants.entry(tenant.to_owned()).or_default();
        let n = field(u);
        if limit.is_some_and(|l| *n >= l) {
            drop(state);
            return Err(self.refuse(tenant, kind));
        }
        *n += 1;
        Ok(())
    }

    fn release_count(&self, tenant: &str, field: fn(&mut TenantUsage) -> &mut usize) {
        if let Some(u) = self.state.lock().tenants.get_mut(tenant) {
            let n = field(u);
            *n = n.saturating_sub(1);
        }
    }

    pub fn reserve_context(&self, tenant: &str) -> CuResult<()> {
        self.reserve_count(tenant, "contexts", self.limits(tenant).max_contexts, |u| &mut u.contexts)
    }
    pub fn release_context(&self, tenant: &str) {
        self.release_count(tenant, |u| &mut u.contexts)
    }
    pub fn reserve_stream(&self, tenant: &str) -> CuResult<()> {
        self.reserve_count(tenant, "streams", self.limits(tenant).max_streams, |u| &mut u.streams)
    }
    pub fn release_stream(&self, tenant: &str) {
        self.release_count(tenant, |u| &mut u.streams)
    }

    /// The device's memory as the tenant sees it: its quota (if below the device's size) and
    /// what of that is free.
    pub fn tenant_view(&self, tenant: &str, dev: usize) -> CuResult<(u64, u64)> {
        let (dev_free, dev_total) = self.backend.mem_info(dev)?;
        let limits = self.limits(tenant);
        let state = self.state.lock();
        let usage = state.tenants.get(tenant);
        let on_dev = usage.and_then(|u| u.memory.get(&dev).copied()).unwrap_or(0);
        let total_used = usage.map(|u| u.total()).unwrap_or(0);
        let total = limits.memory_per_gpu.map_or(dev_total, |q| q.min(dev_total));
        let mut free = total.saturating_sub(on_dev).min(dev_free);
        if let Some(q) = limits.memory_total {
            free = free.min(q.saturating_sub(total_used));
        }
        Ok((free, total))
    }

    /// The device total a tenant is told about (cuDeviceTotalMem).
    pub fn tenant_total(&self, tenant: &str, dev: usize) -> u64 {
        let total = self.backend.device_info(dev).total_mem;
        self.limits(tenant).memory_per_gpu.map_or(total, |q| q.min(total))
    }

    /// Runs device work in the tenant's turn.
    pub fn schedule<T>(&self, dev: usize, tenant: &str, work: impl FnOnce() -> T) -> T {
        match self.scheduler.get(dev) {
            Some(s) => s.run(tenant, self.share(tenant), work),
            None => work(),
        }
    }

    /// Tenants, sessions, placements and memory, for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let state = self.state.lock();
        let policy = self.policy.read();
        let devices: Vec<_> = (0..self.backend.device_count())
            .map(|d| {
                let (free, total) = self.backend.mem_info(d).unwrap_or((0, 0));
                json!({ "index": d, "name": self.backend.device_info(d).name, "free": free, "total": total,
                        "sessions": state.sessions.values().filter(|s| s.devices.contains(&d)).count() })
            })
            .collect();
        let tenants: serde_json::Map<String, serde_json::Value> = state
            .tenants
            .iter()
            .map(|(name, u)| {
                let limits = policy.tenants.as_ref().and_then(|t| t.get(name)).cloned().unwrap_or_default();
                (
                    name.clone(),
                    json!({ "sessions": u.sessions, "contexts": u.contexts, "streams": u.streams,
                            "memory": u.memory.iter().map(|(d, b)| (d.to_string(), json!(b))).collect::<serde_json::Map<_, _>>(),
                            "memory_total": u.total(),
                            "limits": { "memory_per_gpu": limits.memory_per_gpu, "memory_total": limits.memory_total,
                                        "max_sessions": limits.max_sessions, "max_contexts": limits.max_contexts,
                                        "max_streams": limits.max_streams, "share": limits.share.unwrap_or(1.0) } }),
                )
            })
            .collect();
        let sessions: Vec<_> = state
            .sessions
            .iter()
            .map(|(id, s)| {
                json!({ "id": id, "tenant": s.tenant, "devices": s.devices, "remote": s.remote, "pid": s.pid, "host": s.host,
                        "seconds": s.started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0) })
            })
            .collect();
        json!({ "backend": self.backend.kind(), "placement": format!("{:?}", policy.placement),
                "devices": devices, "tenants": tenants, "sessions": sessions })
    }

    /// Sets the gauges that are cheaper to read at scrape time than to keep per call.
    pub fn publish(&self) {
        for s in &self.scheduler {
            for (tenant, used) in &s.state.lock().used {
                metrics::gauge!("cuwire_device_seconds", "tenant" => tenant.clone()).set(*used);
            }
        }
    }

    /// How long admission may wait, so the handshake timeout can cover it.
    pub fn admission_timeout(&self) -> Duration {
        self.policy.read().admission_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads of tenant A and one of tenant B keep one device busy: each tenant gets half
    /// of the device's time, whatever its number of threads.
    #[test]
    fn scheduler_shares_by_tenant_not_by_thread() {
        let sched = Arc::new(DeviceScheduler::default());
        let end = Instant::now() + Duration::from_millis(600);
        let work = |tenant: &'static str| {
            let sched = sched.clone();
            std::thread::spawn(move || {
                let mut n = 0u32;
                while Instant::now() < end {
                    sched.run(tenant, 1.0, || std::thread::sleep(Duration::from_millis(2)));
                    n += 1;
                }
                n
            })
        };
        let (a1, a2, b) = (work("a"), work("a"), work("b"));
        let a = a1.join().unwrap() + a2.join().unwrap();
        let b = b.join().unwrap();
        let ratio = a.max(b) as f64 / a.min(b) as f64;
        assert!(ratio < 1.2, "a {a} b {b}");
    }
}
