//! The command line, as clap reads it. Names and flags follow SPEC.md's Interfaces section.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Strata: distributed block storage with layered snapshots and remote copy.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, before or after the command words.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// API of the server to talk to (client commands), or to listen on (`strata server`).
    #[arg(long, global = true, env = "STRATA_API")]
    pub api: Option<String>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server, or list the servers of the management group (`strata server list`).
    Server(ServerArgs),
    /// List, add and remove the managers (the servers that vote on changes).
    #[command(subcommand)]
    Manager(ManagerCommand),
    /// Create, show and change the clusters of the management group.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, inspect, grow and delete volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Take, list, delete and compare snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Follow and cancel long operations (verify, remove-server) that run on the servers.
    #[command(subcommand)]
    Job(JobCommand),
    /// Run a local deployment for trying Strata out, until Ctrl-C.
    Dev(DevArgs),
}

/// `strata server`: run a server with these flags, or `strata server list`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub list: Option<ServerCommand>,
    /// Directory for this server's store and management state.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The server's name (default: derived from its id).
    #[arg(long)]
    pub name: Option<String>,
    /// NBD listen address (default 127.0.0.1:10809).
    #[arg(long)]
    pub nbd: Option<String>,
    /// Listen address for data traffic between servers (default: the API's IP and port + 1,
    /// i.e. 127.0.0.1:7781).
    #[arg(long)]
    pub peer: Option<String>,
    /// Start a new management group with this server as its only manager.
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// Join the management group of the server whose API is at URL.
    #[arg(long, value_name = "URL")]
    pub join: Option<String>,
    /// A TOML file with the same settings; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Most NBD connections open at once; more are closed as soon as accepted [default: 256].
    #[arg(long, value_name = "N")]
    pub nbd_max_connections: Option<usize>,
    /// Close an NBD connection idle this long (no request, no reply written): seconds or a
    /// duration such as 5m [default: never; 0 is never too].
    #[arg(long, value_name = "DURATION")]
    pub nbd_idle_timeout: Option<String>,
    /// Close an NBD connection whose client has not taken a reply for this long, giving back
    /// the bytes it held: seconds or a duration [default: 60; 0 is never].
    #[arg(long, value_name = "DURATION")]
    pub nbd_reply_timeout: Option<String>,
    /// Most requests of one NBD connection in flight [default: 64].
    #[arg(long, value_name = "N")]
    pub nbd_max_requests_per_connection: Option<usize>,
    /// Most payload bytes of one NBD connection in flight, until the replies are written; at
    /// least 32MiB, at most --nbd-max-bytes [default: 128MiB].
    #[arg(long, value_name = "SIZE")]
    pub nbd_max_bytes_per_connection: Option<String>,
    /// Most payload bytes in flight over all NBD connections [default: 512MiB].
    #[arg(long, value_name = "SIZE")]
    pub nbd_max_bytes: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List the servers of the management group.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ManagerCommand {
    /// List the managers, marking the leader.
    List,
    /// Make servers managers. A group has 1, 3 or 5 managers, so add two at once: `A,B`.
    Add {
        /// Server names, comma-separated.
        #[arg(value_delimiter = ',', required = true)]
        servers: Vec<String>,
    },
    /// Turn managers back into plain servers; remove two at once (`A,B`) to keep 1, 3 or 5.
    Remove {
        /// Server names, comma-separated.
        #[arg(value_delimiter = ',', required = true)]
        servers: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster of servers; servers in `default` move out of it.
    Create {
        name: String,
        /// Server names, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<String>,
    },
    /// List the clusters.
    List,
    /// Show one cluster.
    Show { name: String },
    /// Add a server to a cluster (it may come from `default`).
    AddServer { name: String, server: String },
    /// Take a server out of a cluster, first moving every volume's data off it (online), as a
    /// job. Waits until it is done, with a progress bar on a terminal, unless `--no-wait`;
    /// interrupting the wait does not stop the move (`strata job show ID` follows it).
    RemoveServer {
        name: String,
        server: String,
        /// Return as soon as the move has started, printing the job id.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a thin-provisioned volume.
    Create {
        name: String,
        /// Size, e.g. 10GiB.
        #[arg(long)]
        size: String,
        /// Cluster to place it on (default: `default`).
        #[arg(long)]
        cluster: Option<String>,
        /// Copies of each chunk, 1 to 3 [default: 2 when the cluster has at least 2 servers,
        /// else 1; the server decides].
        #[arg(long)]
        replicas: Option<u8>,
    },
    /// List volumes.
    List,
    /// Show a volume and its snapshots.
    Show { name: String },
    /// Grow a volume.
    Resize {
        name: String,
        /// New size, e.g. 20GiB; never smaller than now.
        #[arg(long)]
        size: String,
    },
    /// Delete a volume and its data. Refused while clients have it open or while it has
    /// snapshots, unless told otherwise.
    Delete {
        name: String,
        /// Delete even while clients have it or its snapshots open (their I/O then fails).
        #[arg(long)]
        force: bool,
        /// Delete its snapshots with it.
        #[arg(long)]
        with_snapshots: bool,
    },
    /// Compare the replicas of every chunk of `VOL` or `VOL@SNAP` by digest, as a job on the
    /// servers; waits for the report (a progress bar on a terminal) and exits non-zero if any
    /// chunk differs (unless `--repair` fixed it). Interrupting the wait does not stop the job.
    Verify {
        /// `VOL` or `VOL@SNAP`.
        target: String,
        /// Copy each differing chunk from a good replica to the others.
        #[arg(long)]
        repair: bool,
        /// Return at once, printing the job id (`strata job wait ID` gets the report).
        #[arg(long)]
        no_wait: bool,
        /// Compare at most this much of the volume per second, e.g. `100MiB/s`, leaving the
        /// disks to clients [default: no limit].
        #[arg(long, value_name = "RATE")]
        max_rate: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot: `VOL` (named from the time) or `VOL@SNAP`.
    Create { target: String },
    /// List a volume's snapshots, oldest first.
    List { volume: String },
    /// Delete a snapshot: `VOL@SNAP`. Refused while clients have it open, unless `--force`.
    Delete {
        target: String,
        /// Delete even while clients have it open (their reads then fail).
        #[arg(long)]
        force: bool,
    },
    /// Print the ranges changed after `VOL@A` up to `VOL@B` (default: the live volume).
    Diff { from: String, to: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List the running jobs and the last ones that ended, newest first.
    List,
    /// Show one job: its state, progress and, for a finished verify, its report.
    Show { id: String },
    /// Wait for a job to end (a progress bar on a terminal), then print its result; exits
    /// non-zero if it failed or a verify found differences.
    Wait { id: String },
    /// Cancel a running verify; it stops after the chunks it is comparing.
    Cancel { id: String },
}

/// `strata dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the deployment keeps its data.
    #[arg(long, default_value = "strata-dev")]
    pub dir: PathBuf,
    /// NBD listen address (the API listens on `--api`, default 127.0.0.1:7780).
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd: String,
}
