//! The journal `kat record` keeps and `kat report` and `kat top --replay`
//! read: a directory of JSON-lines files, `kat-000001-20261121T031200Z.jsonl`
//! and on, each opened by a header line, then the events of `kat trace
//! --json` (docs/events.md) and `lost` lines.

pub mod reader;
pub mod writer;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::conntrack::Expired;
use crate::event::{rfc3339, Closes, Event, Lost};

/// The version of the journal's layout; the events keep their own contract.
pub const FORMAT: u32 = 1;

/// The first line of every journal file: where and how it was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "journal")]
pub struct Header {
    pub format: u32,
    /// kat's version.
    pub kat: String,
    pub host: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// The hooks' lanes, as `kat trace` names them.
    pub lanes: String,
    /// `--port` of the recording; empty when every port was recorded.
    pub ports: Vec<u16>,
    /// When this `kat record` started; the same in every file it wrote.
    #[serde(serialize_with = "rfc3339")]
    pub run_started: DateTime<Utc>,
    /// When this file was opened.
    #[serde(serialize_with = "rfc3339")]
    pub file_started: DateTime<Utc>,
}

/// One line of a journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Header(Header),
    Event(Event),
    Lost(Lost),
    /// Orderly closes counted in the kernel over an interval.
    Closes(Closes),
    /// An established flow this host's conntrack forgot (`--conntrack`).
    Expired(Expired),
}

/// The journal's file name for sequence number `seq`.
pub fn file_name(seq: u64, opened: DateTime<Utc>) -> String {
    format!("kat-{seq:06}-{}.jsonl", opened.format("%Y%m%dT%H%M%SZ"))
}

/// The sequence number of a journal file, or None for anyone else's file.
pub fn seq_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("kat-")?.strip_suffix(".jsonl")?;
    let (seq, _opened) = rest.split_once('-')?;
    seq.parse().ok()
}

/// The journal files already in `dir`, oldest first, with their sizes.
pub fn files(dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    for entry in entries {
        let entry =
            entry.with_context(|| format!("cannot read the directory {}", dir.display()))?;
        let path = entry.path();
        let Some(seq) = seq_of(&path) else { continue };
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        files.push((seq, path, size));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
pub(crate) mod tests;
