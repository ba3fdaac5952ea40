//! Reads a journal back. A line that is not a kat record (corrupt,
//! truncated by a crash, or someone else's) becomes a `Problem` naming its
//! file and line, and reading goes on.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{Entry, Header};
use crate::conntrack::Expired;
use crate::event::{Closes, Event, Lost};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the whole file could not be read.
    pub line: usize,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.what)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.what)
        }
    }
}

/// What reading a journal went through besides its entries.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The files read, oldest first.
    pub files: Vec<PathBuf>,
    pub problems: Vec<Problem>,
}

/// A whole journal in memory (`kat top --replay` moves through it).
#[derive(Debug, Default)]
pub struct Journal {
    /// In the order they were written.
    pub entries: Vec<Entry>,
    pub files: Vec<PathBuf>,
    pub problems: Vec<Problem>,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// One line of text as a journal entry, or why it is not one.
pub fn parse_line(line: &str) -> Result<Entry, String> {
    // Nearly every line is an event: read it as one first, and look at the
    // type on its own only when that fails.
    let as_event = match serde_json::from_str::<Event>(line) {
        Ok(ev) => return Ok(Entry::Event(ev)),
        Err(e) => e,
    };
    let kind: Kind = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let kind = kind.kind.ok_or("not a kat record (no \"type\")")?;
    let entry = match kind.as_ref() {
        "journal" => serde_json::from_str::<Header>(line).map(Entry::Header),
        "lost" => serde_json::from_str::<Lost>(line).map(Entry::Lost),
        "closes" => serde_json::from_str::<Closes>(line).map(Entry::Closes),
        "conntrack_expired" => serde_json::from_str::<Expired>(line).map(Entry::Expired),
        "probe" | "probe_answered" | "death" => Err(as_event),
        other => return Err(format!("not a kat record (type {other:?})")),
    };
    entry.map_err(|e| format!("not a valid {kind} record ({e})"))
}

/// Hands each entry of one journal file (or of anything read line by line:
/// fixtures, pipes) to `each`, in order; a line it cannot use becomes a
/// problem.
pub fn each_line(
    input: impl BufRead,
    file: &Path,
    each: &mut impl FnMut(Entry),
    problems: &mut Vec<Problem>,
) {
    let mut input = input;
    let mut buf = Vec::new();
    let mut line = 0;
    let mut take = |bytes: &[u8], line: usize| {
        let problem = |what: String| Problem {
            file: file.to_path_buf(),
            line,
            what,
        };
        let complete = bytes.last() == Some(&b'\n');
        let Ok(text) = std::str::from_utf8(bytes) else {
            problems.push(problem("not UTF-8 text".into()));
            return;
        };
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            return;
        }
        match parse_line(text) {
            Ok(entry) => each(entry),
            Err(_) if !complete => problems.push(problem(
                "truncated record (the writer stopped in the middle of it)".into(),
            )),
            Err(what) => problems.push(problem(what)),
        }
    };
    loop {
        line += 1;
        // A line whole in the read buffer is parsed where it is; copying
        // each line out first was a twentieth of the report's time.
        let read = match input.fill_buf() {
            Ok([]) => break,
            Ok(avail) => match memchr::memchr(b'\n', avail) {
                Some(end) => {
                    take(&avail[..=end], line);
                    input.consume(end + 1);
                    continue;
                }
                None => {
                    buf.clear();
                    input.read_until(b'\n', &mut buf)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                line -= 1;
                continue;
            }
            Err(e) => Err(e),
        };
        match read {
            Ok(_) => take(&buf, line),
            Err(e) => {
                problems.push(Problem {
                    file: file.to_path_buf(),
                    line,
                    what: format!("read error: {e}"),
                });
                break;
            }
        }
    }
}

/// Reads one journal file whole into `journal`.
pub fn read(input: impl BufRead, file: &Path, journal: &mut Journal) {
    each_line(
        input,
        file,
        &mut |e| journal.entries.push(e),
        &mut journal.problems,
    );
}

/// Hands every entry of the journal in `dir` to `each`, file by file (oldest
/// first), line by line: the journal is never in memory at once.
pub fn each_entry(dir: &Path, mut each: impl FnMut(Entry)) -> Result<Outcome> {
    if !dir.is_dir() {
        bail!(
            "no journal directory {} (written by `sudo kat record --dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    let files = super::files(dir)?;
    if files.is_empty() {
        bail!("no journal files (kat-*.jsonl) in {}", dir.display());
    }
    let mut outcome = Outcome::default();
    let mut denied = 0;
    for (_, path, _) in &files {
        match File::open(path) {
            Ok(f) => {
                each_line(
                    BufReader::with_capacity(1 << 16, f),
                    path,
                    &mut each,
                    &mut outcome.problems,
                );
                outcome.files.push(path.clone());
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    denied += 1;
                }
                outcome.problems.push(Problem {
                    file: path.clone(),
                    line: 0,
                    what: format!("cannot read: {e}"),
                });
            }
        }
    }
    if outcome.files.is_empty() {
        if denied > 0 {
            bail!(
                "cannot read the journal files in {}: permission denied (kat record writes them 0600; use sudo, or copy them)",
                dir.display()
            );
        }
        bail!("cannot read any journal file in {}", dir.display());
    }
    Ok(outcome)
}

/// Reads the whole journal in `dir` into memory, oldest file first.
pub fn read_dir(dir: &Path) -> Result<Journal> {
    let mut entries = Vec::new();
    let outcome = each_entry(dir, |e| entries.push(e))?;
    Ok(Journal {
        entries,
        files: outcome.files,
        problems: outcome.problems,
    })
}
