//! The payload container that xtask places in the bootloader's ramdisk: the
//! run configuration (see `config.rs`) plus an optional guest binary.
//!
//! The layout is sluice's own; all integers are little endian:
//!
//! | offset | size | field                                                 |
//! |--------|------|-------------------------------------------------------|
//! | 0      | 8    | magic `b"SLUICEPL"`                                   |
//! | 8      | 4    | format version (1)                                    |
//! | 12     | 4    | config length in bytes                                |
//! | 16     | 8    | guest length in bytes                                 |
//! | 24     | 4    | CRC-32 (IEEE 802.3, as in zlib) of config ++ guest    |
//! | 28     | 4    | reserved, 0                                           |
//! | 32     | …    | config text (UTF-8)                                   |
//! | …      | …    | zero padding up to the next 4096-byte boundary        |
//! | aligned| …    | guest bytes                                           |
//!
//! The guest starts page aligned so the kernel can map or copy it by pages.
//! `decode` runs in the kernel on whatever memory the ramdisk claims to be,
//! so it only uses checked arithmetic and slice `get`s: it never panics.
//! Bytes after the guest are ignored (the ramdisk may be padded).

use core::fmt;

/// Identifies a sluice payload.
pub const MAGIC: [u8; 8] = *b"SLUICEPL";
/// The only format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Alignment of the guest bytes relative to the start of the payload.
pub const GUEST_ALIGN: usize = 4096;

/// A decoded payload, borrowing from the input bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    pub config: &'a str,
    /// Empty when the run has no guest.
    pub guest: &'a [u8],
}

/// Why a byte buffer is not a valid payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    TooShort {
        len: usize,
    },
    BadMagic {
        found: [u8; 8],
    },
    UnsupportedVersion {
        version: u32,
    },
    ReservedNotZero {
        value: u32,
    },
    /// The lengths in the header point past the end of the buffer (or
    /// overflow the address space).
    Truncated {
        config_len: u32,
        guest_len: u64,
        needed: Option<usize>,
        available: usize,
    },
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    /// The config is not UTF-8; `valid_up_to` is the offset of the first bad byte.
    ConfigNotUtf8 {
        valid_up_to: usize,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PayloadError::TooShort { len } => write!(
                f,
                "payload is {len} bytes, shorter than the {HEADER_LEN}-byte header"
            ),
            PayloadError::BadMagic { found } => {
                write!(f, "payload magic is {found:02x?}, expected \"SLUICEPL\"")
            }
            PayloadError::UnsupportedVersion { version } => write!(
                f,
                "payload format version {version} is not supported (expected {VERSION})"
            ),
            PayloadError::ReservedNotZero { value } => {
                write!(f, "payload header reserved field is {value:#x}, expected 0")
            }
            PayloadError::Truncated {
                config_len,
                guest_len,
                needed,
                available,
            } => {
                write!(
                    f,
                    "payload header claims {config_len} config bytes and {guest_len} guest bytes, needing "
                )?;
                match needed {
                    Some(n) => write!(f, "{n} bytes")?,
                    None => f.write_str("more than the address space")?,
                }
                write!(f, ", but only {available} are present")
            }
            PayloadError::CrcMismatch { stored, computed } => write!(
                f,
                "payload CRC-32 mismatch: header says {stored:#010x}, contents give {computed:#010x}"
            ),
            PayloadError::ConfigNotUtf8 { valid_up_to } => write!(
                f,
                "payload config is not UTF-8 (first invalid byte at config offset {valid_up_to})"
            ),
        }
    }
}

impl core::error::Error for PayloadError {}

/// CRC-32 lookup table for the reflected IEEE polynomial, built at compile
/// time (1 KiB): bytewise lookup keeps checking a multi-MiB guest fast even
/// in an unoptimised kernel build.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            // 0xEDB88320 is 0x04C11DB7 bit-reversed (the CRC is LSB first).
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Incremental CRC-32 (IEEE 802.3 / zlib `crc32`): init and final XOR
/// 0xFFFFFFFF, reflected. Incremental so config and guest, which are not
/// contiguous in the payload, can be summed without copying.
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    pub const fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn finish(self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

/// CRC-32 of one buffer.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(bytes);
    c.finish()
}

/// Offset of the guest from the payload start, or `None` on overflow.
fn checked_guest_offset(config_len: usize) -> Option<usize> {
    let end = HEADER_LEN.checked_add(config_len)?;
    end.checked_add(GUEST_ALIGN - 1)
        .map(|n| n & !(GUEST_ALIGN - 1))
}

/// Offset of the guest bytes from the payload start: header plus config,
/// rounded up to [`GUEST_ALIGN`].
///
/// # Panics
/// If the result overflows `usize` (not reachable for a config that fits
/// the header's u32 length on a 64-bit host).
pub fn guest_offset(config_len: usize) -> usize {
    checked_guest_offset(config_len).expect("payload guest offset overflows usize")
}

/// Total payload size: header, config, padding and guest.
///
/// # Panics
/// If the result overflows `usize`.
pub fn total_len(config_len: usize, guest_len: usize) -> usize {
    guest_offset(config_len)
        .checked_add(guest_len)
        .expect("payload length overflows usize")
}

/// Builds the header for `config` and `guest`. The writer (xtask) then emits
/// header, config, `guest_offset(config.len()) - HEADER_LEN - config.len()`
/// zero bytes, and the guest.
///
/// # Panics
/// If `config` is 4 GiB or longer (the header stores a u32 length).
pub fn encode_header(config: &[u8], guest: &[u8]) -> [u8; HEADER_LEN] {
    let config_len = u32::try_from(config.len()).expect("payload config exceeds 4 GiB");
    let mut crc = Crc32::new();
    crc.update(config);
    crc.update(guest);

    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&config_len.to_le_bytes());
    h[16..24].copy_from_slice(&(guest.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crc.finish().to_le_bytes());
    // h[28..32]: reserved, already zero.
    h
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Validates and splits a payload. Never panics, whatever `bytes` holds.
pub fn decode(bytes: &[u8]) -> Result<Payload<'_>, PayloadError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(PayloadError::TooShort { len: bytes.len() });
    };
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[0..8]);
    if magic != MAGIC {
        return Err(PayloadError::BadMagic { found: magic });
    }
    let version = le_u32(header, 8);
    if version != VERSION {
        return Err(PayloadError::UnsupportedVersion { version });
    }
    let config_len = le_u32(header, 12);
    let guest_len = le_u64(header, 16);
    let stored = le_u32(header, 24);
    let reserved = le_u32(header, 28);
    if reserved != 0 {
        return Err(PayloadError::ReservedNotZero { value: reserved });
    }

    // usize may be 32 bits in principle; every conversion is checked.
    let config_usize = usize::try_from(config_len).ok();
    let guest_usize = usize::try_from(guest_len).ok();
    let guest_start = config_usize.and_then(checked_guest_offset);
    let needed = guest_start
        .zip(guest_usize)
        .and_then(|(start, len)| start.checked_add(len));
    let (config, guest) = match (config_usize, guest_start, needed) {
        (Some(cl), Some(start), Some(end)) if end <= bytes.len() => (
            bytes.get(HEADER_LEN..HEADER_LEN + cl),
            bytes.get(start..end),
        ),
        _ => (None, None),
    };
    let (Some(config), Some(guest)) = (config, guest) else {
        return Err(PayloadError::Truncated {
            config_len,
            guest_len,
            needed,
            available: bytes.len(),
        });
    };

    let mut crc = Crc32::new();
    crc.update(config);
    crc.update(guest);
    let computed = crc.finish();
    if computed != stored {
        return Err(PayloadError::CrcMismatch { stored, computed });
    }
    let config = core::str::from_utf8(config).map_err(|e| PayloadError::ConfigNotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    Ok(Payload { config, guest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(config: &[u8], guest: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(total_len(config.len(), guest.len()));
        v.extend_from_slice(&encode_header(config, guest));
        v.extend_from_slice(config);
        v.resize(guest_offset(config.len()), 0);
        v.extend_from_slice(guest);
        assert_eq!(v.len(), total_len(config.len(), guest.len()));
        v
    }

    /// Rewrites the stored CRC so a test can reach checks after the CRC.
    fn fix_crc(v: &mut [u8]) {
        let cl = le_u32(v, 12) as usize;
        let gl = le_u64(v, 16) as usize;
        let mut c = Crc32::new();
        c.update(&v[HEADER_LEN..HEADER_LEN + cl]);
        let go = guest_offset(cl);
        c.update(&v[go..go + gl]);
        v[24..28].copy_from_slice(&c.finish().to_le_bytes());
    }

    #[test]
    fn crc_check_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        let mut c = Crc32::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn offsets() {
        assert_eq!(HEADER_LEN, 32);
        assert_eq!(guest_offset(0), 4096);
        assert_eq!(guest_offset(4064), 4096);
        assert_eq!(guest_offset(4065), 8192);
        assert_eq!(total_len(10, 5), 4101);
        assert_eq!(checked_guest_offset(usize::MAX), None);
    }

    #[test]
    fn round_trip() {
        let guest: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let v = build(b"platform = qemu\n", &guest);
        assert_eq!(v.len() % 4096, 10_000 % 4096);
        let p = decode(&v).unwrap();
        assert_eq!(p.config, "platform = qemu\n");
        assert_eq!(p.guest, &guest[..]);

        // No guest, trailing bytes beyond the payload are ignored.
        let mut v = build(b"", b"");
        v.extend_from_slice(&[0xAA; 100]);
        assert_eq!(
            decode(&v).unwrap(),
            Payload {
                config: "",
                guest: &[]
            }
        );
    }

    #[test]
    fn too_short_and_magic() {
        assert_eq!(decode(&[]), Err(PayloadError::TooShort { len: 0 }));
        let v = build(b"x", b"y");
        assert_eq!(decode(&v[..31]), Err(PayloadError::TooShort { len: 31 }));
        let mut bad = v.clone();
        bad[0] = b's';
        assert!(matches!(decode(&bad), Err(PayloadError::BadMagic { .. })));
        assert!(decode(&bad)
            .unwrap_err()
            .to_string()
            .contains("expected \"SLUICEPL\""));
    }

    #[test]
    fn version_and_reserved() {
        let mut v = build(b"x", b"y");
        v[8] = 2;
        assert_eq!(
            decode(&v),
            Err(PayloadError::UnsupportedVersion { version: 2 })
        );
        let mut v = build(b"x", b"y");
        v[31] = 1;
        assert_eq!(
            decode(&v),
            Err(PayloadError::ReservedNotZero { value: 0x0100_0000 })
        );
    }

    #[test]
    fn lengths_beyond_buffer() {
        let v = build(b"cfg", b"guest");
        // Guest cut short by one byte.
        let e = decode(&v[..v.len() - 1]).unwrap_err();
        assert_eq!(
            e,
            PayloadError::Truncated {
                config_len: 3,
                guest_len: 5,
                needed: Some(4101),
                available: 4100
            }
        );
        assert!(e.to_string().contains("needing 4101 bytes, but only 4100"));
        // Absurd lengths must not overflow.
        let mut huge = v.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = decode(&huge).unwrap_err();
        assert!(matches!(e, PayloadError::Truncated { needed: None, .. }));
        assert!(e.to_string().contains("more than the address space"));
        let mut big_cfg = v;
        big_cfg[12..16].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(
            decode(&big_cfg),
            Err(PayloadError::Truncated { .. })
        ));
    }

    #[test]
    fn crc_mismatch() {
        let mut v = build(b"cfg", b"guest");
        let last = v.len() - 1;
        v[last] ^= 1;
        let e = decode(&v).unwrap_err();
        assert!(matches!(e, PayloadError::CrcMismatch { .. }));
        assert!(e.to_string().starts_with("payload CRC-32 mismatch"));
        // Padding is not covered by the CRC (it carries no data).
        let mut v = build(b"cfg", b"guest");
        v[100] = 1;
        assert!(decode(&v).is_ok());
    }

    #[test]
    fn config_not_utf8() {
        let mut v = build(b"ab\xffcd", b"");
        fix_crc(&mut v);
        assert_eq!(
            decode(&v),
            Err(PayloadError::ConfigNotUtf8 { valid_up_to: 2 })
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let template = build(b"platform = qemu\n", b"\x90\x90\xf4");
        let mut buf = vec![0u8; 8192];
        for i in 0..10_000 {
            let len = (next() % 8192) as usize;
            let b = &mut buf[..len];
            if i % 2 == 0 {
                // Pure noise: almost always rejected early.
                for x in b.iter_mut() {
                    *x = next() as u8;
                }
            } else {
                // A valid payload with a few corrupted bytes, to reach the
                // deeper checks.
                let n = len.min(template.len());
                b[..n].copy_from_slice(&template[..n]);
                b[n..].fill(0);
                for _ in 0..(next() % 4) {
                    if len > 0 {
                        let at = (next() % len as u64) as usize;
                        b[at] = next() as u8;
                    }
                }
            }
            let _ = decode(b);
        }
    }
}
