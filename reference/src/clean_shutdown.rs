//! The clean-shutdown marker (KIP-966's `previousBrokerEpoch`).
//!
//! The controller keeps a broker that restarts in the ISR and ELR only when its previous
//! shutdown was clean: a broker killed before it flushed may have lost acknowledged records, and
//! electing it from the ELR would lose them for good. The broker proves a clean shutdown by
//! registering with the broker epoch of its previous incarnation, which it can only know if that
//! incarnation wrote it down after flushing every log. So: after the last flush, write the epoch
//! to a marker file and fsync it; at startup, read the marker and delete it (durably) before
//! registering, so that a crash of the new incarnation cannot reuse it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::metadata::BrokerEpoch;

/// Kafka's marker is `.kafka_cleanshutdown`; ours holds the same fact under its own name.
pub const MARKER: &str = ".kcheck_cleanshutdown";

fn marker(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER)
}

/// Records that every log under `data_dir` is flushed and the broker with `broker_epoch` is
/// stopping: the next incarnation may register as cleanly shut down.
pub fn write(data_dir: &Path, broker_epoch: BrokerEpoch) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{MARKER}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{{\"version\":0,\"broker_epoch\":{broker_epoch}}}")?;
    f.sync_all()?;
    fs::rename(&tmp, marker(data_dir))?;
    crate::log::fsync_dir(data_dir)
}

/// The previous incarnation's broker epoch if it shut down cleanly, else -1 (KIP-966's
/// "unknown"); the marker is removed durably either way. A marker that cannot be parsed counts
/// as an unclean shutdown: claiming clean on bad evidence could elect a replica that lost data.
pub fn take(data_dir: &Path) -> std::io::Result<BrokerEpoch> {
    let path = marker(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(-1),
        Err(e) => return Err(e),
    };
    fs::remove_file(&path)?;
    crate::log::fsync_dir(data_dir)?;
    Ok(parse(&text).unwrap_or(-1))
}

fn parse(text: &str) -> Option<BrokerEpoch> {
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    if v.get("version")?.as_i64()? != 0 {
        return None;
    }
    v.get("broker_epoch")?.as_i64().filter(|e| *e >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_marker_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take(dir.path()).unwrap(), -1, "no marker: unclean");
        write(dir.path(), 42).unwrap();
        assert_eq!(take(dir.path()).unwrap(), 42);
        assert_eq!(
            take(dir.path()).unwrap(),
            -1,
            "the marker is gone once read: a crash of the next incarnation is unclean"
        );
    }

    #[test]
    fn a_damaged_marker_counts_as_unclean() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "{",
            "{\"version\":1,\"broker_epoch\":3}",
            "{\"version\":0,\"broker_epoch\":-5}",
        ] {
            fs::write(marker(dir.path()), bad).unwrap();
            assert_eq!(take(dir.path()).unwrap(), -1, "{bad:?}");
            assert!(!marker(dir.path()).exists());
        }
    }
}
