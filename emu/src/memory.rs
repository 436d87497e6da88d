//! Device memory of the emulated GPU.
//!
//! Every allocation is a run of lazily created 64 KiB pages of `AtomicU64` words, so a
//! large device costs only what is touched, and many CTA worker threads can load and
//! store the same allocation at once without `unsafe`: plain loads and stores are relaxed
//! atomic word accesses, sub-word stores merge into their word with a compare-exchange
//! (the other bytes of the word are never disturbed), and the `atom`/`red` instructions
//! are compare-exchange loops on the containing word.
//!
//! Freed memory is never seen again: a new allocation always starts from fresh zero pages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::error::EmuError;

const PAGE_SHIFT_W: usize = 13; // 8192 words = 64 KiB per page
const PAGE_WORDS: usize = 1 << PAGE_SHIFT_W;
const PAGE_MASK_W: usize = PAGE_WORDS - 1;
/// Alignment of every allocation (as cuMemAlloc guarantees).
pub const ALLOC_ALIGN: u64 = 256;
/// Size of the device address window handed out to one device.
const WINDOW: u64 = 1 << 40;

type Page = Box<[AtomicU64]>;

#[inline]
fn size_mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// One device allocation.
pub struct Allocation {
    pub base: u64,
    pub size: u64,
    words: usize,
    pages: Box<[OnceLock<Page>]>,
}

impl std::fmt::Debug for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Allocation({:#x}, {} bytes)", self.base, self.size)
    }
}

impl Allocation {
    fn new(base: u64, size: u64) -> Self {
        let words = size.div_ceil(8) as usize;
        let npages = words.div_ceil(PAGE_WORDS);
        let pages = (0..npages).map(|_| OnceLock::new()).collect();
        Allocation { base, size, words, pages }
    }

    /// True if `[addr, addr+len)` lies inside this allocation.
    #[inline]
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr - self.base <= self.size && len <= self.size - (addr - self.base)
    }

    #[inline]
    fn page_or_create(&self, p: usize) -> &Page {
        self.pages[p].get_or_init(|| {
            let n = PAGE_WORDS.min(self.words - (p << PAGE_SHIFT_W));
            (0..n).map(|_| AtomicU64::new(0)).collect()
        })
    }

    #[inline]
    fn word_load(&self, wi: usize) -> u64 {
        match self.pages[wi >> PAGE_SHIFT_W].get() {
            Some(pg) => pg[wi & PAGE_MASK_W].load(Ordering::Relaxed),
            None => 0,
        }
    }

    /// Stores `val` into the bits `mask` of word `wi`, leaving the others alone.
    #[inline]
    fn word_store(&self, wi: usize, val: u64, mask: u64) {
        let p = wi >> PAGE_SHIFT_W;
        let pg = match self.pages[p].get() {
            Some(pg) => pg,
            None => {
                if val & mask == 0 {
                    return; // zero into an untouched page: nothing to do
                }
                self.page_or_create(p)
            }
        };
        let w = &pg[wi & PAGE_MASK_W];
        if mask == u64::MAX {
            w.store(val, Ordering::Relaxed);
            return;
        }
        let v = val & mask;
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            let new = (cur & !mask) | v;
            if new == cur {
                return;
            }
            match w.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => cur = x,
            }
        }
    }

    /// Loads `size` (1, 2, 4 or 8) bytes at offset `off`, which must be aligned to `size`
    /// and inside the allocation.
    #[inline]
    pub fn load(&self, off: u64, size: u32) -> u64 {
        let w = self.word_load((off >> 3) as usize);
        if size == 8 {
            w
        } else {
            (w >> ((off & 7) * 8)) & size_mask(size)
        }
    }

    /// Stores the low `size` bytes of `val` at offset `off` (aligned, inside).
    #[inline]
    pub fn store(&self, off: u64, size: u32, val: u64) {
        let sh = (off & 7) * 8;
        self.word_store((off >> 3) as usize, val << sh, size_mask(size) << sh);
    }

    /// Atomically replaces the `size`-byte value `old` at `off` (aligned, inside) by
    /// `f(old)`, returning `old`. `f` may be called several times.
    #[inline]
    pub fn rmw(&self, off: u64, size: u32, mut f: impl FnMut(u64) -> u64) -> u64 {
        let wi = (off >> 3) as usize;
        let pg = self.page_or_create(wi >> PAGE_SHIFT_W);
        let w = &pg[wi & PAGE_MASK_W];
        let sh = (off & 7) * 8;
        let m = size_mask(size);
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            let old = (cur >> sh) & m;
            let new = (cur & !(m << sh)) | ((f(old) & m) << sh);
            match w.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return old,
                Err(x) => cur = x,
            }
        }
    }

    /// Copies bytes at offset `off` out (range must be inside). Whole words go a page at a time
    /// (one page lookup per 64 KiB, not per word): bulk copies run at memory speed, which
    /// matters because a copy's time here is added to its time on the wire.
    pub fn read_bytes(&self, off: u64, out: &mut [u8]) {
        let head = (off.wrapping_neg() & 7).min(out.len() as u64) as usize;
        let (head_out, rest) = out.split_at_mut(head);
        self.read_partial(off, head_out);
        let words = rest.len() / 8;
        let (body, tail) = rest.split_at_mut(words * 8);
        let mut wi = ((off + head as u64) >> 3) as usize;
        let mut body = body;
        while !body.is_empty() {
            let in_page = wi & PAGE_MASK_W;
            let n = (PAGE_WORDS - in_page).min(body.len() / 8);
            let (chunk, more) = body.split_at_mut(n * 8);
            match self.pages[wi >> PAGE_SHIFT_W].get() {
                Some(pg) => {
                    for (w, o) in pg[in_page..in_page + n].iter().zip(chunk.chunks_exact_mut(8)) {
                        o.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                    }
                }
                None => chunk.fill(0),
            }
            body = more;
            wi += n;
        }
        self.read_partial(off + (head + words * 8) as u64, tail);
    }

    /// Copies bytes in at offset `off` (range must be inside), whole words a page at a time as
    /// [`Self::read_bytes`]; zeros into a page never touched leave it untouched.
    pub fn write_bytes(&self, off: u64, data: &[u8]) {
        let head = (off.wrapping_neg() & 7).min(data.len() as u64) as usize;
        let (head_data, rest) = data.split_at(head);
        self.write_partial(off, head_data);
        let words = rest.len() / 8;
        let (mut body, tail) = rest.split_at(words * 8);
        let mut wi = ((off + head as u64) >> 3) as usize;
        while !body.is_empty() {
            let in_page = wi & PAGE_MASK_W;
            let n = (PAGE_WORDS - in_page).min(body.len() / 8);
            let (chunk, more) = body.split_at(n * 8);
            let p = wi >> PAGE_SHIFT_W;
            let page = match self.pages[p].get() {
                Some(pg) => Some(pg),
                None if chunk.iter().all(|&b| b == 0) => None,
                None => Some(self.page_or_create(p)),
            };
            if let Some(pg) = page {
                for (w, d) in pg[in_page..in_page + n].iter().zip(chunk.chunks_exact(8)) {
                    w.store(u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]), Ordering::Relaxed);
                }
            }
            body = more;
            wi += n;
        }
        self.write_partial(off + (head + words * 8) as u64, tail);
    }

    /// Byte-wise read of a range that may start or end inside a word.
    fn read_partial(&self, off: u64, out: &mut [u8]) {
        let mut pos = 0usize;
        let mut o = off;
        while pos < out.len() {
            let wi = (o >> 3) as usize;
            let b = (o & 7) as usize;
            let n = (8 - b).min(out.len() - pos);
            let w = self.word_load(wi).to_le_bytes();
            out[pos..pos + n].copy_from_slice(&w[b..b + n]);
            pos += n;
            o += n as u64;
        }
    }

    /// Byte-wise write of a range that may start or end inside a word (the other bytes of the
    /// word are merged, not disturbed).
    fn write_partial(&self, off: u64, data: &[u8]) {
        let mut pos = 0usize;
        let mut o = off;
        while pos < data.len() {
            let wi = (o >> 3) as usize;
            let b = (o & 7) as usize;
            let n = (8 - b).min(data.len() - pos);
            let mut bytes = [0u8; 8];
            bytes[b..b + n].copy_from_slice(&data[pos..pos + n]);
            let mask = if n == 8 { u64::MAX } else { ((1u64 << (n * 8)) - 1) << (b * 8) };
            self.word_store(wi, u64::from_le_bytes(bytes), mask);
            pos += n;
            o += n as u64;
        }
    }

    /// Number of pages that hold memory (for tests of laziness).
    pub fn touched_pages(&self) -> usize {
        self.pages.iter().filter(|p| p.get().is_some()).count()
    }
}

struct State {
    allocs: BTreeMap<u64, Arc<Allocation>>,
    next: u64,
}

/// The memory of one emulated device. `Send + Sync`; share it with `Arc`.
pub struct DeviceMemory {
    base: u64,
    capacity: u64,
    used: AtomicU64,
    state: RwLock<State>,
}

impl std::fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMemory")
            .field("base", &format_args!("{:#x}", self.base))
            .field("capacity", &self.capacity)
            .field("used", &self.used())
            .finish()
    }
}

fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl DeviceMemory {
    /// A device whose addresses start at `base` (nonzero) and that reports `capacity` bytes.
    pub fn new(base: u64, capacity: u64) -> Self {
        let base = round_up(base.max(ALLOC_ALIGN), ALLOC_ALIGN);
        DeviceMemory { base, capacity, used: AtomicU64::new(0), state: RwLock::new(State { allocs: BTreeMap::new(), next: base }) }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `size` bytes, 256-byte aligned, zeroed.
    pub fn alloc(&self, size: u64) -> Result<u64, EmuError> {
        if size == 0 {
            return Err(EmuError::InvalidValue("allocation of 0 bytes".into()));
        }
        if size > self.capacity {
            return Err(EmuError::OutOfMemory);
        }
        let span = round_up(size, ALLOC_ALIGN);
        let mut st = self.write_state();
        let used = self.used.load(Ordering::Relaxed);
        if used + span > self.capacity {
            return Err(EmuError::OutOfMemory);
        }
        // Addresses are handed out by a bump pointer, so a stale pointer to freed memory
        // does not land in a later allocation; only when the window is exhausted are
        // freed gaps reused (first fit).
        let end = self.base + WINDOW;
        let addr = if st.next + span <= end {
            st.next
        } else {
            let mut cand = self.base;
            let mut found = None;
            for (b, a) in st.allocs.iter() {
                if *b >= cand + span {
                    found = Some(cand);
                    break;
                }
                cand = round_up(b + a.size, ALLOC_ALIGN);
            }
            match found {
                Some(c) => c,
                None if cand + span <= end => cand,
                None => return Err(EmuError::OutOfMemory),
            }
        };
        st.next = st.next.max(addr + span);
        st.allocs.insert(addr, Arc::new(Allocation::new(addr, size)));
        self.used.fetch_add(span, Ordering::Relaxed);
        Ok(addr)
    }

    /// Frees the allocation starting at `ptr`; returns its size.
    pub fn free(&self, ptr: u64) -> Result<u64, EmuError> {
        let mut st = self.write_state();
        match st.allocs.remove(&ptr) {
            Some(a) => {
                self.used.fetch_sub(round_up(a.size, ALLOC_ALIGN), Ordering::Relaxed);
                Ok(a.size)
            }
            None => Err(EmuError::InvalidValue(format!("{ptr:#x} is not the start of an allocation"))),
        }
    }

    /// Bytes allocated (each allocation rounded up to 256 bytes).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The lowest device address this device hands out.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The allocation holding `addr`, for the interpreter (callers cache it).
    #[inline]
    pub fn find(&self, addr: u64) -> Option<Arc<Allocation>> {
        let st = self.read_state();
        let (_, a) = st.allocs.range(..=addr).next_back()?;
        if addr - a.base < a.size {
            Some(a.clone())
        } else {
            None
        }
    }

    /// `(base, size)` of the allocation holding `addr`.
    pub fn allocation_containing(&self, addr: u64) -> Option<(u64, u64)> {
        self.find(addr).map(|a| (a.base, a.size))
    }

    /// Number of allocations alive.
    pub fn allocation_count(&self) -> usize {
        self.read_state().allocs.len()
    }

    fn range(&self, addr: u64, len: u64) -> Result<Arc<Allocation>, EmuError> {
        let a = self.find(addr).ok_or_else(|| EmuError::InvalidValue(format!("{addr:#x} is not inside any allocation")))?;
        if !a.contains(addr, len) {
            return Err(EmuError::InvalidValue(format!(
                "range {addr:#x}+{len} runs past the end of the allocation {:#x}+{}",
                a.base, a.size
            )));
        }
        Ok(a)
    }

    /// Checks that `[addr, addr+len)` lies inside one allocation (`InvalidValue` otherwise,
    /// the driver's answer for a bad copy range). A zero length is always fine.
    pub fn check_range(&self, addr: u64, len: u64) -> Result<(), EmuError> {
        if len == 0 {
            return Ok(());
        }
        self.range(addr, len).map(|_| ())
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), EmuError> {
        if data.is_empty() {
            return Ok(());
        }
        let a = self.range(addr, data.len() as u64)?;
        a.write_bytes(addr - a.base, data);
        Ok(())
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), EmuError> {
        if out.is_empty() {
            return Ok(());
        }
        let a = self.range(addr, out.len() as u64)?;
        a.read_bytes(addr - a.base, out);
        Ok(())
    }

    /// Device-to-device copy; overlapping ranges behave like `memmove`.
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), EmuError> {
        if len == 0 {
            return Ok(());
        }
        let s = self.range(src, len)?;
        let d = self.range(dst, len)?;
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK.min(len) as usize];
        let backward = Arc::ptr_eq(&s, &d) && dst > src && dst < src + len;
        let nchunks = len.div_ceil(CHUNK);
        for i in 0..nchunks {
            let c = if backward { nchunks - 1 - i } else { i };
            let off = c * CHUNK;
            let n = CHUNK.min(len - off) as usize;
            s.read_bytes(src - s.base + off, &mut buf[..n]);
            d.write_bytes(dst - d.base + off, &buf[..n]);
        }
        Ok(())
    }

    /// memsetD8/D16/D32: `count` copies of `pattern` (1, 2 or 4 bytes) from `addr`.
    pub fn fill(&self, addr: u64, pattern: &[u8], count: u64) -> Result<(), EmuError> {
        let psz = pattern.len() as u64;
        if !matches!(psz, 1 | 2 | 4) {
            return Err(EmuError::InvalidValue(format!("memset pattern of {psz} bytes")));
        }
        if !addr.is_multiple_of(psz) {
            return Err(EmuError::InvalidValue(format!("memset address {addr:#x} not aligned to {psz}")));
        }
        let len = count.checked_mul(psz).ok_or_else(|| EmuError::InvalidValue("memset size overflows".into()))?;
        if len == 0 {
            return Ok(());
        }
        let a = self.range(addr, len)?;
        let mut word = [0u8; 8];
        for (i, b) in word.iter_mut().enumerate() {
            *b = pattern[i % psz as usize];
        }
        // addr % psz == 0 and psz divides 8, so the pattern is in phase with word boundaries
        // of the allocation (whose base is 256-aligned).
        let chunk: Vec<u8> = word.iter().copied().cycle().take(64 * 1024).collect();
        let mut off = addr - a.base;
        let mut left = len;
        // first bring the offset to a word boundary
        let head = ((8 - (off & 7)) & 7).min(left);
        if head > 0 {
            let start = (off & 7) as usize;
            a.write_bytes(off, &word[start..start + head as usize]);
            off += head;
            left -= head;
        }
        while left > 0 {
            let n = left.min(chunk.len() as u64);
            a.write_bytes(off, &chunk[..n as usize]);
            off += n;
            left -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x7000_0000_0000;

    #[test]
    fn alloc_free_accounting() {
        let m = DeviceMemory::new(BASE, 1 << 20);
        assert!(matches!(m.alloc(0), Err(EmuError::InvalidValue(_))));
        let a = m.alloc(100).unwrap();
        assert_eq!(a % 256, 0);
        assert_eq!(m.used(), 256);
        let b = m.alloc(1000).unwrap();
        assert!(b >= a + 256);
        assert_eq!(m.allocation_containing(a + 99), Some((a, 100)));
        assert_eq!(m.allocation_containing(a + 100), None);
        assert!(matches!(m.alloc(1 << 20), Err(EmuError::OutOfMemory)));
        assert!(matches!(m.free(a + 1), Err(EmuError::InvalidValue(_))));
        assert_eq!(m.free(a).unwrap(), 100);
        assert!(matches!(m.free(a), Err(EmuError::InvalidValue(_))));
        assert_eq!(m.used(), 1024);
        m.free(b).unwrap();
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn lazy_and_fresh() {
        let m = DeviceMemory::new(BASE, 8 << 30);
        let a = m.alloc(4 << 30).unwrap();
        let mut buf = [1u8; 16];
        m.read(a + (3 << 30), &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);
        m.write(a + 12345, &[7; 3]).unwrap();
        assert_eq!(m.find(a).unwrap().touched_pages(), 1);
        m.fill(a, &[0], 1 << 30).unwrap(); // zero fill of untouched pages stays lazy
        assert_eq!(m.find(a).unwrap().touched_pages(), 1);
        m.free(a).unwrap();
        let b = m.alloc(4 << 30).unwrap();
        m.read(b + 12345, &mut buf[..3]).unwrap();
        assert_eq!(&buf[..3], &[0, 0, 0]);
    }

    #[test]
    fn range_checks() {
        let m = DeviceMemory::new(BASE, 1 << 20);
        let a = m.alloc(64).unwrap();
        assert!(m.check_range(a, 64).is_ok());
        assert!(m.check_range(a + 63, 1).is_ok());
        assert!(m.check_range(a + 1, 64).is_err());
        assert!(m.check_range(a - 1, 1).is_err());
        assert!(m.write(a + 60, &[0; 8]).is_err());
        assert!(m.check_range(0, 0).is_ok());
        let mut o = [0u8; 4];
        assert!(m.read(12, &mut o).is_err());
    }

    #[test]
    fn fill_patterns() {
        let m = DeviceMemory::new(BASE, 1 << 20);
        let a = m.alloc(64).unwrap();
        m.fill(a + 2, &[0xab, 0xcd], 5).unwrap();
        let mut o = [0u8; 14];
        m.read(a, &mut o).unwrap();
        assert_eq!(&o[..2], &[0, 0]);
        assert_eq!(&o[2..12], &[0xab, 0xcd].repeat(5)[..]);
        assert_eq!(&o[12..], &[0, 0]);
        assert!(m.fill(a + 1, &[1, 2], 1).is_err());
        assert!(m.fill(a, &[1, 2, 3], 1).is_err());
        m.fill(a, &[1, 2, 3, 4], 16).unwrap();
        let mut o = [0u8; 64];
        m.read(a, &mut o).unwrap();
        assert_eq!(&o[..], &[1, 2, 3, 4].repeat(16)[..]);
        assert!(m.fill(a, &[1, 2, 3, 4], 17).is_err());
    }

    #[test]
    fn overlapping_copy() {
        let m = DeviceMemory::new(BASE, 8 << 20);
        let a = m.alloc(3 << 20).unwrap();
        let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
        m.write(a, &data).unwrap();
        m.copy(a + 1001, a, 2 << 20).unwrap();
        let mut o = vec![0u8; 2 << 20];
        m.read(a + 1001, &mut o).unwrap();
        assert_eq!(o, data);
        m.copy(a + 3, a + 1001, 2 << 20).unwrap();
        m.read(a + 3, &mut o).unwrap();
        assert_eq!(o, data);
    }

    #[test]
    fn word_ops() {
        let m = DeviceMemory::new(BASE, 1 << 20);
        let a = m.alloc(64).unwrap();
        let al = m.find(a).unwrap();
        al.store(4, 4, 0xdead_beef);
        al.store(1, 1, 0x55);
        assert_eq!(al.load(4, 4), 0xdead_beef);
        assert_eq!(al.load(0, 8), 0xdead_beef_0000_5500);
        assert_eq!(al.rmw(4, 4, |x| x + 1), 0xdead_beef);
        assert_eq!(al.load(4, 4), 0xdead_bef0);
        assert_eq!(al.load(1, 1), 0x55);
    }

    #[test]
    fn concurrent_atomics_and_substores() {
        let m = Arc::new(DeviceMemory::new(BASE, 1 << 20));
        let a = m.alloc(64).unwrap();
        let al = m.find(a).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let al = al.clone();
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        al.rmw(0, 4, |x| x + 1);
                        al.store(8 + t, 1, i);
                    }
                });
            }
        });
        assert_eq!(al.load(0, 4), 40_000);
        for t in 0..4 {
            assert_eq!(al.load(8 + t, 1), 9999 & 0xff);
        }
    }

    proptest::proptest! {
        #[test]
        fn unaligned_roundtrip(off in 0u64..200, data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let m = DeviceMemory::new(BASE, 1 << 20);
            let a = m.alloc(512).unwrap();
            m.fill(a, &[0x11], 512).unwrap();
            m.write(a + off, &data).unwrap();
            let mut all = vec![0u8; 512];
            m.read(a, &mut all).unwrap();
            let mut expect = vec![0x11u8; 512];
            expect[off as usize..off as usize + data.len()].copy_from_slice(&data);
            proptest::prop_assert_eq!(all, expect);
        }

        /// Bulk copies across page boundaries, into touched and untouched pages, at any
        /// alignment, read back at another: the model is a plain byte array.
        #[test]
        fn bulk_copies_across_pages(
            fill_pages in proptest::collection::vec(proptest::prelude::any::<bool>(), 4),
            off in 0u64..(3 << 16),
            len in 0usize..(1 << 17),
            zeros in proptest::prelude::any::<bool>(),
            read_off in 0u64..(1 << 16),
            seed in proptest::prelude::any::<u8>(),
        ) {
            const SIZE: usize = 4 << 16;
            let m = DeviceMemory::new(BASE, 1 << 22);
            let a = m.alloc(SIZE as u64).unwrap();
            let mut model = vec![0u8; SIZE];
            for (p, fill) in fill_pages.iter().enumerate() {
                if *fill {
                    m.write(a + (p << 16) as u64 + 8, &[0x5a]).unwrap();
                    model[(p << 16) + 8] = 0x5a;
                }
            }
            let len = len.min(SIZE - off as usize);
            let data: Vec<u8> = (0..len).map(|i| if zeros { 0 } else { (i as u8).wrapping_mul(31).wrapping_add(seed) }).collect();
            m.write(a + off, &data).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
            let mut back = vec![0xeeu8; SIZE - read_off as usize];
            m.read(a + read_off, &mut back).unwrap();
            proptest::prop_assert!(back[..] == model[read_off as usize..]);
        }
    }
}
