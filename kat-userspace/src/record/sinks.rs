//! Where `kat record` writes its lines: the journal, stdout (for a log
//! shipper), or both. The lines are the same: the journal's format
//! (docs/events.md), starting with its header.

use std::io::{BufWriter, Stdout, Write as _};

use anyhow::{Context as _, Result};
use bytesize::ByteSize;
use serde::Serialize;

use crate::journal::writer::{Limits, Writer};
use crate::journal::Header;

pub struct Sinks {
    journal: Option<Writer>,
    stdout: Option<BufWriter<Stdout>>,
}

impl Sinks {
    /// The journal in `dir` (if any) and stdout (if asked), each starting
    /// with `header`.
    pub fn open(
        dir: Option<&std::path::Path>,
        limits: Limits,
        stdout: bool,
        header: Header,
    ) -> Result<Self> {
        let mut sinks = Sinks {
            journal: dir
                .map(|dir| Writer::open(dir, limits, header.clone()))
                .transpose()?,
            stdout: stdout.then(|| BufWriter::new(std::io::stdout())),
        };
        sinks.write_stdout(&header)?;
        Ok(sinks)
    }

    /// Where the lines go, for the start-up line.
    pub fn describe(&self, limits: Limits) -> String {
        let journal = self.journal.as_ref().map(|j| {
            format!(
                "{} (up to {} in files of {})",
                j.path().display(),
                ByteSize(limits.max_size).display().iec(),
                ByteSize(limits.file_size).display().iec(),
            )
        });
        match (journal, self.stdout.is_some()) {
            (Some(j), true) => format!("{j} and stdout"),
            (Some(j), false) => j,
            (None, _) => "stdout".into(),
        }
    }

    pub fn push(&mut self, record: &impl Serialize) -> Result<()> {
        if let Some(journal) = &mut self.journal {
            journal.push(record)?;
        }
        self.write_stdout(record)
    }

    fn write_stdout(&mut self, record: &impl Serialize) -> Result<()> {
        if let Some(out) = &mut self.stdout {
            serde_json::to_writer(&mut *out, record).context("cannot write to stdout")?;
            out.write_all(b"\n").context("cannot write to stdout")?;
        }
        Ok(())
    }

    /// Bytes the journal has waiting.
    pub fn pending(&self) -> usize {
        self.journal.as_ref().map_or(0, Writer::pending)
    }

    /// Writes out what waits, everywhere; tells on stderr when the
    /// journal's state changed (a journal that cannot be written never
    /// stops kat). Only stdout failing is an error.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(notice) = self.journal.as_mut().and_then(Writer::flush) {
            eprintln!("kat: journal: {notice}");
        }
        if let Some(out) = &mut self.stdout {
            out.flush().context("cannot write to stdout")?;
        }
        Ok(())
    }

    /// Records the journal could not keep.
    pub fn unwritten(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.unwritten)
    }

    /// The journal's files, for the last line: `3 files opened, 1 removed
    /// for the size cap, `; nothing without a journal.
    pub fn files_text(&self) -> String {
        self.journal.as_ref().map_or(String::new(), |j| {
            format!(
                "{} files opened, {} removed for the size cap, {} records unwritten, ",
                j.files_opened, j.files_removed, j.unwritten
            )
        })
    }
}
