//! kat's command line. It lives in the library so that the man pages and
//! shell completions are made from it (`kat man`, `kat completions`) and
//! tests can walk it: they stay in step with the commands by construction.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};
use roff::{bold, roman, Roff};

use crate::event::Reason;
use crate::{demo, doctor, exit, record, report, top, trace};

/// `kat --version`: the version, the commit and the build date (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KAT_COMMIT"),
    ", built ",
    env!("KAT_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "kat",
    version = VERSION,
    about = "Which TCP connections are sending keepalive probes, and why connections die"
)]
pub struct Cli {
    /// None: kat says what to try first (`hint`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print every keepalive probe, answer and connection death as it happens.
    Trace(trace::TraceArgs),
    /// A lab of network namespaces replaying keepalive stories, under the dashboard.
    Demo(demo::DemoArgs),
    /// The live dashboard: connections with keepalive, probes, deaths.
    Top(top::TopArgs),
    /// Keep a journal of every event on disk, unattended (a systemd service).
    Record(record::RecordArgs),
    /// What a journal says happened: deaths by reason, worst peers and ports,
    /// timelines (no root needed).
    Report(report::ReportArgs),
    /// What this kernel supports and which hooks kat uses (exit 0 when kat can run).
    Doctor(doctor::DoctorArgs),
    /// Print kat's completion script for a shell on stdout.
    Completions(CompletionsArgs),
    /// Write kat's man pages into a directory (for packagers: `cargo xtask dist`).
    #[command(hide = true)]
    Man(ManArgs),
}

#[derive(Debug, Clone, clap::Args)]
#[command(
    after_long_help = "bash: kat completions bash > /etc/bash_completion.d/kat
zsh:  kat completions zsh > \"${fpath[1]}/_kat\"
fish: kat completions fish > ~/.config/fish/completions/kat.fish"
)]
pub struct CompletionsArgs {
    /// The shell to complete kat in.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Where to write kat.1 and kat-SUBCOMMAND.1 (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
}

/// What `kat` alone says, on stderr, before exiting with [`exit::USAGE`]:
/// where to start, then clap's usage line.
pub fn no_command() -> String {
    format!(
        "kat: no command given. Try first:
  kat doctor      what this kernel supports and whether kat can run here
  sudo kat top    the live dashboard of keepalive probes and deaths
  kat --help      every command

{}",
        Cli::command().render_usage()
    )
}

pub fn completions(args: &CompletionsArgs) -> Result<()> {
    completion_script(args.shell, &mut io::stdout());
    Ok(())
}

fn completion_script(shell: clap_complete::Shell, out: &mut dyn io::Write) {
    clap_complete::generate(shell, &mut completed(), "kat", out);
}

/// kat's command line as shells complete it: clap_complete offers hidden
/// subcommands and arguments too, so they are left out here.
fn completed() -> clap::Command {
    let kat = Cli::command();
    let mut shown = clap::Command::new("kat").version(VERSION);
    if let Some(about) = kat.get_about() {
        shown = shown.about(about.clone());
    }
    shown
        .args(kat.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(kat.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

pub fn man(args: &ManArgs) -> Result<()> {
    for page in man_pages(&args.dir)? {
        println!("{}", page.display());
    }
    Ok(())
}

/// Writes kat.1 and one page per visible subcommand into `dir`, and
/// returns their paths: kat.1 first.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // As clap_mangen::generate_to: no page for clap's `help` subcommand.
    let mut kat = Cli::command().disable_help_subcommand(true);
    kat.build();
    let mut pages = vec![page(&kat, dir, true)?];
    for sub in kat.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(page(sub, dir, false)?);
    }
    Ok(pages)
}

/// One page: clap_mangen's rendering of `cmd`, then the sections clap has
/// no place for, made from the code that defines them.
fn page(cmd: &clap::Command, dir: &Path, top: bool) -> Result<PathBuf> {
    let man = clap_mangen::Man::new(cmd.clone())
        .date(env!("KAT_BUILD_DATE"))
        .source(format!("kat {}", env!("CARGO_PKG_VERSION")))
        .manual("kat manual");
    let path = dir.join(man.get_filename());
    let mut text = Vec::new();
    man.render(&mut text)?;
    let mut roff = Roff::new();
    if top {
        roff.control("SH", ["DEATH REASONS"]);
        roff.text([roman(
            "The reason a death event (kat trace, kat record, kat report) gives:",
        )]);
        for reason in Reason::ALL {
            roff.control("TP", []);
            roff.text([bold(reason.name())]);
            roff.text([roman(reason.meaning())]);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in exit::CODES {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    if top {
        let subs: Vec<String> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("kat-{}(1)", s.get_name()))
            .collect();
        roff.text([roman(format!(
            "{}. The event and journal formats: docs/events.md in kat's sources.",
            subs.join(", ")
        ))]);
    } else {
        roff.text([bold("kat"), roman("(1)")]);
    }
    roff.to_writer(&mut text)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_visible_subcommand_gets_a_page_with_the_exit_codes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pages = man_pages(dir.path()).expect("man pages");
        let names: Vec<String> = pages
            .iter()
            .map(|p| {
                p.file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let mut want = vec!["kat.1".to_string()];
        want.extend(
            Cli::command()
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| format!("kat-{}.1", s.get_name())),
        );
        assert_eq!(names, want);
        assert!(names.contains(&"kat-trace.1".to_string()));
        assert!(!names.contains(&"kat-man.1".to_string()), "{names:?}");
        assert!(!names.contains(&"kat-help.1".to_string()), "{names:?}");
        for page in &pages {
            let text = std::fs::read_to_string(page).expect("read a page");
            assert!(text.contains(".SH \"EXIT STATUS\""), "{}", page.display());
            for (code, meaning) in exit::CODES {
                assert!(text.contains(&format!("\\fB{code}\\fR")), "{code}");
                assert!(text.contains(meaning), "{meaning}");
            }
        }
        let kat = std::fs::read_to_string(&pages[0]).expect("read kat.1");
        for reason in Reason::ALL {
            // roff escapes `-` and nothing in these names.
            assert!(
                kat.contains(&format!("\\fB{}\\fR", reason.name())),
                "{reason:?}"
            );
        }
        assert!(
            kat.contains("kat\\-record(1)"),
            "kat.1 points at the subcommands' pages"
        );
    }

    #[test]
    fn completions_offer_every_visible_subcommand_and_no_hidden_one() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            completion_script(shell, &mut script);
            let script = String::from_utf8(script).expect("a UTF-8 script");
            for sub in Cli::command().get_subcommands() {
                // Each shell names a subcommand's own completions after it.
                let named = script.contains(&format!("kat__{}", sub.get_name()))
                    || script.contains(&format!("kat,{}", sub.get_name()))
                    || script.contains(&format!("-a \"{}\"", sub.get_name()))
                    || script.contains(&format!("'{}:", sub.get_name()));
                assert_eq!(named, !sub.is_hide_set(), "{shell} {}", sub.get_name());
            }
        }
    }

    #[test]
    fn the_version_names_the_commit_and_the_build_date() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")), "{VERSION}");
        let commit = env!("KAT_COMMIT");
        assert!(
            commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{commit}"
        );
        let date = env!("KAT_BUILD_DATE");
        assert!(
            chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
            "{date}"
        );
    }
}
