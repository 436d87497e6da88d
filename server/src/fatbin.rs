//! nvcc's fatbinary container, far enough to choose the PTX an emulated GPU runs.
//!
//! Layout (little-endian; as documented by the ZLUDA project, `cuda_types/src/dark_api.rs` and
//! `dark_api/src/fatbin.rs`, and by CUDA's old public `fatbinary.h`):
//!
//! - container header, 16 bytes: `u32 magic = 0xBA55ED50`, `u16 version = 1`,
//!   `u16 header_size`, `u64 size` (of the entries that follow the header);
//! - entries, back to back, each a header (64 bytes or more: `header_size` says) and a payload:
//!   `u16 kind` (1 = PTX, 2 = ELF/SASS), `u16 version`, `u32 header_size`, `u64 size` (payload,
//!   padded), `u32 compressed_size` at 16, `u32 sm` at 28 (e.g. 80), `u64 flags` at 40
//!   (0x2000: payload is an LZ4 block, 0x8000: zstd), `u64 uncompressed_size` at 56.
//!
//! Several containers may follow each other (8-byte aligned). Compressed PTX is decompressed
//! here: LZ4 blocks (nvcc 12's default; [`lz4_block`], checked against the reference `lz4`
//! tool's output in the tests) and zstd frames (nvcc 13's default; the pure-Rust `ruzstd`
//! decoder, checked against the `zstd` tool's output), both bounded by the size the entry
//! header announces.

use std::fmt;

pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
pub const KIND_PTX: u16 = 1;
pub const KIND_ELF: u16 = 2;
pub const FLAG_LZ4: u64 = 0x2000;
pub const FLAG_ZSTD: u64 = 0x8000;

const CONTAINER_HEADER: usize = 16;
const ENTRY_HEADER: usize = 64;
/// No PTX this emulator runs is larger; bounds what a decompression may allocate.
pub const MAX_PTX: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FatbinError {
    /// Not a fatbinary, or a header that points outside the image.
    Malformed(String),
    /// No PTX entry at all: the emulated GPU cannot run SASS.
    NoPtx { sass_for: Vec<u32> },
    /// The chosen PTX is compressed in a way not supported here.
    Unsupported(String),
    /// A compressed payload that does not decompress.
    Corrupt(String),
}

impl fmt::Display for FatbinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatbinError::Malformed(m) => write!(f, "malformed fatbinary: {m}"),
            FatbinError::NoPtx { sass_for } => {
                let archs: Vec<String> = sass_for.iter().map(|a| format!("sm_{a}")).collect();
                write!(
                    f,
                    "the fatbinary holds no PTX (SASS only{}{}); the emulated GPU runs PTX: build with \
                     e.g. -gencode arch=compute_80,code=compute_80",
                    if archs.is_empty() { "" } else { ", for " },
                    archs.join(", ")
                )
            }
            FatbinError::Unsupported(m) => write!(f, "unsupported fatbinary entry: {m}"),
            FatbinError::Corrupt(m) => write!(f, "corrupt fatbinary entry: {m}"),
        }
    }
}

impl std::error::Error for FatbinError {}

/// One entry of a fatbinary.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub kind: u16,
    pub sm: u32,
    pub flags: u64,
    /// The stored payload (compressed or not, padding included).
    pub payload: &'a [u8],
    pub compressed_size: u32,
    pub uncompressed_size: u64,
}

impl Entry<'_> {
    pub fn is_ptx(&self) -> bool {
        self.kind == KIND_PTX
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & (FLAG_LZ4 | FLAG_ZSTD) != 0
    }

    /// The PTX text of a PTX entry, decompressed, without the NUL padding.
    pub fn ptx(&self) -> Result<Vec<u8>, FatbinError> {
        let mut text = if self.flags & (FLAG_LZ4 | FLAG_ZSTD) != 0 {
            let n = match self.compressed_size as usize {
                0 => self.payload.len(),
                n => n,
            };
            let block = self
                .payload
                .get(..n)
                .ok_or_else(|| FatbinError::Malformed(format!("compressed size {n} exceeds the payload ({} bytes)", self.payload.len())))?;
            let want = usize::try_from(self.uncompressed_size)
                .ok()
                .filter(|&w| w <= MAX_PTX)
                .ok_or_else(|| FatbinError::Malformed(format!("uncompressed size {} exceeds {} bytes", self.uncompressed_size, MAX_PTX)))?;
            let (out, how) =
                if self.flags & FLAG_ZSTD != 0 { (zstd_frame(block, want)?, "zstd frame") } else { (lz4_block(block, want)?, "LZ4 block") };
            if out.len() != want {
                return Err(FatbinError::Corrupt(format!("{how} gave {} bytes, the header says {want}", out.len())));
            }
            out
        } else {
            self.payload.to_vec()
        };
        while text.last() == Some(&0) {
            text.pop();
        }
        Ok(text)
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o.checked_add(8)?)?.try_into().ok()?))
}

/// Whether an image is a fatbinary (starts with the container magic).
pub fn is_fatbin(image: &[u8]) -> bool {
    u32_at(image, 0) == Some(FATBIN_MAGIC)
}

/// Every entry of every container in the image.
pub fn entries(image: &[u8]) -> Result<Vec<Entry<'_>>, FatbinError> {
    if !is_fatbin(image) {
        return Err(FatbinError::Malformed("no fatbinary magic 0xBA55ED50".into()));
    }
    let mut out = Vec::new();
    let mut c = 0usize;
    while u32_at(image, c) == Some(FATBIN_MAGIC) {
        let header = u16_at(image, c + 6).unwrap_or(0) as usize;
        let size = u64_at(image, c + 8).ok_or_else(|| FatbinError::Malformed("truncated container header".into()))?;
        if header < CONTAINER_HEADER {
            return Err(FatbinError::Malformed(format!("container header size {header} < {CONTAINER_HEADER}")));
        }
        let start = c + header;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&e| e <= image.len())
            .ok_or_else(|| FatbinError::Malformed(format!("container at {c} claims {size} bytes, the image has {}", image.len())))?;
        let mut e = start;
        while e + ENTRY_HEADER <= end {
            let field =
                |what: &str, v: Option<u64>| v.ok_or_else(|| FatbinError::Malformed(format!("truncated entry header ({what}) at {e}")));
            let kind = field("kind", u16_at(image, e).map(u64::from))? as u16;
            let entry_header = field("header size", u32_at(image, e + 4).map(u64::from))? as usize;
            let payload_size = field("size", u64_at(image, e + 8))?;
            let compressed_size = field("compressed size", u32_at(image, e + 16).map(u64::from))? as u32;
            let sm = field("sm", u32_at(image, e + 28).map(u64::from))? as u32;
            let flags = field("flags", u64_at(image, e + 40))?;
            let uncompressed_size = field("uncompressed size", u64_at(image, e + 56))?;
            if entry_header < ENTRY_HEADER {
                return Err(FatbinError::Malformed(format!("entry header size {entry_header} < {ENTRY_HEADER} at {e}")));
            }
            let stored = payload_size.max(compressed_size as u64);
            let p = e + entry_header;
            let q = usize::try_from(stored)
                .ok()
                .and_then(|s| p.checked_add(s))
                .filter(|&q| q <= end)
                .ok_or_else(|| FatbinError::Malformed(format!("entry at {e} claims {stored} bytes past its container")))?;
            out.push(Entry { kind, sm, flags, payload: &image[p..q], compressed_size, uncompressed_size });
            e = q;
        }
        c = end.div_ceil(8) * 8;
    }
    Ok(out)
}

/// The PTX to run on a device of compute capability `sm` (e.g. 80): the PTX of the highest
/// architecture not above it, as the driver's JIT would choose; when every PTX is for a
/// higher architecture, the lowest of those (an emulator runs it all the same).
pub fn best_ptx(image: &[u8], sm: u32) -> Result<(u32, Vec<u8>), FatbinError> {
    let all = entries(image)?;
    let mut ptx: Vec<&Entry> = all.iter().filter(|e| e.is_ptx()).collect();
    if ptx.is_empty() {
        let mut sass_for: Vec<u32> = all.iter().filter(|e| e.kind == KIND_ELF).map(|e| e.sm).collect();
        sass_for.sort_unstable();
        sass_for.dedup();
        return Err(FatbinError::NoPtx { sass_for });
    }
    // Preferred first: not above `sm`, highest first; then above, lowest first.
    ptx.sort_by_key(|e| if e.sm <= sm { (0, u32::MAX - e.sm) } else { (1, e.sm) });
    let mut first_err = None;
    for e in ptx {
        match e.ptx() {
            Ok(text) => return Ok((e.sm, text)),
            Err(err) => {
                first_err.get_or_insert(err);
            }
        }
    }
    Err(first_err.expect("at least one PTX entry was tried"))
}

/// Decompresses one zstd frame, reading at most `limit + 1` bytes of output (one more than
/// allowed, so an overlong frame is seen as such rather than cut short).
pub fn zstd_frame(input: &[u8], limit: usize) -> Result<Vec<u8>, FatbinError> {
    use std::io::Read;
    let decoder = ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| FatbinError::Corrupt(format!("zstd frame: {e}")))?;
    let mut out = Vec::with_capacity(limit.min(1 << 20));
    decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| FatbinError::Corrupt(format!("zstd frame: {e}")))?;
    Ok(out)
}

/// Decompresses one LZ4 block (the LZ4 block format: sequences of a token, literals, a
/// 2-byte offset and a match length), producing at most `limit` bytes.
pub fn lz4_block(input: &[u8], limit: usize) -> Result<Vec<u8>, FatbinError> {
    let corrupt = |m: &str| FatbinError::Corrupt(format!("LZ4: {m}"));
    let mut out: Vec<u8> = Vec::with_capacity(limit.min(input.len().saturating_mul(4)));
    let mut i = 0usize;
    let read_len = |i: &mut usize, mut n: usize| -> Result<usize, FatbinError> {
        loop {
            let b = *input.get(*i).ok_or_else(|| corrupt("length runs past the input"))?;
            *i += 1;
            n = n.checked_add(b as usize).ok_or_else(|| corrupt("length overflows"))?;
            if b != 255 {
                return Ok(n);
            }
        }
    };
    while i < input.len() {
        let token = input[i];
        i += 1;
        let mut literals = (token >> 4) as usize;
        if literals == 15 {
            literals = read_len(&mut i, literals)?;
        }
        let lit = input
            .get(i..i.checked_add(literals).ok_or_else(|| corrupt("literal length overflows"))?)
            .ok_or_else(|| corrupt("literals run past the input"))?;
        if out.len() + lit.len() > limit {
            return Err(corrupt("output exceeds the stated size"));
        }
        out.extend_from_slice(lit);
        i += literals;
        if i == input.len() {
            break; // the last sequence has literals only
        }
        let offset = u16_at(input, i).ok_or_else(|| corrupt("truncated match offset"))? as usize;
        i += 2;
        if offset == 0 || offset > out.len() {
            return Err(corrupt("match offset outside the output"));
        }
        let mut len = (token & 15) as usize;
        if len == 15 {
            len = read_len(&mut i, len)?;
        }
        len += 4;
        if out.len() + len > limit {
            return Err(corrupt("output exceeds the stated size"));
        }
        let from = out.len() - offset;
        // Byte by byte: a match may overlap the bytes it produces.
        for k in 0..len {
            let b = out[from + k];
            out.push(b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PTX compressed by `lz4 -12 -BD` (1.9), block extracted from its frame.
    const LZ4_TEXT: &str = ".version 7.0\n.target sm_80\n.address_size 64\n\n.visible .entry k(.param .u64 p)\n{\n\tadd.s32 %r0, %r0, 1;\n\
        \tadd.s32 %r1, %r1, 1;\n\tadd.s32 %r2, %r2, 1;\n\tadd.s32 %r3, %r3, 1;\n\tadd.s32 %r4, %r4, 1;\n\tadd.s32 %r5, %r5, 1;\n\
        \t// xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n\tret;\n}\n";
    const LZ4_BLOCK: [u8; 160] = [
        0xf2, 0x4e, 0x2e, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x20, 0x37, 0x2e, 0x30, 0x0a, 0x2e, 0x74, 0x61, 0x72, 0x67, 0x65, 0x74,
        0x20, 0x73, 0x6d, 0x5f, 0x38, 0x30, 0x0a, 0x2e, 0x61, 0x64, 0x64, 0x72, 0x65, 0x73, 0x73, 0x5f, 0x73, 0x69, 0x7a, 0x65, 0x20, 0x36,
        0x34, 0x0a, 0x0a, 0x2e, 0x76, 0x69, 0x73, 0x69, 0x62, 0x6c, 0x65, 0x20, 0x2e, 0x65, 0x6e, 0x74, 0x72, 0x79, 0x20, 0x6b, 0x28, 0x2e,
        0x70, 0x61, 0x72, 0x61, 0x6d, 0x20, 0x2e, 0x75, 0x36, 0x34, 0x20, 0x70, 0x29, 0x0a, 0x7b, 0x0a, 0x09, 0x61, 0x64, 0x64, 0x2e, 0x73,
        0x33, 0x32, 0x20, 0x25, 0x72, 0x30, 0x2c, 0x05, 0x00, 0x28, 0x31, 0x3b, 0x16, 0x00, 0x22, 0x31, 0x2c, 0x05, 0x00, 0x0a, 0x16, 0x00,
        0x22, 0x32, 0x2c, 0x05, 0x00, 0x0a, 0x16, 0x00, 0x22, 0x33, 0x2c, 0x05, 0x00, 0x0a, 0x16, 0x00, 0x22, 0x34, 0x2c, 0x05, 0x00, 0x0a,
        0x16, 0x00, 0x22, 0x35, 0x2c, 0x05, 0x00, 0x00, 0x16, 0x00, 0x4f, 0x2f, 0x2f, 0x20, 0x78, 0x01, 0x00, 0x14, 0x90, 0x0a, 0x09, 0x72,
        0x65, 0x74, 0x3b, 0x0a, 0x7d, 0x0a,
    ];

    /// The same PTX compressed by `zstd -19` (1.5.4).
    const ZSTD_FRAME: [u8; 142] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x64, 0x09, 0x00, 0x05, 0x04, 0x00, 0x62, 0x07, 0x19, 0x18, 0x60, 0xd9, 0x01, 0xfc, 0x6d, 0x23, 0x01, 0xc8,
        0xa9, 0xb0, 0x31, 0x7e, 0x14, 0x05, 0xa9, 0x76, 0x55, 0x29, 0x15, 0x40, 0x41, 0x47, 0x05, 0x4e, 0xfa, 0xa9, 0x83, 0xb5, 0x03, 0xba,
        0x6d, 0x51, 0x28, 0x0a, 0x84, 0x49, 0x82, 0x20, 0xc7, 0xe1, 0x1c, 0x84, 0xe1, 0xc1, 0x22, 0xc9, 0xb3, 0x94, 0x11, 0x50, 0x4f, 0x87,
        0x6b, 0xe1, 0x92, 0xf1, 0x52, 0xd1, 0xe3, 0xc5, 0x82, 0xb4, 0x9c, 0x63, 0x55, 0xf3, 0xf6, 0x04, 0xcd, 0x9f, 0x1a, 0xab, 0xc2, 0x65,
        0xbb, 0x9b, 0xff, 0xfc, 0xb7, 0x4b, 0x19, 0x59, 0x8d, 0xe6, 0xa1, 0x7e, 0xb1, 0x8e, 0x3c, 0x62, 0xac, 0x06, 0x33, 0x5b, 0x59, 0xf3,
        0xbd, 0x35, 0x0e, 0x0d, 0x20, 0xb0, 0x17, 0x1b, 0x16, 0x82, 0x67, 0x31, 0x14, 0xc1, 0x21, 0x0b, 0x04, 0x4f, 0xc0, 0x50, 0x3c, 0xb8,
        0x99, 0x1c, 0x3b, 0x0c, 0xe4, 0x0c, 0xc4, 0x42, 0x5b, 0x6f,
    ];

    #[test]
    fn zstd_matches_the_reference_tool() {
        let out = zstd_frame(&ZSTD_FRAME, LZ4_TEXT.len()).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), LZ4_TEXT);
        // A limit below the size stops at limit + 1 bytes; damage and truncation are errors.
        assert_eq!(zstd_frame(&ZSTD_FRAME, 100).unwrap().len(), 101);
        for n in 0..ZSTD_FRAME.len() {
            let _ = zstd_frame(&ZSTD_FRAME[..n], LZ4_TEXT.len());
        }
        assert!(zstd_frame(b"not zstd at all", 100).is_err());
    }

    #[test]
    fn lz4_matches_the_reference_tool() {
        let out = lz4_block(&LZ4_BLOCK, LZ4_TEXT.len()).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), LZ4_TEXT);
        // Too small a limit, truncation and a bad offset are errors, never panics.
        assert!(lz4_block(&LZ4_BLOCK, 100).is_err());
        for n in 1..LZ4_BLOCK.len() {
            let _ = lz4_block(&LZ4_BLOCK[..n], LZ4_TEXT.len());
        }
        assert!(lz4_block(&[0x00, 0x05, 0x00], 100).is_err());
    }

    /// One entry: a 64-byte header and its payload padded to 8 bytes.
    fn entry(kind: u16, sm: u32, flags: u64, payload: &[u8], uncompressed: u64) -> Vec<u8> {
        let padded = payload.len().div_ceil(8) * 8;
        let mut e = vec![0u8; ENTRY_HEADER];
        e[0..2].copy_from_slice(&kind.to_le_bytes());
        e[2..4].copy_from_slice(&0x101u16.to_le_bytes());
        e[4..8].copy_from_slice(&(ENTRY_HEADER as u32).to_le_bytes());
        e[8..16].copy_from_slice(&(padded as u64).to_le_bytes());
        if flags & (FLAG_LZ4 | FLAG_ZSTD) != 0 {
            e[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        }
        e[28..32].copy_from_slice(&sm.to_le_bytes());
        e[32..36].copy_from_slice(&64u32.to_le_bytes());
        e[40..48].copy_from_slice(&(flags | 0x11).to_le_bytes());
        e[56..64].copy_from_slice(&uncompressed.to_le_bytes());
        e.extend_from_slice(payload);
        e.resize(ENTRY_HEADER + padded, 0);
        e
    }

    fn container(entries: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = entries.concat();
        let mut c = Vec::new();
        c.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        c.extend_from_slice(&1u16.to_le_bytes());
        c.extend_from_slice(&(CONTAINER_HEADER as u16).to_le_bytes());
        c.extend_from_slice(&(body.len() as u64).to_le_bytes());
        c.extend_from_slice(&body);
        c
    }

    fn ptx_for(sm: u32) -> Vec<u8> {
        format!(".version 7.0\n.target sm_{sm}\n.address_size 64\n.visible .entry k() {{ ret; }}\n\0").into_bytes()
    }

    #[test]
    fn chooses_the_best_ptx() {
        let image = container(&[
            entry(KIND_ELF, 80, 0, b"\x7fELF not really", 0),
            entry(KIND_PTX, 52, 0, &ptx_for(52), 0),
            entry(KIND_PTX, 80, FLAG_LZ4, &LZ4_BLOCK, LZ4_TEXT.len() as u64),
            entry(KIND_PTX, 90, 0, &ptx_for(90), 0),
        ]);
        assert!(is_fatbin(&image));
        let all = entries(&image).unwrap();
        assert_eq!(
            all.iter().map(|e| (e.kind, e.sm, e.is_compressed())).collect::<Vec<_>>(),
            [(KIND_ELF, 80, false), (KIND_PTX, 52, false), (KIND_PTX, 80, true), (KIND_PTX, 90, false)]
        );
        // sm_80 device: the compressed sm_80 PTX, decompressed.
        let (sm, text) = best_ptx(&image, 80).unwrap();
        assert_eq!((sm, std::str::from_utf8(&text).unwrap()), (80, LZ4_TEXT));
        // sm_86: still sm_80; sm_70: sm_52 (without its NUL padding); sm_95: sm_90.
        assert_eq!(best_ptx(&image, 86).unwrap().0, 80);
        let (sm, text) = best_ptx(&image, 70).unwrap();
        assert_eq!(sm, 52);
        assert_eq!(text, ptx_for(52)[..ptx_for(52).len() - 1]);
        assert_eq!(best_ptx(&image, 95).unwrap().0, 90);
        // Only higher architectures: the lowest of them.
        assert_eq!(best_ptx(&image, 50).unwrap().0, 52);
    }

    #[test]
    fn two_containers_are_read() {
        let mut image = container(&[entry(KIND_ELF, 80, 0, b"sass", 0)]);
        image.resize(image.len().div_ceil(8) * 8, 0);
        image.extend(container(&[entry(KIND_PTX, 75, 0, &ptx_for(75), 0)]));
        assert_eq!(best_ptx(&image, 80).unwrap().0, 75);
    }

    #[test]
    fn refusals_are_clear() {
        let sass = container(&[entry(KIND_ELF, 80, 0, b"sass", 0), entry(KIND_ELF, 90, 0, b"sass", 0)]);
        let e = best_ptx(&sass, 80).unwrap_err();
        assert_eq!(e, FatbinError::NoPtx { sass_for: vec![80, 90] });
        assert!(e.to_string().contains("sm_80, sm_90"), "{e}");

        // zstd: decompressed; a damaged frame or a size that disagrees is an error.
        let zstd = container(&[entry(KIND_PTX, 80, FLAG_ZSTD, &ZSTD_FRAME, LZ4_TEXT.len() as u64)]);
        assert_eq!(best_ptx(&zstd, 80).unwrap().1, LZ4_TEXT.as_bytes());
        let e = best_ptx(&container(&[entry(KIND_PTX, 80, FLAG_ZSTD, b"(not a zstd frame)", 1000)]), 80).unwrap_err();
        assert!(matches!(e, FatbinError::Corrupt(_)) && e.to_string().contains("zstd"), "{e}");
        let e = best_ptx(&container(&[entry(KIND_PTX, 80, FLAG_ZSTD, &ZSTD_FRAME, 10)]), 80).unwrap_err();
        assert!(matches!(e, FatbinError::Corrupt(_)), "{e}");

        // A damaged LZ4 payload, or one whose size disagrees with the header.
        let mut bad = LZ4_BLOCK;
        bad[95] = 0xff; // an offset far outside the output
        let e = best_ptx(&container(&[entry(KIND_PTX, 80, FLAG_LZ4, &bad, LZ4_TEXT.len() as u64)]), 80).unwrap_err();
        assert!(matches!(e, FatbinError::Corrupt(_)), "{e}");
        let e = best_ptx(&container(&[entry(KIND_PTX, 80, FLAG_LZ4, &LZ4_BLOCK, 10)]), 80).unwrap_err();
        assert!(matches!(e, FatbinError::Corrupt(_)), "{e}");

        // Headers that point outside the image.
        let mut short = container(&[entry(KIND_PTX, 80, 0, &ptx_for(80), 0)]);
        short.truncate(short.len() - 8);
        assert!(matches!(entries(&short), Err(FatbinError::Malformed(_))));
        assert!(matches!(entries(b"\x50\xed\x55\xba"), Err(FatbinError::Malformed(_))));
        assert!(matches!(entries(b".version 7.0"), Err(FatbinError::Malformed(_))));
        // Every truncation of a valid image is an error or a result, never a panic.
        let good = container(&[entry(KIND_PTX, 80, FLAG_LZ4, &LZ4_BLOCK, LZ4_TEXT.len() as u64)]);
        for n in 0..good.len() {
            let _ = best_ptx(&good[..n], 80);
        }
    }
}
