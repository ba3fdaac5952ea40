//! Writes the journal: lines are gathered into a batch, and a batch is
//! written whole and synced, so a crash or a power cut loses at most the
//! batch in flight and never leaves half a record behind a complete one.
//! Every start opens a new file; files rotate at `file_size` and the oldest
//! go when the directory's journal passes `max_size`.
//!
//! A journal that cannot be written (disk full, directory removed or made
//! read-only) never stops kat: the batch is counted as unwritten, the
//! trouble is told once, and every later batch tries again (a removed
//! directory is made anew).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use super::{file_name, files, Header};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The journal's total size, over all its files.
    pub max_size: u64,
    /// A file is closed and the next one opened at this size.
    pub file_size: u64,
}

/// The smallest file that holds a header and a few events.
pub const MIN_FILE_SIZE: u64 = 4096;

impl Limits {
    pub fn new(max_size: u64, file_size: Option<u64>) -> Result<Self> {
        // Eight files: dropping the oldest gives back an eighth of the cap.
        let file_size = file_size.unwrap_or(max_size / 8);
        if file_size < MIN_FILE_SIZE {
            bail!("the file size ({file_size} bytes) must be at least {MIN_FILE_SIZE} bytes");
        }
        if max_size < file_size {
            bail!("--max-size ({max_size} bytes) is smaller than one file ({file_size} bytes)");
        }
        Ok(Self {
            max_size,
            file_size,
        })
    }
}

struct Current {
    file: File,
    path: PathBuf,
    size: u64,
    /// Nothing but the header yet.
    fresh: bool,
}

pub struct Writer {
    /// Held while writing: a second recorder on the directory would remove
    /// this one's files for the cap.
    _lock: Flock<File>,
    dir: PathBuf,
    limits: Limits,
    header: Header,
    next_seq: u64,
    /// Closed files, oldest first, with their sizes.
    older: VecDeque<(PathBuf, u64)>,
    current: Current,
    batch: Vec<u8>,
    /// Where each line of the batch ends.
    line_ends: Vec<usize>,
    pub files_opened: u64,
    pub files_removed: u64,
    /// Records that could not be written.
    pub unwritten: u64,
    /// What stops the journal now, told once when it starts.
    trouble: Option<String>,
}

/// Creates the directory (0700) when missing.
fn make_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the journal directory {}", dir.display()))
}

fn lock(dir: &Path) -> Result<Flock<File>> {
    let handle =
        File::open(dir).with_context(|| format!("cannot open the directory {}", dir.display()))?;
    Flock::lock(handle, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        Errno::EWOULDBLOCK => anyhow!("another kat record is writing to {}", dir.display()),
        e => anyhow!("cannot lock {}: {e}", dir.display()),
    })
}

impl Writer {
    /// Opens a new file in `dir` (never appending to an old one: its last
    /// line may be the one a crash cut short).
    pub fn open(dir: &Path, limits: Limits, header: Header) -> Result<Self> {
        make_dir(dir)?;
        let lock = lock(dir)?;
        let files = files(dir)?;
        let next_seq = files.last().map_or(1, |(seq, _, _)| seq + 1);
        let older = files.into_iter().map(|(_, p, size)| (p, size)).collect();
        let current = Self::create(dir, next_seq, &header)?;
        let mut w = Self {
            _lock: lock,
            dir: dir.to_path_buf(),
            limits,
            header,
            next_seq: next_seq + 1,
            older,
            current,
            batch: Vec::new(),
            line_ends: Vec::new(),
            files_opened: 1,
            files_removed: 0,
            unwritten: 0,
            trouble: None,
        };
        w.enforce_cap()?;
        Ok(w)
    }

    fn create(dir: &Path, seq: u64, header: &Header) -> Result<Current> {
        let now = Utc::now();
        let path = dir.join(file_name(seq, now));
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut line = serde_json::to_vec(&Header {
            file_started: now,
            ..header.clone()
        })?;
        line.push(b'\n');
        if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
            // Not left behind half made: the next try makes it again.
            let _ = fs::remove_file(&path);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        // The new name must survive a power cut too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(Current {
            file,
            path,
            size: line.len() as u64,
            fresh: true,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.current.path
    }

    /// Adds one record to the batch.
    pub fn push(&mut self, record: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.batch, record)?;
        self.batch.push(b'\n');
        self.line_ends.push(self.batch.len());
        Ok(())
    }

    /// Bytes waiting in the batch.
    pub fn pending(&self) -> usize {
        self.batch.len()
    }

    /// Writes the batch; what could not be written is counted in
    /// `unwritten`. Returns what to tell when the journal's state changed:
    /// trouble began, the file was made anew, writing works again.
    pub fn flush(&mut self) -> Option<String> {
        // Taken: a failed batch is not retried into the next file.
        let batch = std::mem::take(&mut self.batch);
        let ends = std::mem::take(&mut self.line_ends);
        let renewed = match self.renew_if_gone() {
            Ok(renewed) => renewed,
            Err(e) => return self.failed(ends.len(), &e),
        };
        match self.write_batch(&batch, &ends) {
            Ok(()) => {}
            Err((written, e)) => return self.failed(ends.len() - written, &e),
        }
        if let Err(e) = self.enforce_cap() {
            return self.failed(0, &e);
        }
        match (self.trouble.take(), renewed) {
            (Some(_), _) => Some(format!(
                "writing {} again; {} records could not be written",
                self.current.path.display(),
                self.unwritten
            )),
            (None, Some(gone)) => Some(format!(
                "{gone} was removed under kat: now writing {}",
                self.current.path.display()
            )),
            (None, None) => None,
        }
    }

    /// Counts `lines` as unwritten; tells the trouble when it is new.
    fn failed(&mut self, lines: usize, e: &anyhow::Error) -> Option<String> {
        self.unwritten += lines as u64;
        let told = self.trouble.is_some();
        self.trouble = Some(format!("{e:#}"));
        (!told).then(|| {
            format!(
                "{e:#}: records are counted as unwritten until the journal can be written again"
            )
        })
    }

    /// When the file kat writes is no longer in the directory (the
    /// directory or the file was removed), makes both anew: writes to the
    /// old one would go nowhere. Returns the old file's path then.
    fn renew_if_gone(&mut self) -> Result<Option<String>> {
        use std::os::unix::fs::MetadataExt as _;
        let open = self
            .current
            .file
            .metadata()
            .context("cannot stat the journal file")?;
        let named = fs::metadata(&self.current.path);
        if named.is_ok_and(|m| (m.dev(), m.ino()) == (open.dev(), open.ino())) {
            return Ok(None);
        }
        make_dir(&self.dir)?;
        self._lock = lock(&self.dir)?;
        let next = Self::create(&self.dir, self.next_seq, &self.header)?;
        self.next_seq += 1;
        self.files_opened += 1;
        let old = std::mem::replace(&mut self.current, next);
        Ok(Some(old.path.display().to_string()))
    }

    /// Writes the batch, whole lines only, rotating as files fill up; then
    /// syncs. On failure, how many lines were written before it.
    fn write_batch(&mut self, batch: &[u8], ends: &[usize]) -> Result<(), (usize, anyhow::Error)> {
        let (mut start, mut i) = (0, 0);
        while i < ends.len() {
            let room = self.limits.file_size.saturating_sub(self.current.size) as usize;
            let mut j = i;
            while j < ends.len() && ends[j] - start <= room {
                j += 1;
            }
            if j == i {
                if !self.current.fresh {
                    self.rotate().map_err(|e| (i, e))?;
                    continue;
                }
                // A line longer than a whole file gets a file of its own.
                j = i + 1;
            }
            let end = ends[j - 1];
            self.write(&batch[start..end]).map_err(|e| (i, e))?;
            (start, i) = (end, j);
        }
        if start > 0 {
            self.current.file.sync_data().map_err(|e| {
                // Written but perhaps not kept: told, not counted.
                let e = anyhow::Error::new(e)
                    .context(format!("cannot sync {}", self.current.path.display()));
                (ends.len(), e)
            })?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let c = &mut self.current;
        if let Err(e) = c.file.write_all(bytes) {
            // Cut a partial write back off: no half record stays behind.
            let _ = c.file.set_len(c.size);
            return Err(e).with_context(|| format!("cannot write {}", c.path.display()));
        }
        c.size += bytes.len() as u64;
        c.fresh = false;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        self.current
            .file
            .sync_data()
            .with_context(|| format!("cannot sync {}", self.current.path.display()))?;
        let next = Self::create(&self.dir, self.next_seq, &self.header)?;
        self.next_seq += 1;
        self.files_opened += 1;
        let old = std::mem::replace(&mut self.current, next);
        self.older.push_back((old.path, old.size));
        log::info!("journal: now writing {}", self.current.path.display());
        Ok(())
    }

    /// Removes the oldest files until the journal fits in `max_size`.
    fn enforce_cap(&mut self) -> Result<()> {
        let mut total: u64 = self.current.size + self.older.iter().map(|(_, s)| s).sum::<u64>();
        while total > self.limits.max_size {
            let Some((path, size)) = self.older.pop_front() else {
                break;
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot remove {} to keep the size cap", path.display())
                    })
                }
            }
            self.files_removed += 1;
            log::info!("journal: removed {} (size cap)", path.display());
            total -= size;
        }
        Ok(())
    }
}
