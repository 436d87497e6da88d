//! The integrity check of libcudart 12 (`{d4082055-bde6-704b-8d34-ba123c66e1f2}`, entry 1).
//!
//! libcudart computes the same value itself and compares: when they differ every runtime call
//! fails with `cudaErrorSoftwareValidityNotEstablished` (103). The format was reverse-engineered
//! by the ZLUDA project (`dark_api/src/lib.rs`, `integrity_check`, and its tests, which record
//! intermediate states observed with the real driver). What it is, in known terms:
//!
//! - versions ending in 0 and 1 answer fixed values;
//! - otherwise the answer is HMAC-MD2 (RFC 1319 MD2, block size 16; HMAC with the 16-byte key
//!   below) over a 48-byte record (driver version, requested version, process id, thread id
//!   (`pthread_self` truncated to 32 bits), the addresses of the cudart interface table, of the
//!   integrity table and of its entry 1, and the caller's unix time) followed by a 28-byte record
//!   per device (UUID, PCI domain, bus and device id), all little-endian.
//!
//! This is an independent implementation of MD2 and HMAC from their specifications.

/// The MD2 S-box: a permutation of 0..=255 built from the digits of pi (RFC 1319, 3.2).
const PI_SUBST: [u8; 256] = [
    41, 46, 67, 201, 162, 216, 124, 1, 61, 54, 84, 161, 236, 240, 6, 19, 98, 167, 5, 243, 192, 199, 115, 140, 152, 147, 43, 217, 188, 76,
    130, 202, 30, 155, 87, 60, 253, 212, 224, 22, 103, 66, 111, 24, 138, 23, 229, 18, 190, 78, 196, 214, 218, 158, 222, 73, 160, 251, 245,
    142, 187, 47, 238, 122, 169, 104, 121, 145, 21, 178, 7, 63, 148, 194, 16, 137, 11, 34, 95, 33, 128, 127, 93, 154, 90, 144, 50, 39, 53,
    62, 204, 231, 191, 247, 151, 3, 255, 25, 48, 179, 72, 165, 181, 209, 215, 94, 146, 42, 172, 86, 170, 198, 79, 184, 56, 210, 150, 164,
    125, 182, 118, 252, 107, 226, 156, 116, 4, 241, 69, 157, 112, 89, 100, 113, 135, 32, 134, 91, 207, 101, 230, 45, 168, 2, 27, 96, 37,
    173, 174, 176, 185, 246, 28, 70, 97, 105, 52, 64, 126, 15, 85, 71, 163, 35, 221, 81, 175, 58, 195, 92, 249, 206, 186, 197, 234, 38, 44,
    83, 13, 110, 133, 40, 132, 9, 211, 223, 205, 244, 65, 129, 77, 82, 106, 220, 55, 200, 108, 193, 171, 250, 36, 225, 123, 8, 12, 189,
    177, 74, 120, 136, 149, 139, 227, 99, 232, 109, 233, 203, 213, 254, 59, 0, 29, 57, 242, 239, 183, 14, 102, 88, 208, 228, 166, 119, 114,
    248, 235, 117, 75, 10, 49, 68, 80, 180, 143, 237, 31, 26, 219, 153, 141, 51, 159, 17, 131, 20,
];

/// The HMAC key libcudart uses.
const KEY: [u8; 16] = [0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52, 0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A, 0x9F];

/// The answers for versions ending in 0 and 1.
const FIXED_0: [u64; 2] = [0x3341_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8];
const FIXED_1: [u64; 2] = [0x1841_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8];

/// MD2, one byte at a time (the checksum is updated as each byte arrives, which gives the same
/// result as the block-wise description of RFC 1319).
#[derive(Clone)]
pub struct Md2 {
    /// X: the 48-byte state (hash, block, hash xor block).
    x: [u8; 48],
    /// C: the running checksum.
    c: [u8; 16],
    /// Bytes of the current block absorbed so far.
    n: usize,
}

impl Default for Md2 {
    fn default() -> Self {
        Md2 { x: [0; 48], c: [0; 16], n: 0 }
    }
}

impl Md2 {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.absorb(b);
        }
    }

    fn absorb(&mut self, b: u8) {
        let i = self.n;
        self.x[16 + i] = b;
        self.x[32 + i] = self.x[i] ^ b;
        let last = self.c[(i + 15) % 16];
        self.c[i] ^= PI_SUBST[(b ^ last) as usize];
        self.n = (i + 1) % 16;
        if self.n == 0 {
            self.compress();
        }
    }

    fn compress(&mut self) {
        let mut t: u8 = 0;
        for round in 0..18u8 {
            for v in self.x.iter_mut() {
                *v ^= PI_SUBST[t as usize];
                t = *v;
            }
            t = t.wrapping_add(round);
        }
    }

    pub fn finish(mut self) -> [u8; 16] {
        let pad = (16 - self.n) as u8;
        for _ in 0..pad {
            self.absorb(pad);
        }
        let checksum = self.c;
        self.update(&checksum);
        self.x[..16].try_into().expect("16 bytes")
    }
}

/// HMAC (RFC 2104) over MD2, whose block is 16 bytes: the key is used as is.
pub fn hmac_md2(key: &[u8; 16], message: &[u8]) -> [u8; 16] {
    let mut inner = Md2::default();
    inner.update(&key.map(|k| k ^ 0x36));
    inner.update(message);
    let inner = inner.finish();
    let mut outer = Md2::default();
    outer.update(&key.map(|k| k ^ 0x5c));
    outer.update(&inner);
    outer.finish()
}

/// What the integrity check mixes in about one device.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceIds {
    pub uuid: [u8; 16],
    pub pci_domain: i32,
    pub pci_bus: i32,
    pub pci_device: i32,
}

/// Everything else the integrity check mixes in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs {
    pub driver_version: u32,
    pub version: u32,
    pub process: u32,
    pub thread: u32,
    pub cudart_table: u64,
    pub integrity_table: u64,
    pub integrity_fn: u64,
    pub unix_seconds: u64,
}

impl Inputs {
    fn bytes(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0..4].copy_from_slice(&self.driver_version.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.process.to_le_bytes());
        b[12..16].copy_from_slice(&self.thread.to_le_bytes());
        b[16..24].copy_from_slice(&self.cudart_table.to_le_bytes());
        b[24..32].copy_from_slice(&self.integrity_table.to_le_bytes());
        b[32..40].copy_from_slice(&self.integrity_fn.to_le_bytes());
        b[40..48].copy_from_slice(&self.unix_seconds.to_le_bytes());
        b
    }
}

/// The answer of the integrity check for `inputs.version`.
pub fn answer(inputs: &Inputs, devices: &[DeviceIds]) -> [u64; 2] {
    match inputs.version % 10 {
        0 => return FIXED_0,
        1 => return FIXED_1,
        _ => {}
    }
    let mut message = inputs.bytes().to_vec();
    for d in devices {
        message.extend_from_slice(&d.uuid);
        message.extend_from_slice(&d.pci_domain.to_le_bytes());
        message.extend_from_slice(&d.pci_bus.to_le_bytes());
        message.extend_from_slice(&d.pci_device.to_le_bytes());
    }
    let digest = hmac_md2(&KEY, &message);
    [u64::from_le_bytes(digest[0..8].try_into().expect("8 bytes")), u64::from_le_bytes(digest[8..16].try_into().expect("8 bytes"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn md2(data: &[u8]) -> String {
        let mut h = Md2::default();
        h.update(data);
        hex(&h.finish())
    }

    /// The test suite of RFC 1319, appendix A.5.
    #[test]
    fn md2_rfc1319_vectors() {
        assert_eq!(md2(b""), "8350e5a3e24c153df2275c9f80692773");
        assert_eq!(md2(b"a"), "32ec01ec4a6dac72c0ab96fb34c0b5d1");
        assert_eq!(md2(b"abc"), "da853b0d3f88d99b30283a69e6ded6bb");
        assert_eq!(md2(b"message digest"), "ab4f496bfb2a530b219ff33031fe06b0");
        assert_eq!(md2(b"abcdefghijklmnopqrstuvwxyz"), "4e8ddff3650292ab5a4108c3aa47940b");
        assert_eq!(md2(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"), "da33def2a42df13975352846c30338cd");
        assert_eq!(
            md2(b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
            "d5976f79d83d3a0dc9806c3c66f3efd8"
        );
    }

    /// The state (X, C) after the inner key block and after a 48-byte record, as ZLUDA's tests
    /// recorded them (`integrity_check_pass2`, `integrity_check_pass3`).
    #[test]
    fn states_match_recorded_ones() {
        let mut h = Md2::default();
        h.update(&KEY.map(|k| k ^ 0x36));
        assert_eq!(hex(&h.x), "8b219a49e86d1aeef237f9b54a8c3c75c71eee21cf298ae51383f4ec3304e2fdb02f09014ff7686d6946437eb62b21ed");
        assert_eq!(hex(&h.c), "57a110860e60441e705f67d1eb67a13d");
        let inputs = Inputs {
            driver_version: 0x2f30,
            version: 12082,
            process: 0x002f_a423,
            thread: 0xf79c_1000,
            cudart_table: 0x0000_7fff_f695_8240,
            integrity_table: 0x0000_7fff_f695_8220,
            integrity_fn: 0x0000_7fff_f2aa_f4a0,
            unix_seconds: 0x682b_9cee,
        };
        h.update(&inputs.bytes());
        assert_eq!(hex(&h.x), "0afdabc9ff9ba0be4d303282744fa7489d2382a387fa6cdb9249d9b54b2b5e516ef7f94d288a640619b3e6bea4ec7e54");
        assert_eq!(hex(&h.c), "6428d9e1d434c0a94988c96158dd6674");
        assert_eq!(h.n, 0);
    }

    /// Finalisation from a recorded state (`integrity_check_pass5`).
    #[test]
    fn finish_matches_recorded_digest() {
        let state: [u8; 64] = [
            0x3e, 0x4b, 0xf2, 0x95, 0x71, 0xf5, 0x6b, 0x51, 0x07, 0xbf, 0x4b, 0xf1, 0x04, 0x0e, 0x8e, 0x0b, 0x5f, 0x4d, 0x30, 0x0c, 0x0f,
            0x0c, 0xae, 0xfb, 0x48, 0xaf, 0x23, 0xb5, 0xea, 0x4c, 0xc2, 0xdb, 0xd7, 0xdf, 0x88, 0x74, 0x39, 0x58, 0x16, 0x3a, 0x1f, 0x7c,
            0x9b, 0x20, 0x7e, 0x7e, 0x94, 0xc8, 0x8b, 0xc6, 0xb2, 0x38, 0x0d, 0x07, 0x7d, 0xbd, 0x90, 0xd5, 0x39, 0x63, 0xeb, 0x1d, 0x4f,
            0x40,
        ];
        let h = Md2 { x: state[..48].try_into().unwrap(), c: state[48..].try_into().unwrap(), n: 0 };
        assert_eq!(hex(&h.finish()), "002353065e96f69c61aa962d2ecda858");
    }

    #[test]
    fn fixed_versions_and_hash_depends_on_everything() {
        let base = Inputs { driver_version: 12090, version: 12092, process: 7, thread: 9, ..Default::default() };
        assert_eq!(answer(&Inputs { version: 12090, ..base }, &[]), FIXED_0);
        assert_eq!(answer(&Inputs { version: 12091, ..base }, &[]), FIXED_1);
        let dev = DeviceIds { uuid: [1; 16], pci_domain: 0, pci_bus: 2, pci_device: 0 };
        let a = answer(&base, &[dev]);
        assert_eq!(a, answer(&base, &[dev]));
        assert_ne!(a, answer(&base, &[]));
        assert_ne!(a, answer(&Inputs { unix_seconds: 1, ..base }, &[dev]));
        assert_ne!(a, answer(&base, &[DeviceIds { pci_bus: 3, ..dev }]));
    }
}
