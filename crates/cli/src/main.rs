//! `strata`: the one binary. `strata server` runs a server, `strata dev` a local deployment, and
//! every other command is a thin client of a server's `/v1` API. Errors print as one line on
//! stderr with a non-zero exit.

mod args;
mod client;
mod commands;
mod dev;
mod group;
mod jobs;
mod table;

use args::{Cli, Command};
use clap::Parser;

/// mimalloc instead of glibc's allocator: the data path allocates a few buffers per request,
/// and glibc's malloc and free took about 9 % of a gateway's CPU. Measured in BENCHMARKS.md
/// (2026-11-28): 10–20 % more IOPS on the cluster and single-server jobs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => commands::server(args, cli.global).await,
            Command::Dev(args) => dev::run(args, cli.global).await,
            other => commands::client(other, cli.global).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let text = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}
