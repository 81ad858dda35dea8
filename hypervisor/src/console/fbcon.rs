//! The screen console: text on the linear framebuffer the firmware set up (UEFI GOP, or
//! a VESA BIOS Extensions mode the bootloader chose), for the many PCs without a serial
//! port. It draws sluice's own messages and the guest's UART output with the Noto Sans
//! Mono bitmap font (`noto-sans-mono-bitmap`, 16-pixel rasters, one byte of coverage
//! per pixel), and ends a run with a final screen that says how it ended.
//!
//! No heap and no floating point: the caller lends the pixel memory and a text-cell
//! grid. The grid is what makes the console cheap on real framebuffers, which firmware
//! usually maps uncached: pixel memory is only ever written, never read back, and
//! scrolling redraws only the cells whose character or colour changes (a blank region
//! stays untouched) instead of copying rows of pixels through a slow read path.
//!
//! Input is a byte stream as a terminal would get it: CR, LF, TAB, BS, line wrap,
//! UTF-8 sequences and unrenderable bytes shown as one replacement glyph each, and
//! ANSI/ECMA-48 escape sequences (ECMA-48 5th ed. section 5.4, control sequences)
//! either interpreted (SGR colours, cursor moves, erase) or consumed silently, so a
//! Linux guest's output does not print escape garbage.

use core::fmt;

use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

use crate::devices::board::ResetSource;
use crate::stats::{EndKind, Stats};
use crate::vmx::exit::exit_reason;

const WEIGHT: FontWeight = FontWeight::Regular;
const SIZE: RasterHeight = RasterHeight::Size16;
/// Width of a character cell in pixels (the font is monospaced).
pub const CELL_W: usize = get_raster_width(WEIGHT, SIZE);
/// Height of a character cell in pixels.
pub const CELL_H: usize = SIZE.val();

/// The glyph raster for `c`: `CELL_H` rows of `CELL_W` coverage bytes (0 = background,
/// 255 = foreground). `None` when the font has no glyph for it.
pub fn glyph(c: char) -> Option<&'static [&'static [u8]]> {
    get_raster(c, WEIGHT, SIZE).map(|r| r.raster())
}

/// The glyph shown for bytes and characters the font cannot draw (U+FFFD).
pub fn replacement_glyph() -> &'static [&'static [u8]] {
    glyph(REPLACEMENT_CHAR).expect("the font build includes the specials block")
}

const REPLACEMENT_CHAR: char = '\u{fffd}';

/// How a pixel's bytes encode a colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Red, green, blue in bytes 0, 1, 2 (any further bytes are padding).
    Rgb,
    /// Blue, green, red in bytes 0, 1, 2 (the usual UEFI GOP and VBE 32-bpp layout).
    Bgr,
    /// One grey level per pixel.
    Gray,
    /// Each component is 8 bits at a bit offset in the little-endian pixel value
    /// (UEFI `PixelBitMask`, as the bootloader reports it).
    BitMask { red: u8, green: u8, blue: u8 },
}

/// The framebuffer's geometry: what the bootloader reports in `FrameBufferInfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FbInfo {
    pub width: usize,
    pub height: usize,
    /// Pixels from the start of one line to the start of the next (at least `width`).
    pub stride: usize,
    pub bytes_per_pixel: usize,
    pub format: PixelFormat,
}

/// Why a framebuffer cannot carry the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FbError {
    /// A pixel format this code does not know (the bootloader's enum may grow).
    UnknownFormat,
    /// The bytes per pixel cannot hold the format's components.
    BadPixelSize,
    /// Stride below the width.
    BadStride,
    /// Smaller than one character cell.
    TooSmall,
    /// The memory is shorter than `stride * height * bytes_per_pixel`.
    BufferTooShort,
}

impl fmt::Display for FbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FbError::UnknownFormat => "unknown pixel format",
            FbError::BadPixelSize => "bytes per pixel do not fit the pixel format",
            FbError::BadStride => "stride is smaller than the width",
            FbError::TooSmall => "smaller than one character cell",
            FbError::BufferTooShort => "buffer shorter than stride x height",
        })
    }
}

impl core::error::Error for FbError {}

impl FbInfo {
    /// Converts the bootloader's description. `PixelFormat` there is `non_exhaustive`:
    /// a format added later is refused instead of drawn wrongly.
    pub fn from_bootloader(info: &bootloader_api::info::FrameBufferInfo) -> Result<Self, FbError> {
        use bootloader_api::info::PixelFormat as P;
        let format = match info.pixel_format {
            P::Rgb => PixelFormat::Rgb,
            P::Bgr => PixelFormat::Bgr,
            P::U8 => PixelFormat::Gray,
            P::Unknown {
                red_position,
                green_position,
                blue_position,
            } => PixelFormat::BitMask {
                red: red_position,
                green: green_position,
                blue: blue_position,
            },
            _ => return Err(FbError::UnknownFormat),
        };
        let fb = FbInfo {
            width: info.width,
            height: info.height,
            stride: info.stride,
            bytes_per_pixel: info.bytes_per_pixel,
            format,
        };
        fb.check(info.byte_len)?;
        Ok(fb)
    }

    /// Checks that the geometry is drawable in `len` bytes of pixel memory.
    pub fn check(&self, len: usize) -> Result<(), FbError> {
        let bpp = self.bytes_per_pixel;
        let fits = match self.format {
            PixelFormat::Rgb | PixelFormat::Bgr => (3..=4).contains(&bpp),
            PixelFormat::Gray => (1..=4).contains(&bpp),
            PixelFormat::BitMask { red, green, blue } => {
                (1..=4).contains(&bpp)
                    && [red, green, blue]
                        .iter()
                        .all(|&p| usize::from(p) + 8 <= bpp * 8)
            }
        };
        if !fits {
            return Err(FbError::BadPixelSize);
        }
        if self.stride < self.width {
            return Err(FbError::BadStride);
        }
        if self.width < CELL_W || self.height < CELL_H {
            return Err(FbError::TooSmall);
        }
        let need = self
            .stride
            .checked_mul(self.height)
            .and_then(|n| n.checked_mul(bpp))
            .ok_or(FbError::BufferTooShort)?;
        if need > len {
            return Err(FbError::BufferTooShort);
        }
        Ok(())
    }

    /// The pixel bytes of a colour (the first `bytes_per_pixel` are used).
    pub fn encode(&self, c: Rgb) -> [u8; 4] {
        match self.format {
            PixelFormat::Rgb => [c.r, c.g, c.b, 0],
            PixelFormat::Bgr => [c.b, c.g, c.r, 0],
            PixelFormat::Gray => {
                // ITU-R BT.601 luma weights, in integer form (299 + 587 + 114 = 1000).
                let y = (299 * u32::from(c.r) + 587 * u32::from(c.g) + 114 * u32::from(c.b)) / 1000;
                [y as u8, 0, 0, 0]
            }
            PixelFormat::BitMask { red, green, blue } => {
                let v =
                    (u32::from(c.r) << red) | (u32::from(c.g) << green) | (u32::from(c.b) << blue);
                v.to_le_bytes()
            }
        }
    }
}

/// A colour, 8 bits per component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

impl Rgb {
    pub const fn new(r: u8, g: u8, b: u8) -> Self {
        Rgb { r, g, b }
    }

    /// `self` covered by `other` at coverage `a` out of 255, rounded to nearest: how a
    /// glyph's anti-aliased edge pixels get their colour.
    pub const fn mix(self, other: Rgb, a: u8) -> Rgb {
        const fn ch(bg: u8, fg: u8, a: u8) -> u8 {
            let (bg, fg, a) = (bg as u32, fg as u32, a as u32);
            ((bg * (255 - a) + fg * a + 127) / 255) as u8
        }
        Rgb {
            r: ch(self.r, other.r, a),
            g: ch(self.g, other.g, a),
            b: ch(self.b, other.b, a),
        }
    }
}

/// The 16 colours of SGR 30-37 / 90-97 (and 40-47 / 100-107), in the VGA text-mode
/// shades most PC users know from firmware and Linux consoles.
pub const PALETTE: [Rgb; 16] = [
    Rgb::new(0x00, 0x00, 0x00),
    Rgb::new(0xaa, 0x00, 0x00),
    Rgb::new(0x00, 0xaa, 0x00),
    Rgb::new(0xaa, 0x55, 0x00),
    Rgb::new(0x00, 0x00, 0xaa),
    Rgb::new(0xaa, 0x00, 0xaa),
    Rgb::new(0x00, 0xaa, 0xaa),
    Rgb::new(0xaa, 0xaa, 0xaa),
    Rgb::new(0x55, 0x55, 0x55),
    Rgb::new(0xff, 0x55, 0x55),
    Rgb::new(0x55, 0xff, 0x55),
    Rgb::new(0xff, 0xff, 0x55),
    Rgb::new(0x55, 0x55, 0xff),
    Rgb::new(0xff, 0x55, 0xff),
    Rgb::new(0x55, 0xff, 0xff),
    Rgb::new(0xff, 0xff, 0xff),
];

/// Palette indices used by the console itself.
pub mod color {
    pub const BLACK: u8 = 0;
    pub const RED: u8 = 1;
    pub const GREEN: u8 = 2;
    pub const GREY: u8 = 7;
    pub const BRIGHT_YELLOW: u8 = 11;
    pub const WHITE: u8 = 15;
}

/// Colours of a cell: foreground in the low nibble, background in the high one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr(pub u8);

impl Attr {
    pub const fn new(fg: u8, bg: u8) -> Self {
        Attr((fg & 0xf) | (bg << 4))
    }
    pub const fn fg(self) -> u8 {
        self.0 & 0xf
    }
    pub const fn bg(self) -> u8 {
        self.0 >> 4
    }
}

/// The default: light grey on black, like a PC text console.
pub const DEFAULT_ATTR: Attr = Attr::new(color::GREY, color::BLACK);

/// One character cell as last drawn: a printable ASCII byte, or [`Cell::REPLACEMENT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub ch: u8,
    pub attr: Attr,
}

impl Cell {
    /// Stands for U+FFFD in the grid (SUB, never printable itself).
    pub const REPLACEMENT: u8 = 0x1a;
    pub const BLANK: Cell = Cell {
        ch: b' ',
        attr: DEFAULT_ATTR,
    };

    fn raster(self) -> &'static [&'static [u8]] {
        match self.ch {
            0x20..=0x7e => glyph(self.ch as char).unwrap_or_else(replacement_glyph),
            _ => replacement_glyph(),
        }
    }

    /// Index in the glyph cache: 0-94 for ' '..='~', 95 for the replacement glyph.
    fn cache_slot(self) -> usize {
        match self.ch {
            0x20..=0x7e => usize::from(self.ch - 0x20),
            _ => GLYPH_SLOTS - 1,
        }
    }

    /// The character the cell shows.
    pub fn char(self) -> char {
        match self.ch {
            0x20..=0x7e => self.ch as char,
            _ => REPLACEMENT_CHAR,
        }
    }
}

/// Where the escape-sequence parser is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    /// After ESC.
    Escape,
    /// After ESC and an intermediate byte such as `(`: one more byte ends it.
    Charset,
    /// Control sequence (ESC `[`): parameters, then a final byte 0x40-0x7e.
    Csi,
    /// Operating system command (ESC `]`): skipped until BEL or ESC `\`.
    Osc,
    /// ESC inside an OSC: `\` ends the OSC (ST).
    OscEscape,
}

const MAX_PARAMS: usize = 8;

/// A text console drawing into borrowed pixel memory.
pub struct Console<'a> {
    fb: &'a mut [u8],
    info: FbInfo,
    cells: &'a mut [Cell],
    cols: usize,
    rows: usize,
    col: usize,
    row: usize,
    /// The cursor stands past the last column: the next printable character wraps
    /// first (the VT100 "last column" rule, so a full line then LF is one line break).
    wrap_pending: bool,
    attr: Attr,
    bold: bool,
    /// Rows to scroll at once when output reaches the bottom.
    scroll_step: usize,
    esc: Esc,
    params: [u16; MAX_PARAMS],
    nparams: usize,
    /// Continuation bytes still expected in a UTF-8 sequence.
    utf8_left: u8,
    /// Encoded pixels of the 16 palette colours.
    pixels: [[u8; 4]; 16],
    cache: &'a mut GlyphCache,
}

/// Rendered glyphs in the default colours, by [`Cell::cache_slot`] (about 55 KiB, so
/// the caller provides it: a static in the kernel rather than the stack).
pub struct GlyphCache {
    glyphs: [[u8; GLYPH_BYTES]; GLYPH_SLOTS],
    /// Which slots hold a rendered glyph.
    filled: u128,
}

impl GlyphCache {
    pub const fn new() -> Self {
        GlyphCache {
            glyphs: [[0; GLYPH_BYTES]; GLYPH_SLOTS],
            filled: 0,
        }
    }
}

impl Default for GlyphCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes of one rendered glyph at up to 4 bytes per pixel.
const GLYPH_BYTES: usize = CELL_W * CELL_H * 4;
/// Printable ASCII plus the replacement glyph.
const GLYPH_SLOTS: usize = 96;

impl<'a> Console<'a> {
    /// A console over `fb` described by `info`, keeping its grid in `cells`. The grid
    /// covers the screen from the top-left corner; when `cells` is too small for the
    /// whole screen, the console uses fewer rows. The screen is cleared.
    pub fn new(
        fb: &'a mut [u8],
        info: FbInfo,
        cells: &'a mut [Cell],
        cache: &'a mut GlyphCache,
    ) -> Result<Self, FbError> {
        info.check(fb.len())?;
        let cols = info.width / CELL_W;
        let rows = (info.height / CELL_H).min(cells.len() / cols.max(1));
        if cols == 0 || rows == 0 {
            return Err(FbError::TooSmall);
        }
        let mut pixels = [[0u8; 4]; 16];
        for (p, c) in pixels.iter_mut().zip(PALETTE) {
            *p = info.encode(c);
        }
        let mut con = Console {
            fb,
            info,
            cells,
            cols,
            rows,
            col: 0,
            row: 0,
            wrap_pending: false,
            attr: DEFAULT_ATTR,
            bold: false,
            scroll_step: 1,
            esc: Esc::None,
            params: [0; MAX_PARAMS],
            nparams: 0,
            utf8_left: 0,
            pixels,
            cache,
        };
        // Whatever the cache held was rendered for some other pixel format.
        con.cache.filled = 0;
        con.clear_screen();
        Ok(con)
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// (column, row) of the cursor.
    pub fn cursor(&self) -> (usize, usize) {
        (self.col, self.row)
    }

    /// The cell at a grid position.
    pub fn cell(&self, col: usize, row: usize) -> Cell {
        self.cells[row * self.cols + col]
    }

    /// Rows scrolled at once when the cursor passes the bottom (clamped to 1..=rows).
    /// More than one trades a jump for fewer redraws on slow framebuffers.
    pub fn set_scroll_step(&mut self, rows: usize) {
        self.scroll_step = rows.clamp(1, self.rows);
    }

    /// Colours for what follows (palette indices).
    pub fn set_attr(&mut self, attr: Attr) {
        self.attr = attr;
        self.bold = false;
    }

    /// Fills the whole framebuffer (margins included) with the background colour and
    /// homes the cursor.
    pub fn clear_screen(&mut self) {
        let bg = self.pixels[usize::from(DEFAULT_ATTR.bg())];
        let bpp = self.info.bytes_per_pixel;
        // One block of background pixels, copied line by line: a few block copies per
        // line instead of a store per pixel (Bochs and debug builds are slow per pixel).
        let mut block = [0u8; 64 * 4];
        for px in block.chunks_exact_mut(bpp) {
            px.copy_from_slice(&bg[..bpp]);
        }
        let block = &block[..block.len() / bpp * bpp];
        for y in 0..self.info.height {
            let start = y * self.info.stride * bpp;
            for chunk in self.fb[start..start + self.info.width * bpp].chunks_mut(block.len()) {
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
        }
        self.cells[..self.cols * self.rows].fill(Cell::BLANK);
        self.col = 0;
        self.row = 0;
        self.wrap_pending = false;
    }

    /// Draws one cell's glyph; writes pixels only, never reads them. Glyphs in the
    /// default colours come from the cache (rendered on first use), so the common case
    /// is one copy per glyph line; others are composed line by line, a blank line
    /// (most of a space, the rows above and below a letter) without per-pixel work.
    fn draw(&mut self, col: usize, row: usize) {
        let cell = self.cells[row * self.cols + col];
        let bpp = self.info.bytes_per_pixel;
        let line_len = CELL_W * bpp;
        let origin = (row * CELL_H * self.info.stride + col * CELL_W) * bpp;
        let line_step = self.info.stride * bpp;
        if cell.attr == DEFAULT_ATTR {
            let slot = cell.cache_slot();
            if self.cache.filled & (1 << slot) == 0 {
                let mut glyph = [0u8; GLYPH_BYTES];
                self.render(cell, &mut glyph[..CELL_H * line_len]);
                self.cache.glyphs[slot] = glyph;
                self.cache.filled |= 1 << slot;
            }
            let glyph = &self.cache.glyphs[slot];
            for y in 0..CELL_H {
                let start = origin + y * line_step;
                self.fb[start..start + line_len]
                    .copy_from_slice(&glyph[y * line_len..(y + 1) * line_len]);
            }
        } else {
            let mut glyph = [0u8; GLYPH_BYTES];
            self.render(cell, &mut glyph[..CELL_H * line_len]);
            for y in 0..CELL_H {
                let start = origin + y * line_step;
                self.fb[start..start + line_len]
                    .copy_from_slice(&glyph[y * line_len..(y + 1) * line_len]);
            }
        }
    }

    /// Composes a cell's pixels, line after line, into `out` (`CELL_H` lines of
    /// `CELL_W` pixels).
    fn render(&self, cell: Cell, out: &mut [u8]) {
        let fg = usize::from(cell.attr.fg());
        let bg = usize::from(cell.attr.bg());
        let (fgp, bgp) = (self.pixels[fg], self.pixels[bg]);
        let bpp = self.info.bytes_per_pixel;
        let line_len = CELL_W * bpp;
        let mut blank = [0u8; CELL_W * 4];
        for px in blank[..line_len].chunks_exact_mut(bpp) {
            px.copy_from_slice(&bgp[..bpp]);
        }
        for (line, dst) in cell.raster().iter().zip(out.chunks_exact_mut(line_len)) {
            if line.iter().all(|&a| a == 0) {
                dst.copy_from_slice(&blank[..line_len]);
                continue;
            }
            for (&a, px) in line.iter().zip(dst.chunks_exact_mut(bpp)) {
                let p = match a {
                    0 => bgp,
                    255 => fgp,
                    a => self.info.encode(PALETTE[bg].mix(PALETTE[fg], a)),
                };
                px.copy_from_slice(&p[..bpp]);
            }
        }
    }

    /// Puts `cell` at a grid position, drawing it only if it changes what is shown.
    fn put(&mut self, col: usize, row: usize, cell: Cell) {
        let i = row * self.cols + col;
        if self.cells[i] != cell {
            self.cells[i] = cell;
            self.draw(col, row);
        }
    }

    fn blank(&self) -> Cell {
        Cell {
            ch: b' ',
            attr: Attr::new(self.attr.fg(), self.attr.bg()),
        }
    }

    /// Moves every row up by `n` and blanks the bottom `n`, redrawing only cells whose
    /// content differs from what is on screen at that position.
    fn scroll_up(&mut self, n: usize) {
        let n = n.min(self.rows);
        for row in 0..self.rows - n {
            for col in 0..self.cols {
                let below = self.cells[(row + n) * self.cols + col];
                self.put(col, row, below);
            }
        }
        let blank = Cell {
            ch: b' ',
            attr: DEFAULT_ATTR,
        };
        for row in self.rows - n..self.rows {
            for col in 0..self.cols {
                self.put(col, row, blank);
            }
        }
    }

    fn newline(&mut self) {
        self.col = 0;
        self.wrap_pending = false;
        if self.row + 1 < self.rows {
            self.row += 1;
        } else {
            let step = self.scroll_step;
            self.scroll_up(step);
            self.row = self.rows - step;
        }
    }

    /// Prints one cell's worth at the cursor and advances.
    fn print_cell(&mut self, ch: u8) {
        if self.wrap_pending {
            self.newline();
        }
        let mut attr = self.attr;
        if self.bold && attr.fg() < 8 {
            attr = Attr::new(attr.fg() + 8, attr.bg());
        }
        self.put(self.col, self.row, Cell { ch, attr });
        if self.col + 1 < self.cols {
            self.col += 1;
        } else {
            self.wrap_pending = true;
        }
    }

    /// Feeds bytes as a terminal would receive them.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        match self.esc {
            Esc::None => {}
            Esc::Escape => {
                self.esc = match b {
                    b'[' => {
                        self.params = [0; MAX_PARAMS];
                        self.nparams = 0;
                        Esc::Csi
                    }
                    b']' => Esc::Osc,
                    // ESC ( B and friends (character set designation, ECMA-35).
                    b'(' | b')' | b'*' | b'+' | b'#' | b'%' => Esc::Charset,
                    _ => Esc::None,
                };
                return;
            }
            Esc::Charset => {
                self.esc = Esc::None;
                return;
            }
            Esc::Csi => {
                self.csi_byte(b);
                return;
            }
            Esc::Osc => {
                self.esc = match b {
                    0x07 => Esc::None,
                    0x1b => Esc::OscEscape,
                    _ => Esc::Osc,
                };
                return;
            }
            Esc::OscEscape => {
                self.esc = if b == b'\\' { Esc::None } else { Esc::Osc };
                return;
            }
        }
        // UTF-8 (RFC 3629): a lead byte shows one replacement glyph, its continuation
        // bytes nothing; a stray continuation byte is a replacement of its own.
        if self.utf8_left > 0 {
            if b & 0xc0 == 0x80 {
                self.utf8_left -= 1;
                return;
            }
            self.utf8_left = 0;
        }
        match b {
            b'\n' => self.newline(),
            b'\r' => {
                self.col = 0;
                self.wrap_pending = false;
            }
            b'\t' => {
                let next = (self.col / 8 + 1) * 8;
                self.col = next.min(self.cols - 1);
            }
            0x08 => {
                self.wrap_pending = false;
                self.col = self.col.saturating_sub(1);
            }
            0x1b => self.esc = Esc::Escape,
            0x20..=0x7e => self.print_cell(b),
            // Other C0 controls (BEL, NUL, ...) and DEL show nothing.
            0x00..=0x1f | 0x7f => {}
            0xc2..=0xf4 => {
                self.utf8_left = match b {
                    0xc2..=0xdf => 1,
                    0xe0..=0xef => 2,
                    _ => 3,
                };
                self.print_cell(Cell::REPLACEMENT);
            }
            _ => self.print_cell(Cell::REPLACEMENT),
        }
    }

    fn csi_byte(&mut self, b: u8) {
        match b {
            b'0'..=b'9' => {
                if self.nparams == 0 {
                    self.nparams = 1;
                }
                let p = &mut self.params[self.nparams - 1];
                *p = p.saturating_mul(10).saturating_add(u16::from(b - b'0'));
            }
            b';' => {
                if self.nparams == 0 {
                    self.nparams = 1;
                }
                if self.nparams < MAX_PARAMS {
                    self.nparams += 1;
                }
            }
            // Private markers and intermediates (`?`, ` `, ...): accepted, not used.
            0x20..=0x3f => {}
            0x40..=0x7e => {
                self.esc = Esc::None;
                self.csi_final(b);
            }
            // A control character inside a sequence cancels it (CAN, SUB) or is
            // executed (ECMA-48 5.4); treat all of them as the end of the sequence.
            _ => self.esc = Esc::None,
        }
    }

    /// Parameter `i` with 0 or absent meaning `default`.
    fn param(&self, i: usize, default: u16) -> usize {
        let v = if i < self.nparams { self.params[i] } else { 0 };
        usize::from(if v == 0 { default } else { v })
    }

    fn csi_final(&mut self, f: u8) {
        match f {
            b'm' => self.sgr(),
            b'A' => self.row = self.row.saturating_sub(self.param(0, 1)),
            b'B' => self.row = (self.row + self.param(0, 1)).min(self.rows - 1),
            b'C' => self.col = (self.col + self.param(0, 1)).min(self.cols - 1),
            b'D' => self.col = self.col.saturating_sub(self.param(0, 1)),
            b'H' | b'f' => {
                self.row = (self.param(0, 1) - 1).min(self.rows - 1);
                self.col = (self.param(1, 1) - 1).min(self.cols - 1);
            }
            b'J' => {
                let from = match self.param(0, 0) {
                    0 => self.row * self.cols + self.col,
                    _ => 0,
                };
                self.erase(from, self.rows * self.cols);
            }
            b'K' => {
                let line = self.row * self.cols;
                let (from, to) = match self.param(0, 0) {
                    0 => (line + self.col, line + self.cols),
                    1 => (line, line + self.col + 1),
                    _ => (line, line + self.cols),
                };
                self.erase(from, to);
            }
            _ => {}
        }
        self.wrap_pending = false;
    }

    /// Blanks grid positions `from..to` (row-major).
    fn erase(&mut self, from: usize, to: usize) {
        let blank = self.blank();
        for i in from..to.min(self.rows * self.cols) {
            self.put(i % self.cols, i / self.cols, blank);
        }
    }

    /// Select Graphic Rendition (ECMA-48 8.3.117): the 16 colours and bold.
    fn sgr(&mut self) {
        let n = self.nparams.max(1);
        for i in 0..n {
            let p = if i < self.nparams { self.params[i] } else { 0 };
            let (fg, bg) = (self.attr.fg(), self.attr.bg());
            match p {
                0 => {
                    self.attr = DEFAULT_ATTR;
                    self.bold = false;
                }
                1 => self.bold = true,
                22 => self.bold = false,
                30..=37 => self.attr = Attr::new(p as u8 - 30, bg),
                39 => self.attr = Attr::new(DEFAULT_ATTR.fg(), bg),
                40..=47 => self.attr = Attr::new(fg, p as u8 - 40),
                49 => self.attr = Attr::new(fg, DEFAULT_ATTR.bg()),
                90..=97 => self.attr = Attr::new(p as u8 - 90 + 8, bg),
                100..=107 => self.attr = Attr::new(fg, p as u8 - 100 + 8),
                _ => {}
            }
        }
    }

    /// Draws the final screen: a banner in the run's colours (green when it went as
    /// asked, red otherwise) below whatever was printed, with how the run ended, the
    /// exit status and its meaning, the key counters and what the user can do.
    pub fn final_screen(&mut self, report: &Report) {
        // Back to a clean state whatever the guest left half-parsed.
        self.esc = Esc::None;
        self.utf8_left = 0;
        if self.col != 0 || self.wrap_pending {
            self.newline();
        }
        let banner = if report.ok {
            Attr::new(color::WHITE, color::GREEN)
        } else {
            Attr::new(color::WHITE, color::RED)
        };
        self.set_attr(banner);
        let mut w = LineWriter { con: self };
        let _ = report.write_to(&mut w);
        self.set_attr(DEFAULT_ATTR);
    }
}

/// Writes text into the console with every line padded to the full width in the
/// current colours, so the banner is a solid block.
struct LineWriter<'c, 'a> {
    con: &'c mut Console<'a>,
}

impl fmt::Write for LineWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                while !self.con.wrap_pending && self.con.col > 0 {
                    self.con.print_cell(b' ');
                }
                if self.con.col == 0 && !self.con.wrap_pending {
                    // An empty line: fill it too.
                    for _ in 0..self.con.cols {
                        self.con.print_cell(b' ');
                    }
                }
                self.con.newline();
            } else {
                self.con.byte(b);
            }
        }
        Ok(())
    }
}

impl fmt::Write for Console<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// The counters the final screen shows, from the run's [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunNumbers {
    /// VM exits of every reason.
    pub exits: u64,
    /// Exits for IN/OUT/INS/OUTS.
    pub io_exits: u64,
    /// IO instructions the guest executed.
    pub io_instructions: u64,
    /// Instructions emulated in coalesced blocks.
    pub coalesced: u64,
}

impl RunNumbers {
    pub fn from_stats(stats: &Stats) -> Self {
        RunNumbers {
            exits: stats.total_exits(),
            io_exits: stats.exit_count(exit_reason::IO_INSTRUCTION),
            io_instructions: stats.io.instructions,
            coalesced: stats.io.emulated,
        }
    }
}

/// How a guest run ended, as the final screen words it.
pub fn end_phrase(kind: EndKind, exit_code: u32) -> &'static str {
    match kind {
        EndKind::Hypercall if exit_code == 0 => "guest finished",
        EndKind::Hypercall => "guest ended with a failure code",
        EndKind::Halt => "guest halted (HLT with nothing left to wake it)",
        EndKind::TripleFault => "guest stopped: triple fault",
        EndKind::EptViolation => "guest stopped: memory access outside its RAM (EPT violation)",
        EndKind::EptMisconfiguration => "guest stopped: EPT misconfiguration",
        EndKind::EntryFailure => "guest stopped: VM entry failed",
        EndKind::Fatal => "guest stopped: a VM exit sluice cannot handle",
        EndKind::Reset(ResetSource::I8042) => {
            "guest stopped: it asked for a reset (i8042 command 0xFE or output port)"
        }
        EndKind::Reset(ResetSource::Port92) => "guest stopped: it asked for a reset (port 0x92)",
    }
}

/// What the final screen says.
#[derive(Clone, Copy, Debug)]
pub struct Report<'r> {
    /// The run's exit status and its meaning.
    pub status: u32,
    pub meaning: &'r str,
    /// Whether the run went as asked (chooses the banner colour).
    pub ok: bool,
    /// How the guest run ended, when a guest ran.
    pub end: Option<(EndKind, u32)>,
    pub numbers: Option<RunNumbers>,
    /// What the user can do about it (unsupported CPU and the like).
    pub hint: Option<&'r str>,
}

impl Report<'_> {
    /// The final screen's text, one line per `\n`.
    pub fn write_to(&self, w: &mut impl fmt::Write) -> fmt::Result {
        w.write_str("\n")?;
        match self.end {
            Some((kind, code)) => writeln!(w, " sluice: run ended -- {}", end_phrase(kind, code))?,
            None => writeln!(w, " sluice: run ended")?,
        }
        writeln!(w, " exit status {}: {}", self.status, self.meaning)?;
        if let Some(n) = self.numbers {
            writeln!(
                w,
                " VM exits {}, IO exits {}, IO instructions {}, coalesced instructions {}",
                n.exits, n.io_exits, n.io_instructions, n.coalesced
            )?;
        }
        if let Some(hint) = self.hint {
            writeln!(w, " what to do: {hint}")?;
        }
        w.write_str("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    fn info(width: usize, height: usize, stride: usize, bpp: usize, f: PixelFormat) -> FbInfo {
        FbInfo {
            width,
            height,
            stride,
            bytes_per_pixel: bpp,
            format: f,
        }
    }

    /// An in-memory framebuffer and grid.
    struct Screen {
        fb: Vec<u8>,
        cells: Vec<Cell>,
        cache: std::boxed::Box<GlyphCache>,
        info: FbInfo,
    }

    impl Screen {
        fn new(info: FbInfo) -> Self {
            Screen {
                // Filled with a pattern the console must overwrite when it clears.
                fb: vec![0x5a; info.stride * info.height * info.bytes_per_pixel],
                cells: vec![Cell::BLANK; 4096],
                cache: std::boxed::Box::default(),
                info,
            }
        }
        fn console(&mut self) -> Console<'_> {
            Console::new(&mut self.fb, self.info, &mut self.cells, &mut self.cache).unwrap()
        }
    }

    /// Decodes the colour of pixel (x, y) independently of `encode`.
    fn pixel(fb: &[u8], info: &FbInfo, x: usize, y: usize) -> [u8; 4] {
        let at = (y * info.stride + x) * info.bytes_per_pixel;
        let mut p = [0u8; 4];
        p[..info.bytes_per_pixel].copy_from_slice(&fb[at..at + info.bytes_per_pixel]);
        p
    }

    /// What pixel memory must hold for colour `c` in `info`'s format, spelled out per
    /// format from its definition.
    fn expected(info: &FbInfo, c: Rgb) -> [u8; 4] {
        match info.format {
            PixelFormat::Rgb => [c.r, c.g, c.b, 0],
            PixelFormat::Bgr => [c.b, c.g, c.r, 0],
            PixelFormat::Gray => {
                let y = (0.299 * f64::from(c.r) + 0.587 * f64::from(c.g) + 0.114 * f64::from(c.b))
                    .floor() as u8;
                [y, 0, 0, 0]
            }
            PixelFormat::BitMask { red, green, blue } => {
                let mut p = [0u8; 4];
                p[usize::from(red / 8)] = c.r;
                p[usize::from(green / 8)] = c.g;
                p[usize::from(blue / 8)] = c.b;
                p
            }
        }
    }

    /// Checks the cell at (col, row) against the font's raster for `ch`.
    fn assert_cell_shows(s: &Screen, col: usize, row: usize, ch: char, fg: Rgb, bg: Rgb) {
        let raster = glyph(ch).unwrap();
        let mut ink = 0;
        for (y, line) in raster.iter().enumerate() {
            for (x, &a) in line.iter().enumerate() {
                let c = bg.mix(fg, a);
                let want = expected(&s.info, c);
                let got = pixel(&s.fb, &s.info, col * CELL_W + x, row * CELL_H + y);
                assert!(
                    got[..s.info.bytes_per_pixel]
                        .iter()
                        .zip(&want)
                        .all(|(g, w)| g.abs_diff(*w) <= 1),
                    "cell ({col},{row}) {ch:?} pixel ({x},{y}): got {got:?}, want {want:?}"
                );
                ink += usize::from(a > 128);
            }
        }
        assert!(
            ch == ' ' || ink > 0,
            "{ch:?} has no ink: the check is vacuous"
        );
    }

    fn row_text(con: &Console, row: usize) -> String {
        let s: String = (0..con.cols()).map(|c| con.cell(c, row).char()).collect();
        s.trim_end().into()
    }

    const GREY: Rgb = PALETTE[color::GREY as usize];
    const BLACK: Rgb = PALETTE[color::BLACK as usize];

    #[test]
    fn the_font_build_has_ascii_and_the_replacement_glyph() {
        assert_eq!((CELL_W, CELL_H), (9, 16));
        for c in ' '..='~' {
            let g = glyph(c).unwrap();
            assert_eq!(g.len(), CELL_H);
            assert!(g.iter().all(|l| l.len() == CELL_W));
        }
        assert_eq!(replacement_glyph().len(), CELL_H);
        assert_ne!(glyph('A'), glyph('B'));
    }

    #[test]
    fn every_pixel_format_draws_the_glyph_rasters() {
        let formats = [
            (PixelFormat::Rgb, 4),
            (PixelFormat::Rgb, 3),
            (PixelFormat::Bgr, 4),
            (PixelFormat::Bgr, 3),
            (PixelFormat::Gray, 1),
            (
                PixelFormat::BitMask {
                    red: 16,
                    green: 8,
                    blue: 0,
                },
                4,
            ),
            (
                PixelFormat::BitMask {
                    red: 0,
                    green: 8,
                    blue: 16,
                },
                3,
            ),
        ];
        for (f, bpp) in formats {
            // An odd stride: padding pixels at the end of each line.
            let mut s = Screen::new(info(5 * CELL_W + 3, 3 * CELL_H, 5 * CELL_W + 7, bpp, f));
            let mut con = s.console();
            con.write_bytes(b"A\x1b[31;44mg");
            assert_cell_shows(&s, 0, 0, 'A', GREY, BLACK);
            assert_cell_shows(&s, 1, 0, 'g', PALETTE[1], PALETTE[4]);
            assert_cell_shows(&s, 2, 0, ' ', GREY, BLACK);
            // The stride padding is never written.
            let pad = pixel(&s.fb, &s.info, 5 * CELL_W + 4, 0);
            assert_eq!(pad[0], 0x5a, "{f:?}");
        }
    }

    #[test]
    fn gray_uses_luma_weights() {
        let i = info(CELL_W, CELL_H, CELL_W, 1, PixelFormat::Gray);
        assert_eq!(i.encode(Rgb::new(255, 0, 0))[0], 76);
        assert_eq!(i.encode(Rgb::new(0, 255, 0))[0], 149);
        assert_eq!(i.encode(Rgb::new(255, 255, 255))[0], 255);
    }

    #[test]
    fn text_wraps_at_the_last_column() {
        let mut s = Screen::new(info(
            4 * CELL_W,
            3 * CELL_H,
            4 * CELL_W,
            4,
            PixelFormat::Bgr,
        ));
        let mut con = s.console();
        con.write_bytes(b"abcd");
        // A full line does not wrap until the next character...
        assert_eq!(con.cursor(), (3, 0));
        con.write_bytes(b"\n");
        assert_eq!(
            con.cursor(),
            (0, 1),
            "a full line then LF is one line break"
        );
        con.write_bytes(b"wxyzQ");
        assert_eq!(row_text(&con, 1), "wxyz");
        assert_eq!(row_text(&con, 2), "Q");
        assert_cell_shows(&s, 0, 2, 'Q', GREY, BLACK);
        assert_cell_shows(&s, 3, 1, 'z', GREY, BLACK);
    }

    #[test]
    fn control_characters() {
        let mut s = Screen::new(info(
            20 * CELL_W,
            4 * CELL_H,
            20 * CELL_W,
            4,
            PixelFormat::Rgb,
        ));
        let mut con = s.console();
        con.write_bytes(b"abc\rX\n\tT\x08U\x07\x00V\r\n");
        assert_eq!(row_text(&con, 0), "Xbc");
        // TAB to column 8, T, backspace, U overwrites T; BEL and NUL print nothing.
        assert_eq!(row_text(&con, 1), "        UV");
        assert_eq!(con.cursor(), (0, 2));
        con.write_bytes(b"\x08\x08x");
        assert_eq!(row_text(&con, 2), "x", "backspace stops at column 0");
    }

    #[test]
    fn scrolling_moves_rows_up_and_clears_the_last() {
        let mut s = Screen::new(info(
            6 * CELL_W,
            3 * CELL_H,
            6 * CELL_W + 1,
            3,
            PixelFormat::Rgb,
        ));
        let mut con = s.console();
        con.write_bytes(b"one\ntwo\nthree\nfour");
        assert_eq!(row_text(&con, 0), "two");
        assert_eq!(row_text(&con, 1), "three");
        assert_eq!(row_text(&con, 2), "four");
        // Pixels follow the grid: 'two' now on the top row, where 'one' was.
        assert_cell_shows(&s, 0, 0, 't', GREY, BLACK);
        assert_cell_shows(&s, 2, 0, 'o', GREY, BLACK);
        assert_cell_shows(&s, 3, 1, 'e', GREY, BLACK);
        assert_cell_shows(&s, 4, 2, ' ', GREY, BLACK);
        assert_cell_shows(&s, 0, 2, 'f', GREY, BLACK);
    }

    #[test]
    fn scroll_step_jumps_several_rows() {
        let mut s = Screen::new(info(
            6 * CELL_W,
            4 * CELL_H,
            6 * CELL_W,
            4,
            PixelFormat::Rgb,
        ));
        let mut con = s.console();
        con.set_scroll_step(2);
        con.write_bytes(b"1\n2\n3\n4\n5");
        assert_eq!(row_text(&con, 0), "3");
        assert_eq!(row_text(&con, 1), "4");
        assert_eq!(row_text(&con, 2), "5");
        assert_eq!(row_text(&con, 3), "");
        assert_cell_shows(&s, 0, 2, '5', GREY, BLACK);
        assert_cell_shows(&s, 0, 3, ' ', GREY, BLACK);
    }

    #[test]
    fn non_ascii_shows_one_replacement_glyph_per_character() {
        let mut s = Screen::new(info(
            10 * CELL_W,
            2 * CELL_H,
            10 * CELL_W,
            4,
            PixelFormat::Bgr,
        ));
        let mut con = s.console();
        // "é" (2 bytes), "€" (3 bytes), a stray continuation byte, then ASCII.
        con.write_bytes("aé€".as_bytes());
        con.write_bytes(&[0x80, b'z']);
        assert_eq!(row_text(&con, 0), "a\u{fffd}\u{fffd}\u{fffd}z");
        let repl = replacement_glyph();
        for (y, line) in repl.iter().enumerate() {
            for (x, &a) in line.iter().enumerate() {
                let want = expected(&s.info, BLACK.mix(GREY, a));
                assert_eq!(pixel(&s.fb, &s.info, CELL_W + x, y), want);
            }
        }
    }

    #[test]
    fn escape_sequences_print_nothing() {
        let mut s = Screen::new(info(
            30 * CELL_W,
            3 * CELL_H,
            30 * CELL_W,
            4,
            PixelFormat::Rgb,
        ));
        let mut con = s.console();
        con.write_bytes(b"\x1b[?25l\x1b[0;1;32mok\x1b[0m \x1b]0;title\x07t\x1b(Bx\x1b]2;t\x1b\\y");
        assert_eq!(row_text(&con, 0), "ok txy");
        // SGR 1;32 is bright green.
        assert_eq!(con.cell(0, 0).attr, Attr::new(10, 0));
        assert_eq!(con.cell(3, 0).attr, DEFAULT_ATTR);
    }

    #[test]
    fn cursor_moves_and_erase() {
        let mut s = Screen::new(info(
            10 * CELL_W,
            3 * CELL_H,
            10 * CELL_W,
            4,
            PixelFormat::Rgb,
        ));
        let mut con = s.console();
        con.write_bytes(b"0123456789\nabcdef");
        con.write_bytes(b"\x1b[1;3H\x1b[K");
        assert_eq!(row_text(&con, 0), "01");
        con.write_bytes(b"\x1b[2;2HZ\x1b[C\x1b[DY");
        assert_eq!(row_text(&con, 1), "aZYdef");
        con.write_bytes(b"\x1b[2J");
        assert_eq!((0..3).map(|r| row_text(&con, r)).collect::<String>(), "");
        assert_cell_shows(&s, 0, 0, ' ', GREY, BLACK);
    }

    #[test]
    fn final_screen_shows_outcome_status_numbers_and_hint() {
        let mut s = Screen::new(info(
            90 * CELL_W,
            12 * CELL_H,
            90 * CELL_W,
            4,
            PixelFormat::Bgr,
        ));
        let mut con = s.console();
        con.write_bytes(b"guest output\x1b[31");
        let report = Report {
            status: 0,
            meaning: "the run did what was asked",
            ok: true,
            end: Some((EndKind::TripleFault, 0)),
            numbers: Some(RunNumbers {
                exits: 1234,
                io_exits: 100,
                io_instructions: 300,
                coalesced: 280,
            }),
            hint: Some("nothing"),
        };
        con.final_screen(&report);
        let lines: Vec<String> = (0..con.rows()).map(|r| row_text(&con, r)).collect();
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
        let end = at("sluice: run ended -- guest stopped: triple fault").unwrap();
        assert_eq!(
            lines[0], "guest output",
            "the unfinished escape printed nothing"
        );
        assert_eq!(
            at(" exit status 0: the run did what was asked"),
            Some(end + 1)
        );
        assert_eq!(
            at("VM exits 1234, IO exits 100, IO instructions 300, coalesced instructions 280"),
            Some(end + 2)
        );
        assert_eq!(at("what to do: nothing"), Some(end + 3));
        // The banner is a solid block: white on green to the last column.
        let banner = Attr::new(color::WHITE, color::GREEN);
        assert_eq!(con.cell(0, end).attr, banner);
        assert_eq!(con.cell(89, end).attr, banner);
        assert_eq!(con.cell(0, end - 1).attr, banner, "blank line above");
        let (white, green) = (PALETTE[15], PALETTE[2]);
        assert_cell_shows(&s, 1, end, 's', white, green);
        assert_cell_shows(&s, 89, end, ' ', white, green);
    }

    #[test]
    fn failed_runs_get_a_red_banner_and_no_numbers_without_a_guest() {
        let mut s = Screen::new(info(
            90 * CELL_W,
            8 * CELL_H,
            90 * CELL_W,
            4,
            PixelFormat::Rgb,
        ));
        let mut con = s.console();
        con.final_screen(&Report {
            status: 1,
            meaning: "unsupported CPU",
            ok: false,
            end: None,
            numbers: None,
            hint: Some("enable VT-x"),
        });
        let lines: Vec<String> = (0..con.rows()).map(|r| row_text(&con, r)).collect();
        assert_eq!(lines[1], " sluice: run ended");
        assert_eq!(lines[2], " exit status 1: unsupported CPU");
        assert_eq!(lines[3], " what to do: enable VT-x");
        assert_eq!(con.cell(5, 2).attr, Attr::new(color::WHITE, color::RED));
    }

    #[test]
    fn end_phrases_name_the_end() {
        assert_eq!(end_phrase(EndKind::Hypercall, 0), "guest finished");
        assert!(end_phrase(EndKind::Hypercall, 3).contains("failure"));
        assert!(end_phrase(EndKind::EptViolation, 0).contains("EPT violation"));
        assert!(end_phrase(EndKind::Halt, 0).contains("HLT"));
    }

    #[test]
    fn run_numbers_come_from_the_stats() {
        let mut st = Stats::new();
        st.count_exit(exit_reason::IO_INSTRUCTION.into());
        st.count_exit(exit_reason::IO_INSTRUCTION.into());
        st.count_exit(exit_reason::CPUID.into());
        st.io.instructions = 9;
        st.io.emulated = 7;
        assert_eq!(
            RunNumbers::from_stats(&st),
            RunNumbers {
                exits: 3,
                io_exits: 2,
                io_instructions: 9,
                coalesced: 7
            }
        );
    }

    #[test]
    fn a_small_cell_grid_uses_fewer_rows() {
        let i = info(10 * CELL_W, 10 * CELL_H, 10 * CELL_W, 4, PixelFormat::Rgb);
        let mut fb = vec![0u8; i.stride * i.height * 4];
        let mut cells = vec![Cell::BLANK; 35];
        let mut cache = std::boxed::Box::default();
        let con = Console::new(&mut fb, i, &mut cells, &mut cache).unwrap();
        assert_eq!((con.cols(), con.rows()), (10, 3));
    }

    mod conversion {
        use super::*;
        use bootloader_api::info::{FrameBufferInfo, PixelFormat as P};

        fn boot(pixel_format: P, bpp: usize, stride: usize, byte_len: usize) -> FrameBufferInfo {
            FrameBufferInfo {
                byte_len,
                width: 640,
                height: 480,
                pixel_format,
                bytes_per_pixel: bpp,
                stride,
            }
        }

        #[test]
        fn each_bootloader_pixel_format_converts() {
            let len = 640 * 480 * 4;
            let cases = [
                (P::Rgb, 4, PixelFormat::Rgb),
                (P::Bgr, 4, PixelFormat::Bgr),
                (P::U8, 1, PixelFormat::Gray),
                (
                    P::Unknown {
                        red_position: 24,
                        green_position: 16,
                        blue_position: 8,
                    },
                    4,
                    PixelFormat::BitMask {
                        red: 24,
                        green: 16,
                        blue: 8,
                    },
                ),
            ];
            for (p, bpp, want) in cases {
                let fb = FbInfo::from_bootloader(&boot(p, bpp, 640, len)).unwrap();
                assert_eq!(fb.format, want);
                assert_eq!(
                    (fb.width, fb.height, fb.stride, fb.bytes_per_pixel),
                    (640, 480, 640, bpp)
                );
            }
        }

        #[test]
        fn bad_geometry_is_refused() {
            let len = 640 * 480 * 4;
            assert_eq!(
                FbInfo::from_bootloader(&boot(P::Rgb, 2, 640, len)),
                Err(FbError::BadPixelSize)
            );
            let high = P::Unknown {
                red_position: 24,
                green_position: 16,
                blue_position: 8,
            };
            assert_eq!(
                FbInfo::from_bootloader(&boot(high, 3, 640, len)),
                Err(FbError::BadPixelSize),
                "a component past the pixel's bytes"
            );
            assert_eq!(
                FbInfo::from_bootloader(&boot(P::Bgr, 4, 600, len)),
                Err(FbError::BadStride)
            );
            assert_eq!(
                FbInfo::from_bootloader(&boot(P::Bgr, 4, 700, len)),
                Err(FbError::BufferTooShort)
            );
            let mut tiny = boot(P::Bgr, 4, 640, len);
            tiny.height = CELL_H - 1;
            assert_eq!(FbInfo::from_bootloader(&tiny), Err(FbError::TooSmall));
        }

        #[test]
        fn bitmask_pixels_put_components_at_their_bit_offsets() {
            let fb = FbInfo::from_bootloader(&boot(
                P::Unknown {
                    red_position: 24,
                    green_position: 16,
                    blue_position: 8,
                },
                4,
                640,
                640 * 480 * 4,
            ))
            .unwrap();
            assert_eq!(fb.encode(Rgb::new(1, 2, 3)), [0, 3, 2, 1]);
        }
    }
}
