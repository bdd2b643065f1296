//! Clock faults on one process through libfaketime (Debian's `faketime` package).
//!
//! Jepsen's clock nemesis sets a node's system clock; here every node is a process on one
//! machine, so the clock is changed per process instead: the node is started with libfaketime
//! preloaded and reading its offset from a file this module rewrites, and libfaketime re-reads
//! the file on every clock call (`FAKETIME_NO_CACHE`). As with a real `date -s`, only the wall
//! clock (CLOCK_REALTIME) moves: the monotonic clock, which timeouts use, is left alone.
//!
//! The faults are Jepsen's: a *bump* jumps the clock by a delta, a *strobe* flips it back and
//! forth between now and now + delta every period for a bounded duration, a *reset* puts it
//! back, and a *skew* is a bump that stays.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where Debian installs libfaketime (multiarch directories first).
pub fn libfaketime() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Whether clock faults can be injected here, and if not, why.
pub fn available() -> Result<(), String> {
    libfaketime()
        .map(|_| ())
        .ok_or_else(|| "libfaketime is not installed (Debian: apt-get install faketime)".into())
}

/// The clock of one node.
#[derive(Debug, Clone)]
pub struct FakeClock {
    offset_file: PathBuf,
    library: PathBuf,
}

impl FakeClock {
    /// A clock with no offset, its control file in `dir`.
    pub fn new(dir: &Path, node: i32) -> io::Result<FakeClock> {
        let library = libfaketime().ok_or_else(|| io::Error::other(available().unwrap_err()))?;
        let clock = FakeClock {
            offset_file: dir.join(format!("n{node}.faketime")),
            library,
        };
        clock.reset()?;
        Ok(clock)
    }

    /// The environment to start the node's process with.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.offset_file.display().to_string(),
            ),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ("FAKETIME_DONT_RESET".into(), "1".into()),
        ]
    }

    /// Sets the wall clock to real time + `offset_ms` (negative: behind). Written to a temp
    /// file and renamed, so the process never reads half an offset.
    pub fn set_offset_ms(&self, offset_ms: i64) -> io::Result<()> {
        let sign = if offset_ms < 0 { '-' } else { '+' };
        let ms = offset_ms.unsigned_abs();
        let spec = format!("{sign}{}.{:03}\n", ms / 1000, ms % 1000);
        let tmp = self.offset_file.with_extension("tmp");
        fs::write(&tmp, spec)?;
        fs::rename(&tmp, &self.offset_file)
    }

    /// Back to real time.
    pub fn reset(&self) -> io::Result<()> {
        self.set_offset_ms(0)
    }

    /// Flips between real time and real time + `delta_ms` every `period` until `duration` has
    /// passed (bounded: at most `duration / period` flips), then resets.
    pub fn strobe(&self, delta_ms: i64, period: Duration, duration: Duration) -> io::Result<u32> {
        let end = Instant::now() + duration;
        let mut flips = 0;
        let period = period.max(Duration::from_millis(1));
        while Instant::now() < end {
            self.set_offset_ms(if flips % 2 == 0 { delta_ms } else { 0 })?;
            flips += 1;
            std::thread::sleep(period.min(end.saturating_duration_since(Instant::now())));
        }
        self.reset()?;
        Ok(flips)
    }
}
