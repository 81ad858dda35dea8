//! The run configuration carried in the boot payload (see `payload.rs`).
//!
//! The format is sluice's own: UTF-8 text, one `key = value` per line, `#`
//! starts a comment (whole-line or trailing), blank lines are ignored and
//! whitespace around keys and values is trimmed. xtask parses it before it
//! builds a disk image, and the kernel parses it again from the ramdisk, so
//! parsing never allocates and never panics; every error names its line.
//!
//! Keys: `platform`, `guest.*`, `ram_mib`, and the coalescing options
//! `coalesce`, `coalesce.extent`, `coalesce.max_insns`, `coalesce.max_string`,
//! `coalesce.max_quiet`, and `timer.lost_ticks`.
//! Any unknown key is an error, so a typo can never be silently ignored.

use core::fmt;

use crate::devices::board::LostTicks;
pub use crate::guest::{EntryMode, REAL_MODE_LIMIT};

/// Smallest accepted `ram_mib`.
pub const RAM_MIB_MIN: u32 = 16;
/// Largest accepted `ram_mib`: the guest's physical memory sits below 4 GiB.
pub const RAM_MIB_MAX: u32 = 4096;
/// `ram_mib` when the key is absent.
pub const RAM_MIB_DEFAULT: u32 = 64;

/// Keys this version understands, in the order `write_to` emits them.
pub const KNOWN_KEYS: [&str; 12] = [
    "platform",
    "guest.name",
    "guest.entry",
    "guest.load",
    "guest.arg",
    "ram_mib",
    "coalesce",
    "coalesce.extent",
    "coalesce.max_insns",
    "coalesce.max_string",
    "coalesce.max_quiet",
    "timer.lost_ticks",
];

/// Coalescing defaults: on, the extent policy the benchmarks chose (docs/BENCHMARKS.md),
/// and the per-exit bounds on emulated instructions and string-IO elements.
pub const COALESCE_EXTENT_DEFAULT: &str = "page";
pub const COALESCE_MAX_INSNS_DEFAULT: u32 = 256;
pub const COALESCE_MAX_STRING_DEFAULT: u32 = 4096;
/// Instructions emulated after the last IO instruction of an exit at most (see
/// docs/COALESCING.md, "The contract", the `limit` stop, for why 48; and "Site memory:
/// coalescing only where it pays" for what the quiet limit saves).
pub const COALESCE_MAX_QUIET_DEFAULT: u32 = 48;
/// Accepted ranges for the per-exit bounds.
pub const COALESCE_MAX_INSNS_RANGE: core::ops::RangeInclusive<u32> = 1..=4096;
pub const COALESCE_MAX_STRING_RANGE: core::ops::RangeInclusive<u32> = 1..=65536;
pub const COALESCE_MAX_QUIET_RANGE: core::ops::RangeInclusive<u32> = 0..=4096;

/// Index of `guest.load` in [`KNOWN_KEYS`], for the cross-key check.
const GUEST_LOAD_SLOT: usize = 3;

/// How the kernel ends a run once the guest is done (or fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Platform {
    /// Write to QEMU's `isa-debug-exit` device so QEMU exits with a status.
    Qemu,
    /// Use Bochs' magic breakpoint / shutdown port.
    Bochs,
    /// Real machine: print the result and halt.
    #[default]
    Hardware,
}

impl Platform {
    /// The spelling used in the configuration text.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Bochs => "bochs",
            Platform::Hardware => "hardware",
        }
    }
}

/// A parsed configuration. String fields borrow from the parsed text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config<'a> {
    pub platform: Platform,
    /// Free-form label for logs; `none` when absent.
    pub guest_name: &'a str,
    pub guest_entry: EntryMode,
    /// Explicit `guest.load`; `None` means "derive from the entry"
    /// (see [`Config::load_address`]).
    pub guest_load: Option<u32>,
    /// A number handed to the guest in RDI at its first instruction (0 by default):
    /// benchmark and test guests take their parameters from it.
    pub guest_arg: u64,
    pub ram_mib: u32,
    /// IO coalescing on (`coalesce = on`) or one exit per IO instruction (`off`).
    pub coalesce: bool,
    /// Extent policy, validated by `coalesce::block::Extent::parse`.
    pub coalesce_extent: &'a str,
    pub coalesce_max_insns: u32,
    pub coalesce_max_string: u32,
    /// `coalesce.max_quiet`: instructions emulated past the last IO instruction.
    pub coalesce_max_quiet: u32,
    /// `timer.lost_ticks`: `discard` (default: as on hardware) or `delay`.
    pub lost_ticks: LostTicks,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            platform: Platform::Hardware,
            guest_name: "none",
            guest_entry: EntryMode::None,
            guest_load: None,
            guest_arg: 0,
            ram_mib: RAM_MIB_DEFAULT,
            coalesce: true,
            coalesce_extent: COALESCE_EXTENT_DEFAULT,
            coalesce_max_insns: COALESCE_MAX_INSNS_DEFAULT,
            coalesce_max_string: COALESCE_MAX_STRING_DEFAULT,
            coalesce_max_quiet: COALESCE_MAX_QUIET_DEFAULT,
            lost_ticks: LostTicks::Discard,
        }
    }
}

impl<'a> Config<'a> {
    /// Where a `real:` flat binary is loaded: the explicit `guest.load`, else
    /// the entry's linear address. `None` for non-`real:` entry modes.
    pub fn load_address(&self) -> Option<u32> {
        let derived = self.guest_entry.real_linear()?;
        Some(self.guest_load.unwrap_or(derived))
    }

    /// Guest RAM size in bytes.
    pub fn ram_bytes(&self) -> u64 {
        u64::from(self.ram_mib) << 20
    }

    /// Writes the configuration in the text format, such that [`parse`] gives
    /// back an equal `Config`. Every key is written, so the text does not
    /// depend on the reader's defaults.
    ///
    /// Fails with `fmt::Error` if the configuration cannot be represented
    /// (a guest name that is empty, contains `#` or a line break, or has
    /// surrounding whitespace; or values outside the accepted ranges).
    pub fn write_to(&self, w: &mut impl fmt::Write) -> fmt::Result {
        let name = self.guest_name;
        if name.is_empty()
            || name.trim() != name
            || name.contains(['#', '\n', '\r'])
            || !(RAM_MIB_MIN..=RAM_MIB_MAX).contains(&self.ram_mib)
            || crate::coalesce::block::Extent::parse(self.coalesce_extent).is_none()
            || !COALESCE_MAX_INSNS_RANGE.contains(&self.coalesce_max_insns)
            || !COALESCE_MAX_STRING_RANGE.contains(&self.coalesce_max_string)
            || !COALESCE_MAX_QUIET_RANGE.contains(&self.coalesce_max_quiet)
        {
            return Err(fmt::Error);
        }
        writeln!(w, "platform = {}", self.platform.as_str())?;
        writeln!(w, "guest.name = {name}")?;
        match self.guest_entry {
            EntryMode::None => writeln!(w, "guest.entry = none")?,
            EntryMode::RealSegOff { seg, off } => {
                writeln!(w, "guest.entry = real:{seg:#x}:{off:#x}")?
            }
            EntryMode::RealAddr(addr) => writeln!(w, "guest.entry = real:{addr:#x}")?,
            EntryMode::Elf64 => writeln!(w, "guest.entry = elf64")?,
            EntryMode::Linux => writeln!(w, "guest.entry = linux")?,
            EntryMode::Firmware => writeln!(w, "guest.entry = firmware")?,
        }
        if let Some(load) = self.guest_load {
            writeln!(w, "guest.load = {load:#x}")?;
        }
        writeln!(w, "guest.arg = {:#x}", self.guest_arg)?;
        writeln!(w, "ram_mib = {}", self.ram_mib)?;
        writeln!(w, "coalesce = {}", if self.coalesce { "on" } else { "off" })?;
        writeln!(w, "coalesce.extent = {}", self.coalesce_extent)?;
        writeln!(w, "coalesce.max_insns = {}", self.coalesce_max_insns)?;
        writeln!(w, "coalesce.max_string = {}", self.coalesce_max_string)?;
        writeln!(w, "coalesce.max_quiet = {}", self.coalesce_max_quiet)?;
        writeln!(w, "timer.lost_ticks = {}", self.lost_ticks.as_str())
    }
}

/// A configuration error and the 1-based line it was found on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError<'a> {
    pub line: usize,
    pub kind: ConfigErrorKind<'a>,
}

/// What went wrong; text fragments borrow from the input so messages can
/// quote it without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigErrorKind<'a> {
    /// A non-blank, non-comment line without `=`.
    MissingEquals {
        text: &'a str,
    },
    /// `= value` with nothing before the `=`.
    EmptyKey,
    UnknownKey {
        key: &'a str,
    },
    BadCoalesce {
        value: &'a str,
    },
    BadArg {
        value: &'a str,
    },
    BadExtent {
        value: &'a str,
    },
    /// A per-exit bound that is not a number in its range.
    BadBound {
        key: &'a str,
        value: &'a str,
        min: u32,
        max: u32,
    },
    DuplicateKey {
        key: &'a str,
        first_line: usize,
    },
    EmptyValue {
        key: &'a str,
    },
    BadPlatform {
        value: &'a str,
    },
    BadEntry {
        value: &'a str,
    },
    /// A `real:` number that is not `0x` hex / decimal or does not fit.
    BadEntryNumber {
        value: &'a str,
        bits: u8,
    },
    /// A `real:` entry whose linear address is not below 1 MiB.
    EntryAbove1M {
        linear: u32,
    },
    BadLoad {
        value: &'a str,
    },
    LoadAbove1M {
        value: u32,
    },
    /// `guest.load` given although `guest.entry` is not `real:...`.
    LoadWithoutRealEntry,
    BadRam {
        value: &'a str,
    },
    RamOutOfRange {
        value: u64,
    },
    BadLostTicks {
        value: &'a str,
    },
}

impl fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

impl core::error::Error for ConfigError<'_> {}

impl fmt::Display for ConfigErrorKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ConfigErrorKind::*;
        match *self {
            MissingEquals { text } => write!(f, "expected 'key = value', got '{text}'"),
            EmptyKey => write!(f, "missing key before '='"),
            UnknownKey { key } => {
                write!(f, "unknown key '{key}' (expected one of: ")?;
                for (i, k) in KNOWN_KEYS.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(k)?;
                }
                f.write_str(")")
            }
            BadCoalesce { value } => write!(f, "coalesce: expected on or off, got '{value}'"),
            BadLostTicks { value } => write!(
                f,
                "timer.lost_ticks: expected delay or discard, got '{value}'"
            ),
            BadArg { value } => write!(
                f,
                "guest.arg: expected a number (decimal or 0x hex), got '{value}'"
            ),
            BadExtent { value } => write!(
                f,
                "coalesce.extent: expected page, line, line:N, bytes:N or insns:N, got '{value}'"
            ),
            BadBound { key, value, min, max } => {
                write!(f, "{key} must be a number in {min}..={max}, got '{value}'")
            }
            DuplicateKey { key, first_line } => {
                write!(f, "duplicate key '{key}' (first set on line {first_line})")
            }
            EmptyValue { key } => write!(f, "{key}: missing value"),
            BadPlatform { value } => {
                write!(f, "platform: expected qemu, bochs or hardware, got '{value}'")
            }
            BadEntry { value } => write!(
                f,
                "guest.entry: expected none, real:SEG:OFF, real:ADDR, elf64, firmware or linux, got '{value}'"
            ),
            BadEntryNumber { value, bits } => write!(
                f,
                "guest.entry: '{value}' is not a {bits}-bit number (use 0x hex or decimal)"
            ),
            EntryAbove1M { linear } => write!(
                f,
                "guest.entry: real-mode entry must be below 1 MiB (0x100000), got linear address {linear:#x}"
            ),
            BadLoad { value } => write!(
                f,
                "guest.load: expected an address (0x hex or decimal), got '{value}'"
            ),
            LoadAbove1M { value } => write!(
                f,
                "guest.load must be below 1 MiB (0x100000), got {value:#x}"
            ),
            LoadWithoutRealEntry => write!(
                f,
                "guest.load only applies to guest.entry = real:..., which is not set"
            ),
            BadRam { value } => write!(f, "ram_mib: expected a decimal integer, got '{value}'"),
            RamOutOfRange { value } => write!(
                f,
                "ram_mib must be {RAM_MIB_MIN}..={RAM_MIB_MAX}, got {value}"
            ),
        }
    }
}

impl core::error::Error for ConfigErrorKind<'_> {}

/// Parses `0x`-prefixed hex or plain decimal into a u64 (no sign, no `_`).
fn parse_number(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    // from_str_radix would accept a leading '+'; the format does not.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parses a `guest.entry` value (`none`, `real:SEG:OFF`, `real:ADDR`, `elf64`,
/// `firmware`); xtask uses it for its `--entry` flag.
pub fn parse_entry(value: &str) -> Result<EntryMode, ConfigErrorKind<'_>> {
    match value {
        "none" => return Ok(EntryMode::None),
        "elf64" => return Ok(EntryMode::Elf64),
        "linux" => return Ok(EntryMode::Linux),
        "firmware" => return Ok(EntryMode::Firmware),
        _ => {}
    }
    let Some(rest) = value.strip_prefix("real:") else {
        return Err(ConfigErrorKind::BadEntry { value });
    };
    fn number(s: &str, bits: u8) -> Result<u64, ConfigErrorKind<'_>> {
        let s = s.trim();
        match parse_number(s) {
            Some(n) if n >> bits == 0 => Ok(n),
            _ => Err(ConfigErrorKind::BadEntryNumber { value: s, bits }),
        }
    }
    let mode = match rest.split_once(':') {
        Some((seg, off)) => EntryMode::RealSegOff {
            seg: number(seg, 16)? as u16,
            off: number(off, 16)? as u16,
        },
        None => EntryMode::RealAddr(number(rest, 32)? as u32),
    };
    // Unwrap-free: both branches above are real modes.
    let linear = mode.real_linear().unwrap_or(0);
    if linear >= REAL_MODE_LIMIT {
        return Err(ConfigErrorKind::EntryAbove1M { linear });
    }
    Ok(mode)
}

/// Parses configuration text. Absent keys keep their defaults.
pub fn parse(text: &str) -> Result<Config<'_>, ConfigError<'_>> {
    let mut config = Config::default();
    // Line on which each known key was set (0 = not yet), indexed like KNOWN_KEYS.
    let mut seen = [0usize; KNOWN_KEYS.len()];

    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |kind| ConfigError { line, kind };
        let content = match raw.split_once('#') {
            Some((before, _comment)) => before,
            None => raw,
        }
        .trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(err(ConfigErrorKind::MissingEquals { text: content }));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(err(ConfigErrorKind::EmptyKey));
        }
        let Some(slot) = KNOWN_KEYS.iter().position(|k| *k == key) else {
            return Err(err(ConfigErrorKind::UnknownKey { key }));
        };
        if seen[slot] != 0 {
            return Err(err(ConfigErrorKind::DuplicateKey {
                key,
                first_line: seen[slot],
            }));
        }
        seen[slot] = line;
        if value.is_empty() {
            return Err(err(ConfigErrorKind::EmptyValue { key }));
        }

        match key {
            "platform" => {
                config.platform = match value {
                    "qemu" => Platform::Qemu,
                    "bochs" => Platform::Bochs,
                    "hardware" => Platform::Hardware,
                    _ => return Err(err(ConfigErrorKind::BadPlatform { value })),
                }
            }
            "guest.name" => config.guest_name = value,
            "guest.entry" => config.guest_entry = parse_entry(value).map_err(err)?,
            "guest.load" => {
                let n = parse_number(value).ok_or(err(ConfigErrorKind::BadLoad { value }))?;
                if n >= u64::from(REAL_MODE_LIMIT) {
                    // Clamp for the message only; anything this big is simply "too big".
                    let value = u32::try_from(n).unwrap_or(u32::MAX);
                    return Err(err(ConfigErrorKind::LoadAbove1M { value }));
                }
                config.guest_load = Some(n as u32);
            }
            "guest.arg" => {
                config.guest_arg =
                    parse_number(value).ok_or(err(ConfigErrorKind::BadArg { value }))?;
            }
            "ram_mib" => {
                // Decimal only: a size in MiB has no reason to be hex.
                if !value.chars().all(|c| c.is_ascii_digit()) {
                    return Err(err(ConfigErrorKind::BadRam { value }));
                }
                let n: u64 = value.parse().unwrap_or(u64::MAX);
                if !(u64::from(RAM_MIB_MIN)..=u64::from(RAM_MIB_MAX)).contains(&n) {
                    return Err(err(ConfigErrorKind::RamOutOfRange { value: n }));
                }
                config.ram_mib = n as u32;
            }
            "coalesce" => {
                config.coalesce = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(err(ConfigErrorKind::BadCoalesce { value })),
                }
            }
            "coalesce.extent" => {
                if crate::coalesce::block::Extent::parse(value).is_none() {
                    return Err(err(ConfigErrorKind::BadExtent { value }));
                }
                config.coalesce_extent = value;
            }
            "coalesce.max_insns" | "coalesce.max_string" | "coalesce.max_quiet" => {
                let range = match key {
                    "coalesce.max_insns" => COALESCE_MAX_INSNS_RANGE,
                    "coalesce.max_string" => COALESCE_MAX_STRING_RANGE,
                    _ => COALESCE_MAX_QUIET_RANGE,
                };
                let n = value.parse::<u32>().ok().filter(|n| range.contains(n));
                let Some(n) = n else {
                    return Err(err(ConfigErrorKind::BadBound {
                        key,
                        value,
                        min: *range.start(),
                        max: *range.end(),
                    }));
                };
                match key {
                    "coalesce.max_insns" => config.coalesce_max_insns = n,
                    "coalesce.max_string" => config.coalesce_max_string = n,
                    _ => config.coalesce_max_quiet = n,
                }
            }
            "timer.lost_ticks" => {
                config.lost_ticks =
                    LostTicks::parse(value).ok_or(err(ConfigErrorKind::BadLostTicks { value }))?;
            }
            _ => unreachable!("key was found in KNOWN_KEYS"),
        }
    }

    // Cross-key check, reported on the guest.load line (keys may come in any order).
    let load_line = seen[GUEST_LOAD_SLOT];
    if load_line != 0 && config.guest_entry.real_linear().is_none() {
        return Err(ConfigError {
            line: load_line,
            kind: ConfigErrorKind::LoadWithoutRealEntry,
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn round_trip(c: Config<'_>) {
        let mut s = String::new();
        c.write_to(&mut s).unwrap();
        assert_eq!(parse(&s).unwrap(), c, "text was:\n{s}");
    }

    #[test]
    fn guest_load_slot_matches_key_table() {
        assert_eq!(KNOWN_KEYS[GUEST_LOAD_SLOT], "guest.load");
    }

    #[test]
    fn empty_text_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(
            parse("\n  # only a comment\n\n").unwrap(),
            Config::default()
        );
        let d = Config::default();
        assert_eq!(d.platform, Platform::Hardware);
        assert_eq!(d.guest_name, "none");
        assert_eq!(d.guest_entry, EntryMode::None);
        assert_eq!(d.ram_mib, 64);
    }

    #[test]
    fn full_config() {
        let c = parse(
            "# test run\r\n platform = qemu \r\nguest.name=boot sector test # trailing\n\
             guest.entry = real:0x7c00\nram_mib = 128\n",
        )
        .unwrap();
        assert_eq!(c.platform, Platform::Qemu);
        assert_eq!(c.guest_name, "boot sector test");
        assert_eq!(c.guest_entry, EntryMode::RealAddr(0x7c00));
        assert_eq!(c.guest_entry.real_cs_ip(), Some((0, 0x7c00)));
        assert_eq!(c.load_address(), Some(0x7c00));
        assert_eq!(c.ram_mib, 128);
        assert_eq!(c.ram_bytes(), 128 << 20);
    }

    #[test]
    fn entry_modes() {
        let e = parse_entry;
        assert_eq!(e("none"), Ok(EntryMode::None));
        assert_eq!(e("elf64"), Ok(EntryMode::Elf64));
        assert_eq!(e("firmware"), Ok(EntryMode::Firmware));
        assert_eq!(
            e("real:0x07C0:0"),
            Ok(EntryMode::RealSegOff { seg: 0x7c0, off: 0 })
        );
        assert_eq!(
            e("real:4096:0x10"),
            Ok(EntryMode::RealSegOff {
                seg: 0x1000,
                off: 0x10
            })
        );
        assert_eq!(e("real:31744"), Ok(EntryMode::RealAddr(0x7c00)));
        assert_eq!(EntryMode::Firmware.real_cs_ip(), Some((0xF000, 0xFFF0)));
        assert_eq!(EntryMode::Elf64.real_cs_ip(), None);
        // Above 64 KiB the bank goes into CS.
        let cs_ip = EntryMode::RealAddr(0x9_1234).real_cs_ip().unwrap();
        assert_eq!(cs_ip, (0x9000, 0x1234));
        assert_eq!(u32::from(cs_ip.0) * 16 + u32::from(cs_ip.1), 0x9_1234);
    }

    #[test]
    fn load_address_defaults_and_override() {
        let c = parse("guest.entry = real:0x1000:0x20").unwrap();
        assert_eq!(c.load_address(), Some(0x10020));
        let c = parse("guest.load = 0x8000\nguest.entry = real:0:0x8000").unwrap();
        assert_eq!(c.guest_load, Some(0x8000));
        assert_eq!(c.load_address(), Some(0x8000));
        assert_eq!(parse("guest.entry = elf64").unwrap().load_address(), None);
    }

    #[test]
    fn unknown_key_message() {
        assert_eq!(
            err_text("platform = qemu\n\nram_mb = 64"),
            "line 3: unknown key 'ram_mb' (expected one of: platform, guest.name, guest.entry, guest.load, guest.arg, ram_mib, coalesce, coalesce.extent, coalesce.max_insns, coalesce.max_string, coalesce.max_quiet, timer.lost_ticks)"
        );
        assert!(err_text("timeout_s = 5").contains("unknown key 'timeout_s'"));
    }

    #[test]
    fn coalescing_keys_parse_and_reject_bad_values() {
        let c = parse(
            "coalesce = off\ncoalesce.extent = bytes:32\ncoalesce.max_insns = 8\ncoalesce.max_string = 100\ncoalesce.max_quiet = 0",
        )
        .unwrap();
        assert!(!c.coalesce);
        assert_eq!(c.coalesce_extent, "bytes:32");
        assert_eq!((c.coalesce_max_insns, c.coalesce_max_string), (8, 100));
        assert_eq!(c.coalesce_max_quiet, 0);
        assert!(parse("coalesce.max_quiet = 4097").is_err());
        let d = parse("").unwrap();
        assert!(d.coalesce);
        assert_eq!(d.coalesce_extent, COALESCE_EXTENT_DEFAULT);
        assert_eq!(
            err_text("coalesce = maybe"),
            "line 1: coalesce: expected on or off, got 'maybe'"
        );
        assert!(err_text("coalesce.extent = galaxy").contains("expected page, line"));
        assert!(err_text("coalesce.max_insns = 0").contains("must be a number in 1..=4096"));
        assert!(err_text("coalesce.max_string = lots").contains("got 'lots'"));
        assert!(err_text("coalesce.window = 4").contains("unknown key 'coalesce.window'"));
        assert_eq!(parse("guest.arg = 0x305").unwrap().guest_arg, 0x305);
        assert!(err_text("guest.arg = -1").contains("guest.arg: expected a number"));
    }

    #[test]
    fn ram_errors() {
        assert_eq!(
            err_text("# x\nram_mib = 5"),
            "line 2: ram_mib must be 16..=4096, got 5"
        );
        assert!(err_text("ram_mib = 4097").contains("got 4097"));
        assert!(err_text("ram_mib = 0x40").contains("expected a decimal integer, got '0x40'"));
        assert!(err_text("ram_mib = -1").contains("got '-1'"));
        // Overflowing u64 is still a range error, not a panic.
        assert!(err_text("ram_mib = 99999999999999999999999").contains("must be 16..=4096"));
        assert_eq!(parse("ram_mib = 16").unwrap().ram_mib, 16);
        assert_eq!(parse("ram_mib = 4096").unwrap().ram_mib, 4096);
    }

    #[test]
    fn entry_errors() {
        assert_eq!(
            err_text("\n\n\nguest.entry = foo"),
            "line 4: guest.entry: expected none, real:SEG:OFF, real:ADDR, elf64, firmware or linux, got 'foo'"
        );
        assert!(err_text("guest.entry = real:0x10000:0").contains("'0x10000' is not a 16-bit"));
        assert!(err_text("guest.entry = real:zz").contains("'zz' is not a 32-bit"));
        assert!(err_text("guest.entry = real:").contains("'' is not a 32-bit"));
        assert!(err_text("guest.entry = real:+5").contains("'+5'"));
        assert!(err_text("guest.entry = real:0x100000").contains("below 1 MiB"));
        assert!(err_text("guest.entry = real:0xffff:0x10").contains("0x100000"));
        assert!(err_text("guest.entry = real:1:2:3").contains("'2:3'"));
    }

    #[test]
    fn load_errors() {
        assert!(err_text("guest.entry = real:0x7c00\nguest.load = 0x100000")
            .contains("line 2: guest.load must be below 1 MiB"));
        assert!(err_text("guest.load = 0xfffffffffffffffffff").contains("expected an address"));
        assert_eq!(
            err_text("guest.load = 0x7c00\nguest.entry = elf64"),
            "line 1: guest.load only applies to guest.entry = real:..., which is not set"
        );
        assert!(err_text("guest.load = 0x7c00").starts_with("line 1: guest.load only"));
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            err_text("platform qemu"),
            "line 1: expected 'key = value', got 'platform qemu'"
        );
        assert_eq!(err_text(" = qemu"), "line 1: missing key before '='");
        assert_eq!(err_text("platform ="), "line 1: platform: missing value");
        assert_eq!(
            err_text("platform = qemu\nplatform = bochs"),
            "line 2: duplicate key 'platform' (first set on line 1)"
        );
        assert_eq!(
            err_text("platform = QEMU"),
            "line 1: platform: expected qemu, bochs or hardware, got 'QEMU'"
        );
    }

    #[test]
    fn lost_ticks_policy_parses_and_defaults_to_discard() {
        assert_eq!(parse("").unwrap().lost_ticks, LostTicks::Discard);
        let c = parse("timer.lost_ticks = delay").unwrap();
        assert_eq!(c.lost_ticks, LostTicks::Delay);
        assert_eq!(
            err_text("\ntimer.lost_ticks = catch-up"),
            "line 2: timer.lost_ticks: expected delay or discard, got 'catch-up'"
        );
    }

    #[test]
    fn round_trips() {
        round_trip(Config::default());
        round_trip(Config {
            platform: Platform::Qemu,
            guest_name: "my guest = 1",
            guest_entry: EntryMode::RealSegOff {
                seg: 0xffff,
                off: 0xf,
            },
            guest_load: Some(0x500),
            ram_mib: 4096,
            guest_arg: 0x1234_5678_9abc,
            coalesce: false,
            coalesce_extent: "bytes:48",
            coalesce_max_insns: 1,
            coalesce_max_string: 65536,
            coalesce_max_quiet: 0,
            lost_ticks: LostTicks::Delay,
        });
        round_trip(Config {
            platform: Platform::Bochs,
            guest_name: "x",
            guest_entry: EntryMode::RealAddr(0xf_ffff),
            guest_load: None,
            ram_mib: 16,
            ..Config::default()
        });
        for entry in [EntryMode::Elf64, EntryMode::Firmware, EntryMode::None] {
            round_trip(Config {
                guest_entry: entry,
                ..Config::default()
            });
        }
    }

    #[test]
    fn write_rejects_unrepresentable() {
        let mut s = String::new();
        for name in ["", " padded", "a#b", "two\nlines"] {
            let c = Config {
                guest_name: name,
                ..Config::default()
            };
            assert!(c.write_to(&mut s).is_err(), "{name:?}");
        }
        let c = Config {
            ram_mib: 1,
            ..Config::default()
        };
        assert!(c.write_to(&mut s).is_err());
    }
}
