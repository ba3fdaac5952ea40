//! kat — a Linux TCP keepalive tracer.

use kat_userspace::{demo, doctor, exit, record, report, top, trace};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kat",
    version,
    about = "Which TCP connections are sending keepalive probes, and why connections die"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kat: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => trace::run(args).await,
            Command::Doctor(args) => doctor::run(&args),
            Command::Top(args) => top::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Record(args) => record::run(args).await,
            Command::Report(args) => report::run(&args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kat: {err:#}");
            ExitCode::from(exit::code(&err))
        }
    }
}
