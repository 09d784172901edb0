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
//! - [`upstream`]: pools and selection (nginx-exact ip_hash, smooth weighted round robin).
//! - [`logs`]: nginx-format access and error logs, written off the request path.
//! - [`lifecycle`]: running a generation: signals, reload, drain, pid file, `-s` control.
//! - [`demo`]: the built-in demo backends.
//!
//! `docs/architecture.md` walks through them with a request, a reload and an upgrade.

pub mod admin;
pub mod canary;
pub mod cli;
pub mod config;
pub mod demo;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
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
    if let Some(cmd) = &cli.command {
        return admin::client::run(cmd, &plan, &name);
    }
    if let Some(cmd) = cli.signal {
        return match lifecycle::send(cmd, &plan.settings.pid_file) {
            Ok(msg) => {
                println!("graygate: {cmd}: {msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("graygate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    logs::error::install(log::LevelFilter::Info);
    let result = if cli.worker {
        lifecycle::serve(
            plan,
            lifecycle::Start {
                path: cli.conf,
                upgrade: cli.upgrade,
            },
        )
    } else {
        lifecycle::run_master(plan, cli.conf, cli.daemon)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graygate: {e}");
            ExitCode::FAILURE
        }
    }
}
