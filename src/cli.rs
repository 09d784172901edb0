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

    /// Serve as a worker of a master, on the sockets and config bytes it hands down (set by
    /// the master; a worker started by hand refuses to run).
    #[arg(long = "worker", hide = true)]
    pub worker: bool,

    /// Live control through the admin listener (`canary ...`, `weight ...`), or
    /// `import-nginx FILE`.
    #[command(subcommand)]
    pub command: Option<Sub>,

    /// Print the version and exit.
    #[arg(short = 'v', short_alias = 'V', long = "version")]
    pub version: bool,
}

/// The subcommands: live control of a running instance, and tools that need none.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Sub {
    #[command(flatten)]
    Admin(crate::admin::client::Command),
    /// Print the graygate YAML for an nginx config; every directive not carried over is named
    /// on stderr (FILE:LINE), and the exit status is 2 if any of them changes behaviour.
    ImportNginx {
        /// nginx.conf, or a conf.d file with `upstream` and `server` blocks.
        file: PathBuf,
    },
    /// Check FILE as -t does and write its shared part (upstreams, servers, canaries,
    /// log_formats) to the fleet's etcd (`config_store`); refused if the fleet changed since
    /// FILE was last pushed or pulled.
    Push {
        /// Write even if the fleet's config changed since.
        #[arg(long)]
        force: bool,
    },
    /// Print the fleet's config (the shared part in etcd) that FILE's `config_store` names.
    /// Only with -o does a later push build on it.
    Pull {
        /// Write OUT: FILE's own settings with the fleet's shared part, and remember the
        /// revision for `push -c OUT` (OUT may be FILE).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<std::path::PathBuf>,
    },
}
