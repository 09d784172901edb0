//! Command-line flags, shaped after nginx's.

use std::path::PathBuf;

use clap::Parser;

use crate::lifecycle::Command;

#[derive(Debug, Parser)]
#[command(
    name = "graygate",
    version,
    disable_version_flag = true,
    about = "HTTP gateway for gray releases (ip_hash, weights, zero-downtime reload and upgrade)"
)]
pub struct Cli {
    /// Configuration file (YAML). Without it, the embedded default (conf/graygate.yaml) runs.
    #[arg(short = 'c', long = "conf", value_name = "FILE", global = true)]
    pub conf: Option<PathBuf>,

    /// Test the configuration and exit.
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Send a signal to the running graygate: reload, upgrade, reopen, quit, stop.
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    pub signal: Option<Command>,

    /// Take over the listening sockets of the running generation (set by the master).
    #[arg(short = 'u', long = "upgrade", hide = true)]
    pub upgrade: bool,

    /// Serve as a worker generation of a master (set by the master).
    #[arg(long = "worker", hide = true)]
    pub worker: bool,

    /// Live control through the admin listener: `canary ...`, `weight ...`.
    #[command(subcommand)]
    pub command: Option<crate::admin::client::Command>,

    /// Print the version and exit.
    #[arg(short = 'v', short_alias = 'V', long = "version")]
    pub version: bool,
}
