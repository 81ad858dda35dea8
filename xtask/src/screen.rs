//! Screenshot tests of the screen console: boot an image in QEMU with sluice told it
//! runs on hardware (so it halts with the final screen up instead of ending QEMU through
//! isa-debug-exit), wait for `sluice: exit status` on the serial port, take a
//! screenshot through the QEMU monitor (`screendump`, a binary PPM), and read the text
//! back by matching every character cell against the same font the kernel draws with.
//! The screen must show what the serial port printed, plus the final screen.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypervisor::config::{Config, Platform};
use hypervisor::console::fbcon::{self, CELL_H, CELL_W};

use crate::emulator::{self, Emulator, Machine, RunSpec};
use crate::image::Firmware;

/// An RGB image, 8 bits per component, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// Parses a binary PPM (netpbm "P6": magic, width, height, maxval as ASCII decimals
/// separated by whitespace, `#` comments to end of line, one whitespace byte, then the
/// raster), as QEMU's `screendump` writes it. Only maxval 255 (one byte per sample).
pub fn parse_ppm(bytes: &[u8]) -> Result<Image, String> {
    let mut at = 0;
    let mut token = || -> Result<&[u8], String> {
        loop {
            match bytes.get(at) {
                Some(b'#') => {
                    while bytes.get(at).is_some_and(|&b| b != b'\n') {
                        at += 1;
                    }
                }
                Some(b) if b.is_ascii_whitespace() => at += 1,
                Some(_) => break,
                None => return Err("PPM header ends early".into()),
            }
        }
        let start = at;
        while bytes.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
            at += 1;
        }
        Ok(&bytes[start..at])
    };
    if token()? != b"P6" {
        return Err("not a binary PPM (P6)".into());
    }
    let mut number = |what: &str| -> Result<usize, String> {
        let t = token()?;
        std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(format!("PPM {what} is not a number"))
    };
    let width = number("width")?;
    let height = number("height")?;
    let maxval = number("maxval")?;
    if maxval != 255 {
        return Err(format!("PPM maxval {maxval}, only 255 is supported"));
    }
    // Exactly one whitespace byte separates the header from the raster.
    let start = at + 1;
    let len = width * height * 3;
    let rgb = bytes
        .get(start..start + len)
        .ok_or(format!(
            "PPM raster is short: {} of {len} bytes",
            bytes.len().saturating_sub(start)
        ))?
        .to_vec();
    Ok(Image { width, height, rgb })
}

/// A glyph prepared for matching: coverage values and their mean.
struct Template {
    ch: char,
    g: Vec<f64>,
    mean: f64,
    /// Sum of squared deviations from the mean.
    ss: f64,
}

fn templates() -> Vec<Template> {
    let chars = (' '..='~').chain(std::iter::once('\u{fffd}'));
    chars
        .filter_map(|ch| {
            let raster = fbcon::glyph(ch)?;
            let g: Vec<f64> = raster
                .iter()
                .flat_map(|row| row.iter().map(|&a| f64::from(a)))
                .collect();
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            let ss = g.iter().map(|v| (v - mean).powi(2)).sum();
            // A blank glyph matches any uniform cell; those are handled first.
            (ss > 0.0).then_some(Template { ch, g, mean, ss })
        })
        .collect()
}

/// Reads the text of a screenshot: the console's cell grid starts at the top-left
/// pixel. A cell is a space when it is (nearly) one colour; otherwise the glyph whose
/// coverage explains its luminance best under any foreground/background pair (a least
/// squares fit `luma = a + b * coverage` per glyph, smallest residual wins), so text in
/// every colour of the console reads the same.
pub fn read_text(img: &Image) -> Vec<String> {
    let templates = templates();
    let (cols, rows) = (img.width / CELL_W, img.height / CELL_H);
    let mut lines = Vec::with_capacity(rows);
    let mut cell = vec![0f64; CELL_W * CELL_H];
    for row in 0..rows {
        let mut line = String::new();
        for col in 0..cols {
            for y in 0..CELL_H {
                for x in 0..CELL_W {
                    let p = ((row * CELL_H + y) * img.width + col * CELL_W + x) * 3;
                    let (r, g, b) = (img.rgb[p], img.rgb[p + 1], img.rgb[p + 2]);
                    // BT.601 luma.
                    cell[y * CELL_W + x] =
                        0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b);
                }
            }
            let (lo, hi) = cell
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if hi - lo < 8.0 {
                line.push(' ');
                continue;
            }
            let mean = cell.iter().sum::<f64>() / cell.len() as f64;
            let best = templates
                .iter()
                .map(|t| {
                    let cov: f64 = cell
                        .iter()
                        .zip(&t.g)
                        .map(|(l, g)| (l - mean) * (g - t.mean))
                        .sum();
                    let b = cov / t.ss;
                    let residual: f64 = cell
                        .iter()
                        .zip(&t.g)
                        .map(|(l, g)| (l - mean - b * (g - t.mean)).powi(2))
                        .sum();
                    (residual, t.ch)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map_or('?', |(_, ch)| ch);
            line.push(best);
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

/// The screen's text with lines that the console wrapped (full to the last column)
/// joined to their continuation, so serial lines longer than the screen still match.
pub fn unwrapped(lines: &[String], cols: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut joining = false;
    for line in lines {
        if joining {
            out.last_mut()
                .expect("joining follows a line")
                .push_str(line);
        } else {
            out.push(line.clone());
        }
        joining = line.chars().count() == cols;
    }
    out
}

/// Every serial line (from the banner on) must be on the screen, in order.
pub fn check_screen(serial: &str, screen: &[String], also: &[&str]) -> Result<(), String> {
    let serial_lines: Vec<&str> = serial
        .lines()
        .map(|l| l.trim_end_matches('\r').trim_end())
        .skip_while(|l| !l.starts_with("sluice "))
        .filter(|l| !l.is_empty())
        .collect();
    if serial_lines.is_empty() {
        return Err("the serial port printed no banner".into());
    }
    check_screen_lines(screen, serial_lines.into_iter().chain(also.iter().copied()))
}

/// Each of `wanted` must be part of a screen line, in this order.
pub fn check_screen_lines<'w>(
    screen: &[String],
    wanted: impl IntoIterator<Item = &'w str>,
) -> Result<(), String> {
    let mut from = 0;
    for want in wanted {
        match screen[from..].iter().position(|l| l.contains(want)) {
            Some(i) => from += i + 1,
            None => {
                return Err(format!(
                    "screen lacks {want:?} (after line {from}); the screen reads:\n{}",
                    screen.join("\n")
                ))
            }
        }
    }
    Ok(())
}

/// One screenshot case: a QEMU boot without VMX, in BIOS or UEFI.
pub struct ScreenCase {
    pub name: &'static str,
    pub firmware: Firmware,
    /// Lines of the final screen that must follow the serial lines.
    pub final_lines: &'static [&'static str],
    /// `false`: the PC has no serial port at all (QEMU `-serial none`, like most
    /// laptops); the screen alone must then show `screen_only` and the final lines.
    pub serial: bool,
}

/// What a PC without a serial port must still show on screen (the no-VMX path).
const SCREEN_ONLY_NO_VMX: &[&str] = &[
    "sluice 0.1.0 -- a type-1 hypervisor for Intel VMX",
    "sluice: screen ",
    "sluice: error: ",
    "sluice: what to do: ",
    "sluice: exit status 1",
];

const FINAL_NO_VMX: &[&str] = &[
    " sluice: run ended",
    " exit status 1: this CPU lacks something sluice needs",
    " what to do: sluice needs Intel VMX (VT-x); this is an AMD CPU",
];

pub const CASES: &[ScreenCase] = &[
    ScreenCase {
        name: "screen-qemu-uefi-no-vmx",
        firmware: Firmware::Uefi,
        final_lines: FINAL_NO_VMX,
        serial: true,
    },
    ScreenCase {
        name: "screen-qemu-uefi-no-serial-port",
        firmware: Firmware::Uefi,
        final_lines: FINAL_NO_VMX,
        serial: false,
    },
    ScreenCase {
        name: "screen-qemu-bios-no-vmx",
        firmware: Firmware::Bios,
        final_lines: FINAL_NO_VMX,
        serial: true,
    },
];

/// Boots the case and judges its screen; returns a one-line summary.
pub fn run_case(case: &ScreenCase, kernel: &Path) -> Result<String, String> {
    // Hardware mode: sluice halts and leaves the final screen up.
    let config = Config {
        platform: Platform::Hardware,
        ..Config::default()
    };
    let payload = crate::image::payload_bytes(&config, &[]);
    let dir = crate::emulator::run_dir(case.name);
    let result = crate::image::make_images(kernel, &payload, &dir.join("image")).and_then(|i| {
        let image = match case.firmware {
            Firmware::Bios => i.bios,
            Firmware::Uefi => i.uefi,
        };
        let spec = RunSpec {
            machine: Machine {
                emulator: Emulator::Qemu { kvm: false },
                firmware: case.firmware,
                cpu: None,
                ram_mib: 64,
                silence: emulator::SILENCE_DEFAULT,
                max_time: Duration::from_secs(120),
                echo: false,
            },
            image,
            workdir: dir.join("emulator"),
        };
        std::fs::create_dir_all(&spec.workdir).map_err(|e| e.to_string())?;
        screenshot_run(&spec, case)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs QEMU with a monitor socket, waits for the exit status on serial, then takes
/// screenshots until the final screen is up (drawn right after the status line).
fn screenshot_run(spec: &RunSpec, case: &ScreenCase) -> Result<String, String> {
    let vars = emulator::qemu_firmware_vars(spec)?;
    let socket = spec.workdir.join("monitor.sock");
    let mut args = emulator::qemu_args(spec, vars.as_deref());
    let at = args
        .windows(2)
        .position(|w| w[0] == "-monitor" && w[1] == "none")
        .ok_or("qemu_args has no -monitor none to replace")?;
    args[at + 1] = format!("unix:{},server,nowait", socket.display());
    if !case.serial {
        let at = args
            .windows(2)
            .position(|w| w[0] == "-serial" && w[1] == "stdio")
            .ok_or("qemu_args has no -serial stdio to replace")?;
        args[at + 1] = "none".into();
    }
    let mut child = emulator::spawn_group(
        Command::new("qemu-system-x86_64")
            .args(&args)
            .current_dir(&spec.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let serial = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().expect("piped");
    let sink = Arc::clone(&serial);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&serial.lock().unwrap()).into_owned();
    let start = Instant::now();
    let result = (|| {
        // Without a serial port the screen is the only witness: poll it instead.
        while case.serial && emulator::reported_status(&text()).is_none() {
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(format!("qemu exited ({exit}) before the exit status"));
            }
            if start.elapsed() > spec.machine.max_time {
                return Err("no exit status before the time limit".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // QEMU creates the socket a moment after it starts.
        let mut monitor = loop {
            match Monitor::connect(&socket) {
                Ok(m) => break m,
                Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let shot = spec.workdir.join("screen.ppm");
        let deadline = Instant::now()
            + if case.serial {
                Duration::from_secs(10)
            } else {
                spec.machine.max_time
            };
        loop {
            let _ = std::fs::remove_file(&shot);
            monitor.command(&format!("screendump {}", shot.display()))?;
            let bytes = std::fs::read(&shot).map_err(|e| format!("reading the screenshot: {e}"))?;
            let img = parse_ppm(&bytes)?;
            let lines = unwrapped(&read_text(&img), img.width / CELL_W);
            let verdict = if case.serial {
                check_screen(&text(), &lines, case.final_lines)
            } else if !text().is_empty() {
                Err("QEMU has no serial port, yet something was printed on one".into())
            } else {
                let want = SCREEN_ONLY_NO_VMX.iter().chain(case.final_lines);
                check_screen_lines(&lines, want.copied())
            };
            if verdict.is_ok() || Instant::now() > deadline {
                let _ = monitor.command("quit");
                return verdict.map(|()| {
                    if !case.serial {
                        return format!(
                            "{}x{} screen alone (no serial port) shows the banner, the error, \
                             the advice and the final screen",
                            img.width, img.height
                        );
                    }
                    format!(
                        "{}x{} screen shows the {} serial lines and the final screen",
                        img.width,
                        img.height,
                        text()
                            .lines()
                            .skip_while(|l| !l.starts_with("sluice "))
                            .count()
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    emulator::stop_group(&mut child);
    result.map_err(|e| format!("{e}\n--- serial ---\n{}\n--- end ---", text()))
}

/// The QEMU human monitor over a Unix socket: send a command, read up to the prompt.
struct Monitor {
    stream: UnixStream,
}

const PROMPT: &str = "(qemu) ";

impl Monitor {
    fn connect(path: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(path)
            .map_err(|e| format!("connecting to the QEMU monitor: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut m = Monitor { stream };
        m.read_prompt()?;
        Ok(m)
    }

    fn read_prompt(&mut self) -> Result<String, String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with(PROMPT) {
            let n = self
                .stream
                .read(&mut buf)
                .map_err(|e| format!("reading the QEMU monitor: {e}"))?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&got).into_owned())
    }

    fn command(&mut self, cmd: &str) -> Result<String, String> {
        self.stream
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("writing to the QEMU monitor: {e}"))?;
        if cmd == "quit" {
            return Ok(String::new());
        }
        self.read_prompt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::console::fbcon::{Cell, Console, FbInfo, GlyphCache, PixelFormat, Report};

    /// Renders text with the kernel's console into an RGB image, as a screendump of it
    /// would look.
    fn render(width: usize, height: usize, f: impl FnOnce(&mut Console)) -> Image {
        let info = FbInfo {
            width,
            height,
            stride: width,
            bytes_per_pixel: 3,
            format: PixelFormat::Rgb,
        };
        let mut fb = vec![0u8; width * height * 3];
        let mut cells = vec![Cell::BLANK; 10_000];
        let mut cache = Box::<GlyphCache>::default();
        let mut con = Console::new(&mut fb, info, &mut cells, &mut cache).unwrap();
        f(&mut con);
        Image {
            width,
            height,
            rgb: fb,
        }
    }

    fn ppm(img: &Image, header: &str) -> Vec<u8> {
        let mut v = header.as_bytes().to_vec();
        v.extend_from_slice(&img.rgb);
        v
    }

    #[test]
    fn ppm_header_with_comments_and_short_rasters() {
        let img = Image {
            width: 2,
            height: 1,
            rgb: vec![1, 2, 3, 4, 5, 6],
        };
        assert_eq!(
            parse_ppm(&ppm(&img, "P6\n# qemu\n2 1\n255\n")),
            Ok(img.clone())
        );
        assert_eq!(parse_ppm(&ppm(&img, "P6 2 1 255 ")), Ok(img.clone()));
        assert!(parse_ppm(&ppm(&img, "P6\n3 1\n255\n"))
            .unwrap_err()
            .contains("short"));
        assert!(parse_ppm(b"P3\n1 1\n255\n0 0 0")
            .unwrap_err()
            .contains("P6"));
        assert!(parse_ppm(b"P6\n1 1\n65535\n")
            .unwrap_err()
            .contains("maxval"));
        assert!(parse_ppm(b"P6\n1").unwrap_err().contains("early"));
    }

    #[test]
    fn reads_back_what_the_console_drew_in_any_colour() {
        let all: String = (' '..='~').collect();
        let img = render(60 * CELL_W, 6 * CELL_H, |c| {
            c.write_bytes(all.as_bytes());
            c.write_bytes(b"\n\x1b[33;44myellow on blue\x1b[0m caf\xc3\xa9");
        });
        let lines = read_text(&img);
        assert_eq!(lines[0], &all[..60]);
        assert_eq!(lines[1], &all[60..]);
        assert_eq!(lines[2], "yellow on blue caf\u{fffd}");
        assert_eq!(lines[3], "");
    }

    #[test]
    fn final_screen_and_wrapped_lines_read_back() {
        let long = "sluice: what to do: a hint longer than the screen is wide";
        let img = render(40 * CELL_W, 12 * CELL_H, |c| {
            c.write_bytes(b"sluice 0.1\n");
            c.write_bytes(long.as_bytes());
            c.write_bytes(b"\n");
            c.final_screen(&Report {
                status: 1,
                meaning: "unsupported",
                ok: false,
                end: None,
                numbers: None,
                hint: Some("x"),
            });
        });
        let lines = unwrapped(&read_text(&img), 40);
        assert_eq!(lines[1], long);
        assert_eq!(
            check_screen(
                &format!("bios noise\r\nsluice 0.1\r\n{long}\r\n"),
                &lines,
                &[" exit status 1: unsupported", " what to do: x"]
            ),
            Ok(())
        );
        let err = check_screen("sluice 0.1\nnot on screen\n", &lines, &[]).unwrap_err();
        assert!(err.contains("not on screen"));
        assert!(check_screen("no banner\n", &lines, &[]).is_err());
    }
}
