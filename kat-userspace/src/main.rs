//! kat — a Linux TCP keepalive tracer.

use kat_userspace::cli::{self, Cli, Command};
use kat_userspace::{demo, doctor, exit, record, report, top, trace};

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let Some(command) = Cli::parse().command else {
        eprintln!("{}", cli::no_command());
        return ExitCode::from(exit::USAGE);
    };
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
        match command {
            Command::Trace(args) => trace::run(args).await,
            Command::Doctor(args) => doctor::run(&args),
            Command::Top(args) => top::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Record(args) => record::run(args).await,
            Command::Report(args) => report::run(&args),
            Command::Completions(args) => cli::completions(&args),
            Command::Man(args) => cli::man(&args),
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
