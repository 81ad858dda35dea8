//! Booting an unmodified Linux bzImage through the x86 boot protocol's 64-bit entry
//! (Linux `Documentation/arch/x86/boot.rst`, "64-bit Boot Protocol"; the zero-page
//! layout is `Documentation/arch/x86/zero-page.rst`).
//!
//! Pure logic over a byte slice, like `loader.rs`: [`parse_bzimage`] validates the
//! setup header of an untrusted image (every offset checked, never panics), and
//! [`load_linux`] places the protected-mode kernel, the zero page (`struct
//! boot_params`), the command line, the initrd, the identity page tables and a GDT in
//! guest RAM, and says how the vCPU must start ([`LinuxStart`]).
//!
//! Guest-physical layout for `ram` bytes of RAM with the defaults of
//! [`LinuxLayout::default_for`]:
//!
//! ```text
//! 0x0000_7000           zero page (4 KiB)                           e820 RAM
//! 0x0002_0000           command line, NUL-terminated               e820 RAM
//! 0x0009_FC00 - 1 MiB   "EBDA"/VGA/BIOS hole                        e820 reserved
//! pref_address          protected-mode kernel (init_size bytes)     e820 RAM
//! ...                   initrd, page-aligned, as high as allowed    e820 RAM
//! ram - 1 MiB           GDT, stack, identity page tables (sluice)   e820 reserved
//! ```
//!
//! The top area is the same one ELF64 guests get (`LongModeLayout`): the GDT page
//! (here [`linux_gdt`]), a stack just below the page tables, and 4-level identity
//! tables with 2 MiB pages for all of RAM, which covers everything boot.rst asks to be
//! identity-mapped ("the range with setup_header.init_size from start address of
//! loaded kernel and zero page and command line buffer get ident mapping") plus the
//! initrd.
//!
//! Entry state (boot.rst, "64-bit Boot Protocol"): 64-bit mode with paging enabled;
//! a GDT with `__BOOT_CS` (0x10, execute/read) and `__BOOT_DS` (0x18, read/write), both
//! 4 GiB flat; CS = `__BOOT_CS`; DS, ES, SS = `__BOOT_DS`; interrupts disabled;
//! RSI = address of the zero page; RIP = load address + 0x200. The protocol asks for
//! no stack, but the decompressor's `startup_64` pushes a far return to reload CS
//! before it switches to its own stack, so RSP points at a valid stack too.

use core::fmt;

use crate::guest::long_mode::{self, GuestPagingError, GuestTableMemory};
use crate::guest::long_mode::{LongModeLayout, LONG_MODE_RESERVED};
use crate::x86::segment::SegmentState;

// ---------------------------------------------------------------------------------------
// Setup header (boot.rst, "The Real-Mode Kernel Header"): offsets in the image file,
// which are also the offsets in the zero page the header is copied into.
// ---------------------------------------------------------------------------------------

/// Start of the setup header (the `setup_sects` byte).
pub const SETUP_HEADER_START: usize = 0x1F1;
const OFF_SETUP_SECTS: usize = 0x1F1;
const OFF_SYSSIZE: usize = 0x1F4;
/// syssize counts 16-byte paragraphs.
const PARAGRAPH: u64 = 16;
const OFF_BOOT_FLAG: usize = 0x1FE;
const OFF_JUMP: usize = 0x200;
const OFF_HEADER_MAGIC: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_KERNEL_VERSION: usize = 0x20E;
const OFF_TYPE_OF_LOADER: usize = 0x210;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_CODE32_START: usize = 0x214;
const OFF_RAMDISK_IMAGE: usize = 0x218;
const OFF_RAMDISK_SIZE: usize = 0x21C;
const OFF_CMD_LINE_PTR: usize = 0x228;
const OFF_INITRD_ADDR_MAX: usize = 0x22C;
const OFF_KERNEL_ALIGNMENT: usize = 0x230;
const OFF_RELOCATABLE_KERNEL: usize = 0x234;
const OFF_MIN_ALIGNMENT: usize = 0x235;
const OFF_XLOADFLAGS: usize = 0x236;
const OFF_CMDLINE_SIZE: usize = 0x238;
const OFF_PAYLOAD_OFFSET: usize = 0x248;
const OFF_PAYLOAD_LENGTH: usize = 0x24C;
const OFF_PREF_ADDRESS: usize = 0x258;
const OFF_INIT_SIZE: usize = 0x260;

/// `boot_flag` (0x1FE).
pub const BOOT_FLAG: u16 = 0xAA55;
/// `header` (0x202): "HdrS".
pub const HEADER_MAGIC: [u8; 4] = *b"HdrS";
/// Oldest protocol accepted: 2.12 introduced `xloadflags` and with it `XLF_KERNEL_64`,
/// the only way to know the image has the 64-bit entry point at +0x200.
pub const MIN_PROTOCOL: u16 = 0x020C;
/// The header must reach past `init_size` (0x260/4, protocol 2.10+): every field this
/// loader reads lies below this end.
const MIN_HEADER_END: usize = OFF_INIT_SIZE + 4;
/// `jump` is a short jump (0xEB, signed 8-bit displacement from 0x202) whose target
/// ends the header; boot.rst ("The kernel_info") caps the header at 144 bytes because of
/// it, and struct boot_params leaves [0x1F1, 0x290) for it.
const JUMP_OPCODE: u8 = 0xEB;
const MAX_HEADER_END: usize = 0x202 + 0x7F;

/// `loadflags` bit 0: the protected-mode code is loaded at 0x100000 (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1: kernel, boot_params, cmdline and ramdisk may be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// `type_of_loader` for a boot loader without an assigned id (boot.rst: "Otherwise,
/// enter 0xFF here").
pub const TYPE_OF_LOADER_UNDEFINED: u8 = 0xFF;
/// Offset of the 64-bit entry point from the start of the loaded kernel.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// Where a bzImage's protected-mode code goes when the header names no preferred
/// address (boot.rst, `loadflags` LOADED_HIGH: "loaded at 0x100000").
pub const DEFAULT_LOAD_ADDRESS: u64 = 0x10_0000;

// ---------------------------------------------------------------------------------------
// Zero page (zero-page.rst): fields outside the setup header.
// ---------------------------------------------------------------------------------------

/// Size of struct boot_params.
pub const ZERO_PAGE_SIZE: usize = 4096;
/// `ext_ramdisk_image`, `ext_ramdisk_size`, `ext_cmd_line_ptr`: high 32 bits.
pub const ZP_EXT_RAMDISK_IMAGE: usize = 0x0C0;
pub const ZP_EXT_RAMDISK_SIZE: usize = 0x0C4;
pub const ZP_EXT_CMD_LINE_PTR: usize = 0x0C8;
/// `e820_entries` (u8).
pub const ZP_E820_ENTRIES: usize = 0x1E8;
/// `e820_table`: up to 128 entries of 20 bytes (addr u64, size u64, type u32).
pub const ZP_E820_TABLE: usize = 0x2D0;
pub const E820_ENTRY_LEN: usize = 20;
pub const E820_MAX_ENTRIES: usize = 128;
/// e820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// End of conventional memory reported as RAM: the customary 639 KiB, leaving the
/// last KiB below 640 KiB for an EBDA as on a PC; [0x9FC00, 1 MiB) is reserved.
pub const LOW_RAM_END: u64 = 0x9_FC00;
const ONE_MIB: u64 = 0x10_0000;
const PAGE: u64 = 0x1000;

// ---------------------------------------------------------------------------------------
// GDT for the 64-bit entry
// ---------------------------------------------------------------------------------------

/// `__BOOT_CS` and `__BOOT_DS` (boot.rst, 32- and 64-bit boot protocols).
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const LINUX_GDT_ENTRIES: usize = 4;
/// GDTR limit for [`linux_gdt`].
pub const LINUX_GDT_LIMIT: u16 = (LINUX_GDT_ENTRIES * 8 - 1) as u16;

/// The GDT for the 64-bit entry: null, unused (null), `__BOOT_CS` at 0x10 and
/// `__BOOT_DS` at 0x18. Both are 4 GiB flat (base 0, limit 0xFFFFF, G=1) as boot.rst
/// requires; the code segment is execute/read with L=1 (D=0), since the CPU has to be
/// in 64-bit mode at the entry, and the data segment is read/write with D/B=1. These
/// are exactly the descriptors of `long_mode::long_mode_gdt` (accessed bit preset
/// so VM entry accepts them and the CPU never writes the GDT), at Linux's selectors.
pub const fn linux_gdt() -> [u64; LINUX_GDT_ENTRIES] {
    let g = long_mode::long_mode_gdt();
    [0, 0, g[1], g[2]]
}

/// CS at the entry: `__BOOT_CS` from [`linux_gdt`] (access rights 0xA09B).
pub const LINUX_CODE_SEGMENT: SegmentState = SegmentState {
    selector: BOOT_CS,
    base: 0,
    limit: 0xFFFF_FFFF,
    access_rights: crate::x86::segment::descriptor_access_rights(linux_gdt()[2]),
};

/// DS, ES, SS (and FS, GS) at the entry: `__BOOT_DS` from [`linux_gdt`] (0xC093).
pub const LINUX_DATA_SEGMENT: SegmentState = SegmentState {
    selector: BOOT_DS,
    base: 0,
    limit: 0xFFFF_FFFF,
    access_rights: crate::x86::segment::descriptor_access_rights(linux_gdt()[3]),
};

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The bytes are not a bzImage with a usable setup header.
    NotBzImage {
        why: &'static str,
    },
    /// Boot protocol older than 2.12 (no `xloadflags`, so no known 64-bit entry).
    UnsupportedProtocol {
        version: u16,
    },
    /// `xloadflags` lacks XLF_KERNEL_64.
    No64BitEntry,
    /// The file ends before the protected-mode kernel its header describes: `needed`
    /// is the shortest file the header allows (syssize rounds up to a paragraph).
    Truncated {
        needed: u64,
        len: usize,
    },
    /// The command line is longer than the kernel's `cmdline_size`.
    CmdlineTooLong {
        len: usize,
        max: u32,
    },
    /// The command line contains a NUL byte at `at` (it would end the string early).
    CmdlineHasNul {
        at: usize,
    },
    /// The kernel's memory [load, end) does not fit in [1 MiB, limit).
    KernelDoesNotFit {
        load: u64,
        end: u64,
        limit: u64,
    },
    /// No page-aligned place for the initrd between the kernel's end (`lowest`) and
    /// the lower of the reserved top and `initrd_addr_max` (`highest`, exclusive).
    InitrdDoesNotFit {
        len: u64,
        lowest: u64,
        highest: u64,
    },
    /// Two areas of the layout overlap.
    Overlap {
        a: &'static str,
        b: &'static str,
    },
    /// The layout is unusable (RAM size, reserved area, misplaced zero page...).
    BadLayout {
        why: &'static str,
    },
    Paging(GuestPagingError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BootError::NotBzImage { why } => write!(f, "not a Linux bzImage: {why}"),
            BootError::UnsupportedProtocol { version } => write!(
                f,
                "boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later",
                version >> 8,
                version & 0xFF
            ),
            BootError::No64BitEntry => write!(
                f,
                "kernel has no 64-bit entry point (xloadflags bit XLF_KERNEL_64 is clear)"
            ),
            BootError::Truncated { needed, len } => write!(
                f,
                "the bzImage is {len} bytes but its header describes at least {needed} bytes"
            ),
            BootError::CmdlineTooLong { len, max } => write!(
                f,
                "the kernel command line is {len} bytes, the kernel accepts at most {max}"
            ),
            BootError::CmdlineHasNul { at } => {
                write!(f, "the kernel command line has a NUL byte at offset {at}")
            }
            BootError::KernelDoesNotFit { load, end, limit } => write!(
                f,
                "the kernel needs [{load:#x}, {end:#x}) but guest RAM for it ends at {limit:#x}"
            ),
            BootError::InitrdDoesNotFit {
                len,
                lowest,
                highest,
            } => write!(
                f,
                "the {len}-byte initrd does not fit between the kernel's end {lowest:#x} and {highest:#x}"
            ),
            BootError::Overlap { a, b } => write!(f, "the {a} overlaps the {b}"),
            BootError::BadLayout { why } => write!(f, "bad Linux guest layout: {why}"),
            BootError::Paging(e) => write!(f, "building the guest page tables: {e}"),
        }
    }
}

impl core::error::Error for BootError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            BootError::Paging(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// bzImage parsing
// ---------------------------------------------------------------------------------------

/// A validated bzImage: the setup header's fields and the protected-mode kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BzImage<'a> {
    image: &'a [u8],
    /// End of the setup header in the file (0x202 + byte at 0x201).
    header_end: usize,
    version: u16,
    setup_sects: u8,
    loadflags: u8,
    xloadflags: u16,
    kernel_alignment: u32,
    relocatable: bool,
    min_alignment: u8,
    initrd_addr_max: u32,
    cmdline_size: u32,
    payload_offset: u32,
    payload_length: u32,
    pref_address: u64,
    init_size: u32,
    kernel: &'a [u8],
}

fn le(bytes: &[u8], off: usize, len: usize) -> Option<u64> {
    let b = bytes.get(off..off.checked_add(len)?)?;
    Some(
        b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
    )
}

/// Parses and validates a bzImage (boot.rst, "The Real-Mode Kernel Header"). Never
/// panics, whatever the bytes.
pub fn parse_bzimage(bytes: &[u8]) -> Result<BzImage<'_>, BootError> {
    let not = |why| BootError::NotBzImage { why };
    if bytes.len() < MIN_HEADER_END {
        return Err(not("the file is too short for a setup header"));
    }
    let read = |off: usize, len: usize| le(bytes, off, len).unwrap_or(0);
    if read(OFF_BOOT_FLAG, 2) != u64::from(BOOT_FLAG) {
        return Err(not("no 0xAA55 boot flag at offset 0x1FE"));
    }
    if bytes.get(OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4) != Some(&HEADER_MAGIC[..]) {
        return Err(not(
            "no \"HdrS\" magic at offset 0x202 (an old zImage or not a kernel)",
        ));
    }
    let version = read(OFF_VERSION, 2) as u16;
    if version < MIN_PROTOCOL {
        return Err(BootError::UnsupportedProtocol { version });
    }
    if bytes.get(OFF_JUMP) != Some(&JUMP_OPCODE) {
        return Err(not(
            "the setup header does not start with a short jump at 0x200",
        ));
    }
    let header_end = 0x202 + usize::from(bytes.get(OFF_JUMP + 1).copied().unwrap_or(0));
    if header_end > MAX_HEADER_END {
        return Err(not(
            "the jump at 0x200 goes backwards (setup header length)",
        ));
    }
    if header_end < MIN_HEADER_END {
        return Err(not("the setup header ends before init_size (0x260)"));
    }
    // Fields past the header's end are absent, i.e. zero.
    let field = |off: usize, len: usize| {
        if off + len <= header_end {
            read(off, len)
        } else {
            0
        }
    };
    let loadflags = field(OFF_LOADFLAGS, 1) as u8;
    if loadflags & LOADED_HIGH == 0 {
        return Err(not("loadflags lacks LOADED_HIGH (a zImage, not a bzImage)"));
    }
    let xloadflags = field(OFF_XLOADFLAGS, 2) as u16;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry);
    }
    let setup_sects = match field(OFF_SETUP_SECTS, 1) as u8 {
        0 => 4,
        n => n,
    };
    let kernel_alignment = field(OFF_KERNEL_ALIGNMENT, 4) as u32;
    let relocatable = field(OFF_RELOCATABLE_KERNEL, 1) != 0;
    if relocatable && !kernel_alignment.is_power_of_two() {
        return Err(not(
            "kernel_alignment of a relocatable kernel is not a power of two",
        ));
    }
    // The real-mode part is the boot sector plus setup_sects sectors; the
    // protected-mode kernel follows, syssize 16-byte paragraphs long (protocol 2.04+,
    // 4 bytes). Bytes after it (e.g. a PE signature) are not part of the kernel.
    let kernel_start = (usize::from(setup_sects) + 1) * 512;
    let syssize = field(OFF_SYSSIZE, 4);
    let available = bytes.len().saturating_sub(kernel_start) as u64;
    // syssize is the protected-mode kernel's size rounded up to whole paragraphs, so
    // the file may end up to 15 bytes before syssize * 16; loaders (GRUB, QEMU's
    // -kernel) take the file's own length then. Shorter than that, it is truncated.
    let (kernel_len, needed) = if syssize == 0 {
        (available, kernel_start as u64 + available)
    } else {
        let described = syssize * 16;
        (
            described.min(available),
            kernel_start as u64 + described - (PARAGRAPH - 1),
        )
    };
    if (kernel_start as u64).saturating_add(kernel_len) < needed {
        return Err(BootError::Truncated {
            needed,
            len: bytes.len(),
        });
    }
    let needed = kernel_start as u64 + kernel_len;
    let kernel = usize::try_from(needed)
        .ok()
        .and_then(|end| bytes.get(kernel_start..end))
        .filter(|k| !k.is_empty());
    let Some(kernel) = kernel else {
        return Err(BootError::Truncated {
            needed: needed.max(kernel_start as u64 + 1),
            len: bytes.len(),
        });
    };
    if (kernel.len() as u64) < ENTRY_64_OFFSET + 1 {
        return Err(not(
            "the protected-mode kernel is too short to hold the 64-bit entry",
        ));
    }
    Ok(BzImage {
        image: bytes,
        header_end,
        version,
        setup_sects,
        loadflags,
        xloadflags,
        kernel_alignment,
        relocatable,
        min_alignment: field(OFF_MIN_ALIGNMENT, 1) as u8,
        initrd_addr_max: field(OFF_INITRD_ADDR_MAX, 4) as u32,
        cmdline_size: field(OFF_CMDLINE_SIZE, 4) as u32,
        payload_offset: field(OFF_PAYLOAD_OFFSET, 4) as u32,
        payload_length: field(OFF_PAYLOAD_LENGTH, 4) as u32,
        pref_address: field(OFF_PREF_ADDRESS, 8),
        init_size: field(OFF_INIT_SIZE, 4) as u32,
        kernel,
    })
}

impl<'a> BzImage<'a> {
    /// Boot protocol version, (major << 8) | minor.
    pub fn version(&self) -> u16 {
        self.version
    }
    /// Setup sectors after the boot sector (0 in the file already mapped to 4).
    pub fn setup_sects(&self) -> u8 {
        self.setup_sects
    }
    /// The setup header as in the file, [0x1F1, 0x202 + byte at 0x201): what the
    /// loader copies into the zero page at the same offsets.
    pub fn setup_header(&self) -> &'a [u8] {
        // parse_bzimage checked 0x1F1 < header_end <= bytes.len().
        self.image
            .get(SETUP_HEADER_START..self.header_end)
            .unwrap_or(&[])
    }
    /// End offset of the setup header.
    pub fn header_end(&self) -> usize {
        self.header_end
    }
    pub fn loadflags(&self) -> u8 {
        self.loadflags
    }
    pub fn xloadflags(&self) -> u16 {
        self.xloadflags
    }
    /// Alignment the kernel wants (relocatable kernels are realigned to it).
    pub fn kernel_alignment(&self) -> u32 {
        self.kernel_alignment
    }
    pub fn relocatable(&self) -> bool {
        self.relocatable
    }
    /// Minimum alignment as a power of two (0 = not given).
    pub fn min_alignment(&self) -> u8 {
        self.min_alignment
    }
    /// Highest address the initrd's last byte may occupy.
    pub fn initrd_addr_max(&self) -> u32 {
        self.initrd_addr_max
    }
    /// Longest command line, without the terminating NUL.
    pub fn cmdline_size(&self) -> u32 {
        self.cmdline_size
    }
    /// `(offset from the protected-mode kernel, length)` of the compressed payload,
    /// if the header names one.
    pub fn payload(&self) -> Option<(u32, u32)> {
        (self.payload_offset != 0).then_some((self.payload_offset, self.payload_length))
    }
    /// Preferred load address (0 = none given).
    pub fn pref_address(&self) -> u64 {
        self.pref_address
    }
    /// Contiguous memory the kernel needs from its runtime start before it reads its
    /// memory map.
    pub fn init_size(&self) -> u32 {
        self.init_size
    }
    /// The protected-mode kernel: file offset (setup_sects + 1) * 512, syssize * 16
    /// bytes long (the rest of the file when syssize is 0).
    pub fn kernel(&self) -> &'a [u8] {
        self.kernel
    }
    /// The human-readable version string `kernel_version` (0x20E) points to, if any:
    /// stored at that value + 0x200 in the setup area, NUL-terminated.
    pub fn kernel_version(&self) -> Option<&'a str> {
        let ptr = le(self.image, OFF_KERNEL_VERSION, 2)? as usize;
        if ptr == 0 {
            return None;
        }
        let setup_end = (usize::from(self.setup_sects) + 1) * 512;
        let s = self.image.get(ptr + 0x200..setup_end)?;
        let s = &s[..s.iter().position(|&b| b == 0)?];
        core::str::from_utf8(s).ok()
    }
    /// Where [`load_linux`] puts the protected-mode kernel: `pref_address`, or 1 MiB
    /// when the header gives none.
    pub fn load_address(&self) -> u64 {
        if self.pref_address != 0 {
            self.pref_address
        } else {
            DEFAULT_LOAD_ADDRESS
        }
    }
    /// boot.rst (`init_size`): the runtime start is `align_up(load_address,
    /// kernel_alignment)` for a relocatable kernel and `pref_address` otherwise.
    pub fn runtime_start(&self, load: u64) -> Option<u64> {
        if self.relocatable {
            let a = u64::from(self.kernel_alignment);
            load.checked_next_multiple_of(a)
        } else {
            Some(self.load_address())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Where the loader puts the boot structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    /// Guest RAM size; must equal the length of the `ram` slice.
    pub ram_bytes: u64,
    /// Guest-physical address of the zero page (4 KiB aligned, below 640 KiB).
    pub zero_page: u64,
    /// Guest-physical address of the command line (below 640 KiB).
    pub cmdline: u64,
    /// Bytes at the top of RAM reserved for sluice (GDT, stack, page tables) and
    /// reported as e820 reserved; at least `LONG_MODE_RESERVED`.
    pub reserved_top: u64,
}

impl LinuxLayout {
    /// Zero page at 0x7000 and command line at 0x20000: low RAM that nothing else uses
    /// once the kernel is entered directly (there is no real-mode setup code, stack or
    /// heap to place), room for a 64 KiB+ command line below 640 KiB; the top
    /// `LONG_MODE_RESERVED` (1 MiB) as for ELF64 guests.
    pub const fn default_for(ram_bytes: u64) -> Self {
        LinuxLayout {
            ram_bytes,
            zero_page: 0x7000,
            cmdline: 0x2_0000,
            reserved_top: LONG_MODE_RESERVED,
        }
    }
}

/// How the vCPU starts a Linux guest (boot.rst, "64-bit Boot Protocol"). CS is
/// [`LINUX_CODE_SEGMENT`], DS/ES/SS/FS/GS [`LINUX_DATA_SEGMENT`], GDTR =
/// (`gdt_base`, [`LINUX_GDT_LIMIT`]), RFLAGS = 0x2 (interrupts disabled), CR0.PG, CR4.PAE
/// and EFER.LME/LMA set, the other general-purpose registers zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxStart {
    /// Load address + 0x200.
    pub entry: u64,
    /// The zero page address, passed in RSI.
    pub rsi: u64,
    pub rsp: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    /// Where the protected-mode kernel was put, and the end of the memory it needs
    /// (runtime start + init_size, at least the end of the copied bytes).
    pub kernel_load: u64,
    pub kernel_end: u64,
    /// The initrd's guest-physical address and length (0, 0 without one).
    pub initrd_addr: u64,
    pub initrd_len: u64,
    pub cmdline_addr: u64,
}

fn put(buf: &mut [u8], off: usize, v: u64, len: usize) {
    for (i, b) in buf.iter_mut().skip(off).take(len).enumerate() {
        *b = (v >> (8 * i)) as u8;
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

struct RamTables<'a> {
    ram: &'a mut [u8],
    /// Never handed out for a valid request: `build_guest_identity_4level` only asks
    /// for frames inside the table area, which `load_linux` checked to be in RAM. It
    /// makes a bad request harmless instead of a panic.
    scratch: [u64; 512],
}

impl GuestTableMemory for RamTables<'_> {
    fn table_mut(&mut self, gpa: u64) -> &mut [u64; 512] {
        let base = self.ram.as_ptr() as usize;
        let ok = usize::try_from(gpa).ok().filter(|&s| {
            s.checked_add(4096).is_some_and(|e| e <= self.ram.len())
                && base.wrapping_add(s).is_multiple_of(8)
        });
        match ok {
            // SAFETY: [s, s + 4096) is inside `ram`, which this struct borrows
            // mutably, and its start is 8-byte aligned, so it is a valid, exclusive
            // [u64; 512] for the lifetime of the returned borrow of `self`.
            Some(s) => unsafe { &mut *self.ram.as_mut_ptr().add(s).cast::<[u64; 512]>() },
            None => &mut self.scratch,
        }
    }
}

/// Loads `image` for the 64-bit boot protocol into `ram` (guest-physical 0 = `ram[0]`,
/// expected zeroed, 8-byte aligned, `layout.ram_bytes` long): the protected-mode
/// kernel at [`BzImage::load_address`], the zero page with the setup header, command
/// line, initrd and e820 map, the command line, the initrd as high as allowed, and in
/// the reserved top area the GDT ([`linux_gdt`]) and identity page tables for all RAM.
pub fn load_linux(
    ram: &mut [u8],
    image: &BzImage,
    cmdline: &str,
    initrd: Option<&[u8]>,
    layout: LinuxLayout,
) -> Result<LinuxStart, BootError> {
    let bad = |why| BootError::BadLayout { why };
    let ram_bytes = layout.ram_bytes;
    if ram.len() as u64 != ram_bytes {
        return Err(bad("the guest RAM slice is not ram_bytes long"));
    }
    if ram.as_ptr().align_offset(8) != 0 {
        return Err(bad("guest RAM must be 8-byte aligned"));
    }
    let lm = LongModeLayout::for_ram(ram_bytes)
        .ok_or(bad("too little RAM for the reserved top area"))?;
    if layout.reserved_top < LONG_MODE_RESERVED {
        return Err(bad(
            "reserved_top is smaller than the area sluice builds in",
        ));
    }
    if !layout.reserved_top.is_multiple_of(PAGE) {
        return Err(bad("reserved_top is not a multiple of 4 KiB"));
    }
    let reserved_start = ram_bytes
        .checked_sub(layout.reserved_top)
        .filter(|&s| s > ONE_MIB)
        .ok_or(bad("reserved_top leaves no RAM above 1 MiB"))?;

    // Zero page and command line: low RAM (e820 type 1, below 0x9FC00).
    let zp = layout.zero_page;
    if !zp.is_multiple_of(PAGE)
        || zp
            .checked_add(ZERO_PAGE_SIZE as u64)
            .is_none_or(|e| e > LOW_RAM_END)
    {
        return Err(bad("the zero page must be 4 KiB aligned and below 0x9FC00"));
    }
    let zp_area = (zp, zp + ZERO_PAGE_SIZE as u64);
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(BootError::CmdlineHasNul { at });
    }
    if cmdline.len() as u64 > u64::from(image.cmdline_size()) {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: image.cmdline_size(),
        });
    }
    let cl_area = (
        layout.cmdline,
        layout.cmdline.saturating_add(cmdline.len() as u64 + 1),
    );
    if cl_area.1 > LOW_RAM_END {
        return Err(bad("the command line must end below 0x9FC00"));
    }
    if overlaps(zp_area, cl_area) {
        return Err(BootError::Overlap {
            a: "command line",
            b: "zero page",
        });
    }

    // Kernel: at its preferred address; [load, end) covers the copied bytes and the
    // init_size bytes from the runtime start (boot.rst, init_size).
    let load = image.load_address();
    let body = image.kernel();
    let end = image
        .runtime_start(load)
        .and_then(|rs| rs.checked_add(u64::from(image.init_size())))
        .map(|e| e.max(load.saturating_add(body.len() as u64)));
    let end = match end {
        Some(e) if load >= ONE_MIB && e <= reserved_start => e,
        _ => {
            return Err(BootError::KernelDoesNotFit {
                load,
                end: end.unwrap_or(u64::MAX),
                limit: reserved_start,
            })
        }
    };

    // Initrd: page-aligned, as high as possible below the reserved area and
    // initrd_addr_max (the address of the highest byte it may occupy), above the kernel.
    let (initrd_addr, initrd_len) = match initrd {
        Some(rd) if !rd.is_empty() => {
            let len = rd.len() as u64;
            let highest = reserved_start.min(u64::from(image.initrd_addr_max()) + 1);
            let at = highest
                .checked_sub(len)
                .map(|a| a & !(PAGE - 1))
                .filter(|&a| a >= end);
            let Some(at) = at else {
                return Err(BootError::InitrdDoesNotFit {
                    len,
                    lowest: end,
                    highest,
                });
            };
            (at, len)
        }
        _ => (0, 0),
    };

    // Everything is checked: write. Ranges below are inside RAM (all end at or below
    // reserved_start < ram_bytes == ram.len()).
    let range = |a: u64, len: usize| a as usize..a as usize + len;
    ram[range(load, body.len())].copy_from_slice(body);
    if let Some(rd) = initrd.filter(|_| initrd_len != 0) {
        ram[range(initrd_addr, rd.len())].copy_from_slice(rd);
    }
    let cl = &mut ram[range(layout.cmdline, cmdline.len() + 1)];
    cl[..cmdline.len()].copy_from_slice(cmdline.as_bytes());
    cl[cmdline.len()] = 0;

    // Zero page (boot.rst, "64-bit Boot Protocol"): all zero, then the setup header
    // from the image at the same offsets, then the fields a loader writes.
    let z = &mut ram[range(zp, ZERO_PAGE_SIZE)];
    z.fill(0);
    let hdr = image.setup_header();
    z[SETUP_HEADER_START..SETUP_HEADER_START + hdr.len()].copy_from_slice(hdr);
    z[OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED;
    // code32_start: a relocatable kernel at a nonstandard address gets its load
    // address here (boot.rst, code32_start); unused by the 64-bit entry.
    put(z, OFF_CODE32_START, load & 0xFFFF_FFFF, 4);
    put(z, OFF_CMD_LINE_PTR, layout.cmdline & 0xFFFF_FFFF, 4);
    put(z, ZP_EXT_CMD_LINE_PTR, layout.cmdline >> 32, 4);
    put(z, OFF_RAMDISK_IMAGE, initrd_addr & 0xFFFF_FFFF, 4);
    put(z, ZP_EXT_RAMDISK_IMAGE, initrd_addr >> 32, 4);
    put(z, OFF_RAMDISK_SIZE, initrd_len & 0xFFFF_FFFF, 4);
    put(z, ZP_EXT_RAMDISK_SIZE, initrd_len >> 32, 4);
    let e820 = [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, ONE_MIB - LOW_RAM_END, E820_RESERVED),
        (ONE_MIB, reserved_start - ONE_MIB, E820_RAM),
        (reserved_start, layout.reserved_top, E820_RESERVED),
    ];
    z[ZP_E820_ENTRIES] = e820.len() as u8;
    for (i, &(addr, size, kind)) in e820.iter().enumerate() {
        let at = ZP_E820_TABLE + i * E820_ENTRY_LEN;
        put(z, at, addr, 8);
        put(z, at + 8, size, 8);
        put(z, at + 16, u64::from(kind), 4);
    }

    // GDT and identity page tables in the reserved top area (LongModeLayout).
    let cr3 = long_mode::build_guest_identity_4level(
        &mut RamTables {
            ram: &mut *ram,
            scratch: [0; 512],
        },
        lm.tables_gpa,
        ram_bytes,
    )
    .map_err(BootError::Paging)?;
    for (i, d) in linux_gdt().iter().enumerate() {
        put(ram, lm.gdt_gpa as usize + i * 8, *d, 8);
    }

    Ok(LinuxStart {
        entry: load + ENTRY_64_OFFSET,
        rsi: zp,
        rsp: lm.stack_top,
        cr3,
        gdt_base: lm.gdt_gpa,
        kernel_load: load,
        kernel_end: end,
        initrd_addr,
        initrd_len,
        cmdline_addr: layout.cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Guest RAM for tests, 8-byte aligned like the kernel's page-aligned block.
    struct Ram(Vec<u64>);

    impl Ram {
        fn new(mib: u64) -> Self {
            Ram(vec![0; (mib << 17) as usize])
        }
        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: the same memory viewed as bytes; u8 has weaker alignment.
            unsafe { core::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
        }
    }

    /// The header fields a synthetic bzImage is built from.
    #[derive(Clone)]
    struct Hdr {
        setup_sects: u8,
        version: u16,
        jump_len: u8,
        loadflags: u8,
        xloadflags: u16,
        kernel_alignment: u32,
        relocatable: bool,
        initrd_addr_max: u32,
        cmdline_size: u32,
        pref_address: u64,
        init_size: u32,
        /// syssize in paragraphs; None = body length / 16.
        syssize: Option<u32>,
        body_len: usize,
        trailer: usize,
    }

    impl Hdr {
        fn new() -> Self {
            Hdr {
                setup_sects: 3,
                version: 0x020F,
                jump_len: 0x6A, // header ends at 0x26C, like Linux 6.x
                loadflags: LOADED_HIGH,
                xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
                kernel_alignment: 0x20_0000,
                relocatable: true,
                initrd_addr_max: 0x7FFF_FFFF,
                cmdline_size: 2048,
                pref_address: 16 * MIB,
                init_size: 8 * MIB as u32,
                syssize: None,
                body_len: 0x1000,
                trailer: 0,
            }
        }

        fn setup_len(&self) -> usize {
            (usize::from(if self.setup_sects == 0 {
                4
            } else {
                self.setup_sects
            }) + 1)
                * 512
        }

        fn body(&self) -> Vec<u8> {
            (0..self.body_len).map(|i| (i * 7 + 3) as u8).collect()
        }

        fn build(&self) -> Vec<u8> {
            let mut f = vec![0u8; self.setup_len()];
            let mut w = |off: usize, v: u64, len: usize| put(&mut f, off, v, len);
            w(0x1EF, 0xFF, 1); // sentinel as the kernel's build puts it
            w(OFF_SETUP_SECTS, u64::from(self.setup_sects), 1);
            let syssize = self.syssize.unwrap_or((self.body_len / 16) as u32);
            w(OFF_SYSSIZE, u64::from(syssize), 4);
            w(0x1FA, 0xFFFF, 2); // vid_mode "normal"
            w(OFF_BOOT_FLAG, u64::from(BOOT_FLAG), 2);
            w(OFF_JUMP, u64::from(JUMP_OPCODE), 1);
            w(OFF_JUMP + 1, u64::from(self.jump_len), 1);
            w(OFF_VERSION, u64::from(self.version), 2);
            w(OFF_KERNEL_VERSION, 0x400, 2); // string at 0x600, inside the setup
            w(OFF_LOADFLAGS, u64::from(self.loadflags), 1);
            w(OFF_CODE32_START, 0x10_0000, 4);
            w(OFF_INITRD_ADDR_MAX, u64::from(self.initrd_addr_max), 4);
            w(OFF_KERNEL_ALIGNMENT, u64::from(self.kernel_alignment), 4);
            w(OFF_RELOCATABLE_KERNEL, u64::from(self.relocatable), 1);
            w(OFF_MIN_ALIGNMENT, 21, 1);
            w(OFF_XLOADFLAGS, u64::from(self.xloadflags), 2);
            w(OFF_CMDLINE_SIZE, u64::from(self.cmdline_size), 4);
            w(OFF_PAYLOAD_OFFSET, 0x3B4, 4);
            w(OFF_PAYLOAD_LENGTH, 0x800, 4);
            w(OFF_PREF_ADDRESS, self.pref_address, 8);
            w(OFF_INIT_SIZE, u64::from(self.init_size), 4);
            w(0x264, 0x190, 4); // handover_offset
            w(0x268, 0x0ABC_DEF0, 4); // kernel_info_offset
            f[HEADER_MAGIC_RANGE].copy_from_slice(&HEADER_MAGIC);
            if self.setup_len() > 0x620 {
                f[0x600..0x60C].copy_from_slice(b"6.1.0-test\0\0");
            }
            f.extend_from_slice(&self.body());
            f.extend(std::iter::repeat_n(0x5A, self.trailer));
            f
        }
    }

    const HEADER_MAGIC_RANGE: core::ops::Range<usize> = OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4;

    fn rd(b: &[u8], off: usize, len: usize) -> u64 {
        le(b, off, len).unwrap()
    }

    fn not_bz(bytes: &[u8]) -> &'static str {
        match parse_bzimage(bytes) {
            Err(BootError::NotBzImage { why }) => why,
            other => panic!("expected NotBzImage, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_valid_image() {
        let h = Hdr::new();
        let bytes = h.build();
        let bz = parse_bzimage(&bytes).unwrap();
        assert_eq!(bz.version(), 0x020F);
        assert_eq!(bz.setup_sects(), 3);
        assert_eq!(bz.header_end(), 0x26C);
        assert_eq!(bz.setup_header().len(), 0x26C - 0x1F1);
        assert_eq!(bz.setup_header()[0], 3);
        assert_eq!(bz.kernel(), &h.body()[..]);
        assert_eq!(bz.loadflags(), LOADED_HIGH);
        assert_eq!(bz.xloadflags(), 3);
        assert_eq!(bz.kernel_alignment(), 0x20_0000);
        assert!(bz.relocatable());
        assert_eq!(bz.min_alignment(), 21);
        assert_eq!(bz.initrd_addr_max(), 0x7FFF_FFFF);
        assert_eq!(bz.cmdline_size(), 2048);
        assert_eq!(bz.payload(), Some((0x3B4, 0x800)));
        assert_eq!(bz.pref_address(), 16 * MIB);
        assert_eq!(bz.load_address(), 16 * MIB);
        assert_eq!(bz.init_size(), 8 << 20);
        assert_eq!(bz.kernel_version(), Some("6.1.0-test"));
    }

    #[test]
    fn setup_sects_zero_means_four_and_syssize_bounds_the_kernel() {
        let mut h = Hdr::new();
        h.setup_sects = 0;
        h.trailer = 300; // e.g. an appended signature: not part of the kernel
        let bytes = h.build();
        let bz = parse_bzimage(&bytes).unwrap();
        assert_eq!(bz.setup_sects(), 4);
        assert_eq!(bz.kernel(), &bytes[5 * 512..5 * 512 + h.body_len]);
        // syssize 0: the rest of the file.
        h.syssize = Some(0);
        let bytes = h.build();
        assert_eq!(
            parse_bzimage(&bytes).unwrap().kernel().len(),
            h.body_len + 300
        );
        // No pref_address: 1 MiB.
        let mut h = Hdr::new();
        h.pref_address = 0;
        assert_eq!(parse_bzimage(&h.build()).unwrap().load_address(), MIB);
    }

    #[test]
    fn not_a_bzimage() {
        let good = Hdr::new().build();
        assert!(not_bz(&good[..0x263]).contains("too short"));
        assert!(not_bz(&[]).contains("too short"));
        assert!(not_bz(&vec![0u8; 4096]).contains("0xAA55"));
        let mut b = good.clone();
        b[0x202] = b'X';
        assert!(not_bz(&b).contains("HdrS"));
        let mut b = good.clone();
        b[0x200] = 0xE9;
        assert!(not_bz(&b).contains("short jump"));
        let mut b = good.clone();
        b[0x201] = 0x80;
        assert!(not_bz(&b).contains("backwards"));
        let mut h = Hdr::new();
        h.jump_len = 0x5E; // header ends at 0x260, before init_size
        assert!(not_bz(&h.build()).contains("before init_size"));
        let mut h = Hdr::new();
        h.loadflags = 0;
        assert!(not_bz(&h.build()).contains("LOADED_HIGH"));
        let mut h = Hdr::new();
        h.kernel_alignment = 0x30_0000;
        assert!(not_bz(&h.build()).contains("power of two"));
        h.relocatable = false; // alignment only matters for relocatable kernels
        assert!(parse_bzimage(&h.build()).is_ok());
        let mut h = Hdr::new();
        h.body_len = 0x200;
        assert!(not_bz(&h.build()).contains("64-bit entry"));
        let e = parse_bzimage(&good[..0x100]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a Linux bzImage: the file is too short for a setup header"
        );
    }

    #[test]
    fn old_protocol_and_no_64bit_entry() {
        let mut h = Hdr::new();
        h.version = 0x020B;
        let e = parse_bzimage(&h.build()).unwrap_err();
        assert_eq!(e, BootError::UnsupportedProtocol { version: 0x020B });
        assert_eq!(
            e.to_string(),
            "boot protocol 2.11 is too old: the 64-bit entry needs 2.12 or later"
        );
        h.version = 0x020C;
        assert!(parse_bzimage(&h.build()).is_ok());
        let mut h = Hdr::new();
        h.xloadflags = XLF_CAN_BE_LOADED_ABOVE_4G;
        let e = parse_bzimage(&h.build()).unwrap_err();
        assert_eq!(e, BootError::No64BitEntry);
        assert!(e
            .to_string()
            .starts_with("kernel has no 64-bit entry point"));
    }

    #[test]
    fn a_file_may_end_inside_the_last_paragraph_syssize_counts() {
        // What the kernel's build writes: syssize rounded up, the file not padded.
        let mut h = Hdr::new();
        h.body_len = 0x1000 - 15;
        h.syssize = Some(0x100);
        let bytes = h.build();
        let bz = parse_bzimage(&bytes).unwrap();
        assert_eq!(bz.kernel(), &bytes[2048..]);
        assert_eq!(bz.kernel().len(), 0x1000 - 15);
        // One byte less is a whole paragraph short: truncated.
        h.body_len = 0x1000 - 16;
        let bytes = h.build();
        assert_eq!(
            parse_bzimage(&bytes).unwrap_err(),
            BootError::Truncated {
                needed: 2048 + 0x1000 - 15,
                len: bytes.len()
            }
        );
    }

    #[test]
    fn truncated_kernel() {
        let mut h = Hdr::new();
        h.syssize = Some(0x200); // 8 KiB claimed, 4 KiB present
        let bytes = h.build();
        let e = parse_bzimage(&bytes).unwrap_err();
        assert_eq!(
            e,
            BootError::Truncated {
                needed: 2048 + 0x2000 - 15,
                len: bytes.len()
            }
        );
        assert!(e.to_string().contains("describes at least 10225 bytes"));
        // Nothing after the setup sectors at all.
        let mut h = Hdr::new();
        h.syssize = Some(0);
        h.body_len = 0;
        assert!(matches!(
            parse_bzimage(&h.build()),
            Err(BootError::Truncated { needed: 2049, .. })
        ));
    }

    fn load_default(
        ram: &mut Ram,
        bytes: &[u8],
        cmdline: &str,
        initrd: Option<&[u8]>,
    ) -> Result<LinuxStart, BootError> {
        let r = ram.bytes();
        let layout = LinuxLayout::default_for(r.len() as u64);
        load_linux(r, &parse_bzimage(bytes).unwrap(), cmdline, initrd, layout)
    }

    #[test]
    fn zero_page_kernel_cmdline_initrd_and_tables() {
        let h = Hdr::new();
        let bytes = h.build();
        let mut ram = Ram::new(64);
        let initrd: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let cmdline = "console=ttyS0 acpi=off pci=off nolapic noapic";
        let s = load_default(&mut ram, &bytes, cmdline, Some(&initrd)).unwrap();
        let r = ram.bytes();
        let reserved_start = 63 * MIB;
        let lm = LongModeLayout::for_ram(64 * MIB).unwrap();
        // Initrd: page-aligned, as high as it goes below the reserved top.
        let initrd_at = (reserved_start - 10_000) & !0xFFF;
        assert_eq!(
            s,
            LinuxStart {
                entry: 16 * MIB + 0x200,
                rsi: 0x7000,
                rsp: lm.stack_top,
                cr3: lm.tables_gpa,
                gdt_base: reserved_start,
                kernel_load: 16 * MIB,
                kernel_end: 24 * MIB,
                initrd_addr: initrd_at,
                initrd_len: 10_000,
                cmdline_addr: 0x2_0000,
            }
        );
        // Kernel, initrd and command line bytes.
        assert_eq!(&r[16 << 20..(16 << 20) + 0x1000], &h.body()[..]);
        assert_eq!(&r[initrd_at as usize..][..10_000], &initrd[..]);
        assert_eq!(&r[0x2_0000..0x2_0000 + cmdline.len()], cmdline.as_bytes());
        assert_eq!(r[0x2_0000 + cmdline.len()], 0);

        // Zero page: the setup header copied at its own offsets...
        let z = &r[0x7000..0x8000];
        // (type_of_loader, code32_start, ramdisk_image/size and cmd_line_ptr are the
        // loader's to write.)
        assert_eq!(&z[0x1F1..0x210], &bytes[0x1F1..0x210]);
        assert_eq!(&z[0x211..0x214], &bytes[0x211..0x214]);
        assert_eq!(&z[0x220..0x228], &bytes[0x220..0x228]);
        assert_eq!(&z[0x22C..0x26C], &bytes[0x22C..0x26C]);
        assert_eq!(&z[0x202..0x206], b"HdrS");
        assert_eq!(rd(z, 0x206, 2), 0x020F);
        assert_eq!(rd(z, 0x260, 4), 8 << 20);
        // ...nothing before it or after its end (sentinel 0x1EF stays 0)...
        assert!(z[..0x1E8].iter().all(|&b| b == 0));
        assert_eq!(z[0x1EF], 0);
        assert!(z[0x26C..0x2D0].iter().all(|&b| b == 0));
        // ...and the loader's fields.
        assert_eq!(z[0x210], 0xFF);
        assert_eq!(z[0x211], LOADED_HIGH);
        assert_eq!(rd(z, 0x214, 4), 16 * MIB);
        assert_eq!(rd(z, 0x228, 4), 0x2_0000);
        assert_eq!(rd(z, 0x0C8, 4), 0);
        assert_eq!(rd(z, 0x218, 4), initrd_at);
        assert_eq!(rd(z, 0x21C, 4), 10_000);
        assert_eq!(rd(z, 0x0C0, 4), 0);
        assert_eq!(rd(z, 0x0C4, 4), 0);
        // e820.
        assert_eq!(z[0x1E8], 4);
        let e820: Vec<(u64, u64, u64)> = (0..4)
            .map(|i| {
                let at = 0x2D0 + 20 * i;
                (rd(z, at, 8), rd(z, at + 8, 8), rd(z, at + 16, 4))
            })
            .collect();
        assert_eq!(
            e820,
            [
                (0, 0x9_FC00, 1),
                (0x9_FC00, 0x100000 - 0x9_FC00, 2),
                (MIB, 62 * MIB, 1),
                (63 * MIB, MIB, 2),
            ]
        );
        assert!(z[0x2D0 + 80..].iter().all(|&b| b == 0));

        // GDT and page tables.
        for (i, d) in linux_gdt().iter().enumerate() {
            assert_eq!(rd(r, (63 << 20) + i * 8, 8), *d);
        }
        let pml4e = rd(r, lm.tables_gpa as usize, 8);
        assert_eq!(pml4e & !0xFFF, lm.tables_gpa + 0x1000);
    }

    #[test]
    fn no_initrd_and_empty_initrd_leave_the_fields_zero() {
        let bytes = Hdr::new().build();
        for initrd in [None, Some(&[][..])] {
            let mut ram = Ram::new(32);
            let s = load_default(&mut ram, &bytes, "", initrd).unwrap();
            assert_eq!((s.initrd_addr, s.initrd_len), (0, 0));
            let z = &ram.bytes()[0x7000..0x8000];
            assert_eq!(rd(z, 0x218, 4), 0);
            assert_eq!(rd(z, 0x21C, 4), 0);
            assert_eq!(ram.bytes()[0x2_0000], 0); // empty command line: just the NUL
            assert_eq!(rd(ram.bytes(), 0x7228, 4), 0x2_0000);
        }
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let mut h = Hdr::new();
        h.initrd_addr_max = 0x01FF_FFFF; // last byte at 32 MiB - 1
        let mut ram = Ram::new(128);
        let s = load_default(&mut ram, &h.build(), "", Some(&[1; 5000])).unwrap();
        assert_eq!(s.initrd_addr, 32 * MIB - 0x2000);
        assert!(s.initrd_addr + s.initrd_len <= 32 * MIB);
    }

    #[test]
    fn initrd_does_not_fit() {
        // 32 MiB RAM: kernel [16, 24) MiB, reserved from 31 MiB: 7 MiB free.
        let bytes = Hdr::new().build();
        let mut ram = Ram::new(32);
        assert!(load_default(&mut ram, &bytes, "", Some(&vec![0; 7 << 20])).is_ok());
        let e = load_default(&mut ram, &bytes, "", Some(&vec![0; (7 << 20) + 1])).unwrap_err();
        assert_eq!(
            e,
            BootError::InitrdDoesNotFit {
                len: (7 << 20) + 1,
                lowest: 24 * MIB,
                highest: 31 * MIB
            }
        );
        assert!(e.to_string().contains("does not fit between"));
        // initrd_addr_max below the kernel.
        let mut h = Hdr::new();
        h.initrd_addr_max = 0x00FF_FFFF;
        let e = load_default(&mut ram, &h.build(), "", Some(&[0; 16])).unwrap_err();
        assert!(matches!(
            e,
            BootError::InitrdDoesNotFit {
                highest: 0x100_0000,
                ..
            }
        ));
    }

    #[test]
    fn command_line_checks() {
        let mut h = Hdr::new();
        h.cmdline_size = 10;
        let bytes = h.build();
        let mut ram = Ram::new(32);
        assert!(load_default(&mut ram, &bytes, "0123456789", None).is_ok());
        let e = load_default(&mut ram, &bytes, "0123456789a", None).unwrap_err();
        assert_eq!(e, BootError::CmdlineTooLong { len: 11, max: 10 });
        assert_eq!(
            e.to_string(),
            "the kernel command line is 11 bytes, the kernel accepts at most 10"
        );
        let e = load_default(&mut ram, &bytes, "ab\0c", None).unwrap_err();
        assert_eq!(e, BootError::CmdlineHasNul { at: 2 });
    }

    #[test]
    fn kernel_does_not_fit() {
        let mut h = Hdr::new();
        h.init_size = 15 << 20; // [16, 31) MiB fits exactly below 31 MiB
        let mut ram = Ram::new(32);
        assert!(load_default(&mut ram, &h.build(), "", None).is_ok());
        h.init_size += 1;
        let e = load_default(&mut ram, &h.build(), "", None).unwrap_err();
        assert_eq!(
            e,
            BootError::KernelDoesNotFit {
                load: 16 * MIB,
                end: 31 * MIB + 1,
                limit: 31 * MIB
            }
        );
        assert!(e.to_string().contains("ends at 0x1f00000"));
        // Below 1 MiB is never used for the kernel.
        let mut h = Hdr::new();
        h.pref_address = 0x8_0000;
        h.relocatable = false;
        assert!(matches!(
            load_default(&mut ram, &h.build(), "", None),
            Err(BootError::KernelDoesNotFit { load: 0x8_0000, .. })
        ));
        // init_size counts from the aligned runtime start of a relocatable kernel.
        let mut h = Hdr::new();
        h.pref_address = 16 * MIB + 0x1000;
        let mut ram = Ram::new(64);
        let s = load_default(&mut ram, &h.build(), "", None).unwrap();
        assert_eq!(s.kernel_end, 18 * MIB + 8 * MIB);
        assert_eq!(s.entry, 16 * MIB + 0x1200);
    }

    #[test]
    fn bad_layouts() {
        let bytes = Hdr::new().build();
        let bz = parse_bzimage(&bytes).unwrap();
        let mut ram = Ram::new(32);
        let r = ram.bytes();
        let base = LinuxLayout::default_for(32 * MIB);
        let why = |r: &mut [u8], l: LinuxLayout| match load_linux(r, &bz, "x", None, l) {
            Err(BootError::BadLayout { why }) => why,
            other => panic!("{other:?}"),
        };
        assert!(why(
            r,
            LinuxLayout {
                ram_bytes: 64 * MIB,
                ..base
            }
        )
        .contains("not ram_bytes"));
        assert!(why(
            &mut r[1..],
            LinuxLayout {
                ram_bytes: 32 * MIB - 1,
                ..base
            }
        )
        .contains("aligned"));
        assert!(why(
            r,
            LinuxLayout {
                reserved_top: 0x1000,
                ..base
            }
        )
        .contains("smaller"));
        assert!(why(
            r,
            LinuxLayout {
                reserved_top: MIB + 1,
                ..base
            }
        )
        .contains("4 KiB"));
        assert!(why(
            r,
            LinuxLayout {
                reserved_top: 31 * MIB,
                ..base
            }
        )
        .contains("above 1 MiB"));
        assert!(why(
            r,
            LinuxLayout {
                zero_page: 0x7100,
                ..base
            }
        )
        .contains("zero page"));
        assert!(why(
            r,
            LinuxLayout {
                zero_page: 0x9F000,
                ..base
            }
        )
        .contains("zero page"));
        assert!(why(
            r,
            LinuxLayout {
                cmdline: 0x9FBFF,
                ..base
            }
        )
        .contains("command line"));
        assert!(why(
            r,
            LinuxLayout {
                cmdline: u64::MAX,
                ..base
            }
        )
        .contains("command line"));
        assert_eq!(
            load_linux(
                r,
                &bz,
                "x",
                None,
                LinuxLayout {
                    cmdline: 0x7FFF,
                    ..base
                }
            ),
            Err(BootError::Overlap {
                a: "command line",
                b: "zero page"
            })
        );
        let mut tiny = Ram::new(1);
        let t = tiny.bytes();
        assert!(why(t, LinuxLayout::default_for(MIB)).contains("above 1 MiB"));
        let t = &mut t[..0x8_0000];
        assert!(why(t, LinuxLayout::default_for(0x8_0000)).contains("too little RAM"));
        // A bigger reserved top shrinks the RAM entry and moves the initrd down.
        let l = LinuxLayout {
            reserved_top: 4 * MIB,
            ..base
        };
        let s = load_linux(r, &bz, "", Some(&[7; 4096]), l).unwrap();
        assert_eq!(s.initrd_addr, 28 * MIB - 4096);
        assert_eq!(rd(r, 0x7000 + 0x2D0 + 40 + 8, 8), 27 * MIB);
        assert_eq!(rd(r, 0x7000 + 0x2D0 + 60, 8), 28 * MIB);
        // RAM not a multiple of 2 MiB: the page-table builder refuses.
        let mut odd = Ram::new(33);
        let o = odd.bytes();
        let len = o.len() - 0x1000;
        let o = &mut o[..len];
        let e = load_linux(o, &bz, "", None, LinuxLayout::default_for(len as u64)).unwrap_err();
        assert_eq!(e, BootError::Paging(GuestPagingError::Misaligned));
        assert!(
            e.to_string().starts_with(
                "building the guest page tables: guest RAM is not a multiple of 2 MiB"
            ),
            "{e}"
        );
        let source = core::error::Error::source(&e).expect("a paging error has a source");
        assert_eq!(
            source.downcast_ref::<GuestPagingError>(),
            Some(&GuestPagingError::Misaligned)
        );
    }

    #[test]
    fn gdt_and_segments_follow_the_64bit_protocol() {
        let g = linux_gdt();
        assert_eq!(g[0], 0);
        assert_eq!(g[1], 0);
        assert_eq!(g[2], 0x00AF_9B00_0000_FFFF); // execute/read, L=1, G=1, flat
        assert_eq!(g[3], 0x00CF_9300_0000_FFFF); // read/write, D/B=1, G=1, flat
        assert_eq!(LINUX_GDT_LIMIT, 31);
        assert_eq!(LINUX_CODE_SEGMENT.selector, 0x10);
        assert_eq!(LINUX_CODE_SEGMENT.access_rights, 0xA09B);
        assert_eq!(LINUX_DATA_SEGMENT.selector, 0x18);
        assert_eq!(LINUX_DATA_SEGMENT.access_rights, 0xC093);
        assert_eq!(usize::from(BOOT_CS / 8), 2);
        assert_eq!(usize::from(BOOT_DS / 8), 3);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let good = Hdr::new().build();
        // Every prefix.
        for n in 0..good.len() {
            let _ = parse_bzimage(&good[..n]);
        }
        // Every header byte set to a few values; images that parse must also load
        // (or fail cleanly).
        let mut ram = Ram::new(32);
        let r = ram.bytes();
        for off in 0x1E0..0x280 {
            for v in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                let mut b = good.clone();
                b[off] = v;
                if let Ok(bz) = parse_bzimage(&b) {
                    let _ = bz.kernel_version();
                    let _ = load_linux(
                        r,
                        &bz,
                        "console=ttyS0",
                        Some(&[1; 100]),
                        LinuxLayout::default_for(32 * MIB),
                    );
                }
            }
        }
        // A pseudo-random spray.
        let mut x = 0x1234_5678_9ABC_DEF0u64;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = 0x1E0 + (x % 0xA0) as usize;
                b[i] = (x >> 32) as u8;
            }
            if let Ok(bz) = parse_bzimage(&b) {
                let _ = load_linux(r, &bz, "", None, LinuxLayout::default_for(32 * MIB));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Linux bundle: how kernel, initrd and command line travel as one guest payload.
// ---------------------------------------------------------------------------------------

/// Magic of a Linux bundle (`guest.entry = linux`).
pub const BUNDLE_MAGIC: [u8; 8] = *b"SLXLINUX";
/// Header: magic, u32 command-line length, u32 reserved, u64 kernel length, u64 initrd
/// length (little endian); then the command line, the kernel and the initrd, each
/// starting at a multiple of 16 bytes.
pub const BUNDLE_HEADER_LEN: usize = 32;

const fn align16(n: usize) -> usize {
    (n + 15) & !15
}

/// The three parts of a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bundle<'a> {
    pub cmdline: &'a str,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
}

/// Offsets of the parts in a bundle of these lengths: (cmdline, kernel, initrd, total).
pub fn bundle_layout(cmdline: usize, kernel: usize, initrd: usize) -> (usize, usize, usize, usize) {
    let c = BUNDLE_HEADER_LEN;
    let k = align16(c + cmdline);
    let i = align16(k + kernel);
    (c, k, i, i + initrd)
}

/// The bundle header for these parts (the caller appends the parts at the offsets of
/// [`bundle_layout`], zero-padded).
pub fn encode_bundle_header(
    cmdline: &str,
    kernel: &[u8],
    initrd: &[u8],
) -> [u8; BUNDLE_HEADER_LEN] {
    let mut h = [0u8; BUNDLE_HEADER_LEN];
    h[..8].copy_from_slice(&BUNDLE_MAGIC);
    h[8..12].copy_from_slice(&(cmdline.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(kernel.len() as u64).to_le_bytes());
    h[24..32].copy_from_slice(&(initrd.len() as u64).to_le_bytes());
    h
}

/// Splits a bundle; never panics.
pub fn decode_bundle(bytes: &[u8]) -> Result<Bundle<'_>, BootError> {
    let bad = |why| Err(BootError::NotBzImage { why });
    if bytes.len() < BUNDLE_HEADER_LEN || bytes[..8] != BUNDLE_MAGIC {
        return bad("not a Linux bundle (missing SLXLINUX header)");
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let (Ok(kernel), Ok(initrd)) = (usize::try_from(u64_at(16)), usize::try_from(u64_at(24)))
    else {
        return bad("bundle lengths overflow");
    };
    let cmdline = u32_at(8) as usize;
    if cmdline > bytes.len() || kernel > bytes.len() || initrd > bytes.len() {
        return bad("bundle is truncated");
    }
    let (c, k, i, end) = bundle_layout(cmdline, kernel, initrd);
    if end > bytes.len() {
        return bad("bundle is truncated");
    }
    let Ok(cmdline) = core::str::from_utf8(&bytes[c..c + cmdline]) else {
        return bad("bundle command line is not UTF-8");
    };
    Ok(Bundle {
        cmdline,
        kernel: &bytes[k..k + kernel],
        initrd: &bytes[i..i + initrd],
    })
}

#[cfg(test)]
mod bundle_tests {
    use super::*;

    fn bundle(cmdline: &str, kernel: &[u8], initrd: &[u8]) -> Vec<u8> {
        let (c, k, i, end) = bundle_layout(cmdline.len(), kernel.len(), initrd.len());
        let mut v = vec![0u8; end];
        v[..BUNDLE_HEADER_LEN].copy_from_slice(&encode_bundle_header(cmdline, kernel, initrd));
        v[c..c + cmdline.len()].copy_from_slice(cmdline.as_bytes());
        v[k..k + kernel.len()].copy_from_slice(kernel);
        v[i..i + initrd.len()].copy_from_slice(initrd);
        v
    }

    #[test]
    fn bundle_round_trips() {
        let b = bundle("console=ttyS0", &[1, 2, 3], &[4; 40]);
        let d = decode_bundle(&b).unwrap();
        assert_eq!(
            (d.cmdline, d.kernel, d.initrd),
            ("console=ttyS0", &[1u8, 2, 3][..], &[4u8; 40][..])
        );
        let empty = bundle("", &[9], &[]);
        assert_eq!(decode_bundle(&empty).unwrap().initrd, &[] as &[u8]);
    }

    #[test]
    fn bad_bundles_are_errors_not_panics() {
        let b = bundle("x", &[1; 100], &[2; 100]);
        assert!(decode_bundle(&b[..b.len() - 1]).is_err());
        assert!(decode_bundle(b"SLXLINUX").is_err());
        assert!(decode_bundle(&[0u8; 64]).is_err());
        let mut huge = b.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_bundle(&huge).is_err());
        for cut in 0..b.len() {
            let _ = decode_bundle(&b[..cut]);
        }
    }
}
