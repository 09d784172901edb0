//! graygate: an HTTP gateway for running old and new versions of an app side by side.
//!
//! It does the job of the nginx balancer in a gray release (ip_hash stickiness, weights raised
//! step by step, reload and binary upgrade without a failed request) from one YAML file, on
//! Cloudflare's Pingora. The modules follow the life of a config and of a request:
//!
//! - [`config`]: the YAML as written, with source positions for error messages.
//! - [`plan`]: the checked, compiled runtime plan; every config error is found here.
//! - [`snapshot`]: the live plan plus its open log files, swapped atomically on reload.
//! - [`proxy`]: Pingora's request phases: routing, headers, retries, error pages, access log.
//! - [`upstream`]: pools and selection (nginx-exact ip_hash, smooth weighted round robin,
//!   `consistent` hashing on a Maglev table by client or `hash_key`), passive and active health.
//! - [`canary`]: sticky canary splits whose percent changes live, the automatic ramp judged by
//!   each side's numbers, and the state file that carries live values across upgrades.
//! - [`admin`]: the admin listener: JSON API (canaries, weights), live page, CLI client.
//! - [`metrics`]: Prometheus counters, gauges and a lock-free histogram on the admin listener.
//! - [`logs`]: nginx-format access and error logs, written off the request path.
//! - [`lifecycle`]: the processes: a master that owns the sockets and pid file, worker
//!   generations, signals, reload, upgrade, drain, `-s` control.
//! - [`cli`]: the nginx-shaped command line.
//! - [`nginx`]: `graygate import-nginx`: nginx's config grammar, translated into graygate's YAML.
//! - [`demo`]: the built-in demo backends.
//!
//! `docs/architecture.md` walks through them with a request, a reload and an upgrade.

pub mod admin;
pub mod canary;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod nginx;
pub mod plan;
pub mod proxy;
pub mod snapshot;
pub mod upstream;

use std::process::ExitCode;

use cli::Cli;
use plan::Plan;

/// Runs the command line; `main` is only this.
pub fn main_with(cli: Cli) -> ExitCode {
    if cli.version {
        println!("graygate version {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if cli.worker {
        // A worker applies the bytes its master checked, not the file (see lifecycle::source).
        logs::error::install(log::LevelFilter::Info);
        return exit(lifecycle::run_worker());
    }
    match &cli.command {
        Some(cli::Sub::ImportNginx { file }) => return nginx::run(file),
        Some(cli::Sub::Push { force }) => return fleet::cli::push(cli.conf.as_deref(), *force),
        Some(cli::Sub::Pull { output }) => {
            return fleet::cli::pull(cli.conf.as_deref(), output.as_deref())
        }
        _ => {}
    }
    if !cli.test && cli.signal.is_none() && cli.command.is_none() {
        // The master reads and checks the file itself and keeps those exact bytes.
        logs::error::install(log::LevelFilter::Info);
        return exit(lifecycle::run_master(cli.conf, cli.daemon));
    }
    let loaded = config::load_from(cli.conf.as_deref());
    let name = cli
        .conf
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| config::EMBEDDED_NAME.into());
    let compiled = loaded.and_then(|l| Plan::compile(&l, None));
    let plan = match compiled {
        Ok(p) => p,
        Err(probs) => {
            eprintln!("{probs}");
            if cli.test {
                eprintln!("graygate: configuration file {name} test failed");
            }
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!("graygate: the configuration file {name} syntax is ok");
        println!("graygate: configuration file {name} test is successful");
        return ExitCode::SUCCESS;
    }
    if let Some(cli::Sub::Admin(cmd)) = &cli.command {
        return admin::client::run(cmd, &plan, &name);
    }
    let Some(cmd) = cli.signal else {
        return ExitCode::FAILURE;
    };
    match lifecycle::send(cmd, &plan.settings.pid_file, cli.conf.as_deref()) {
        Ok(msg) => {
            println!("graygate: {cmd}: {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("graygate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// nginx's way of failing a start: `graygate: [emerg] MESSAGE` on stderr, exit 1.
fn exit(r: Result<(), lifecycle::Error>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::logs::flush_all();
            eprintln!("graygate: [emerg] {e}");
            ExitCode::FAILURE
        }
    }
}
