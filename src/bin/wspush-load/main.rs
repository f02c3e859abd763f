//! `wspush-load`: the load generator for wspush and its tokio baseline. A WebSocket
//! CLIENT on mio + tungstenite (never the crate's own codec, so a codec bug cannot hide on
//! both sides), with scenarios `conns`, `fanout` and `echo`, and the one-client `recover`; see `--help`.
//!
//! It only ever connects to the addresses it is given, bounds every run by `--duration`,
//! and stops only the worker processes it started itself.

mod cli;
mod coord;
#[cfg(test)]
mod fake_server;
mod hist;
mod publisher;
mod recover;
mod report;
mod resp;
mod sys;
mod wire;
mod worker;

use clap::Parser;
use std::process::ExitCode;

/// Exit status: 0 clean run, 1 the run found problems (failures, losses...), 2 it could
/// not run (bad arguments, server unreachable before start, a worker crashed).
fn main() -> ExitCode {
    let command = match cli::Cli::parse().command {
        cli::TopCommand::Recover(a) => return recover::main(&a),
        cli::TopCommand::Scenario(c) => c,
    };
    let common = command.common();
    match sys::raise_nofile() {
        Ok((soft, _)) if common.worker.is_none() && soft < 1024 => {
            eprintln!("wspush-load: warning: only {soft} file descriptors per process");
        }
        Ok(_) => {}
        Err(e) => eprintln!("wspush-load: warning: cannot raise the open-file limit: {e}"),
    }
    if let Some(index) = common.worker {
        return match coord::run_child(&command, index, common.workers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wspush-load worker {index}: {e}");
                ExitCode::from(2)
            }
        };
    }
    let report = match coord::run(&command, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wspush-load: {e}");
            return ExitCode::from(2);
        }
    };
    if common.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("wspush-load: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.human());
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
