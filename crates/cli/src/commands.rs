//! The commands: `strata server` runs a server; the rest call the API and print its answer.

use crate::args::{
    Command, GlobalArgs, Output, ServerArgs, ServerCommand, SnapshotCommand, VolumeCommand,
};
use crate::client::{segment, Client, DEFAULT_API_URL};
use crate::{group, jobs, table};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use strata_api_types::{
    CreateSnapshot, CreateVolume, DiffInfo, JobInfo, ResizeVolume, SnapshotInfo, VerifyReport,
    VerifyRequest, VolumeInfo,
};
use strata_server::config::ServerConfigFile;
use strata_types::{format_size, parse_size, Name};
use tokio_util::sync::CancellationToken;

/// The listen address in `--api` for a server: `host:port`, with any `http://` dropped.
pub fn listen_addr(api: &str) -> String {
    api.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// `strata server ...`: run a server, or `strata server list`.
pub async fn server(args: ServerArgs, global: GlobalArgs) -> Result<()> {
    if let Some(ServerCommand::List) = args.list {
        return client(Command::Server(args), global).await;
    }
    let flags = ServerConfigFile {
        data_dir: args.data_dir,
        name: args.name,
        api: global.api.as_deref().map(listen_addr),
        nbd: args.nbd,
        peer: args.peer,
        bootstrap: args.bootstrap,
        join: args.join,
        nbd_max_connections: args.nbd_max_connections,
        nbd_idle_timeout: args.nbd_idle_timeout,
        nbd_reply_timeout: args.nbd_reply_timeout,
        nbd_max_requests_per_connection: args.nbd_max_requests_per_connection,
        nbd_max_bytes_per_connection: args.nbd_max_bytes_per_connection,
        nbd_max_bytes: args.nbd_max_bytes,
        ..Default::default()
    };
    let file = match &args.config {
        Some(path) => ServerConfigFile::load(path)?,
        None => ServerConfigFile::default(),
    };
    let config = flags.or(file).validate()?;
    init_logging();
    let shutdown = CancellationToken::new();
    let running = strata_server::start(config, shutdown.clone()).await?;
    eprintln!(
        "strata server {} serving: API {}  NBD {}  PEER {}",
        running.identity.name,
        running.api_url(),
        running.nbd_addr,
        running.peer_addr
    );
    wait_for_ctrl_c(shutdown).await;
    running.wait().await;
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
pub async fn wait_for_ctrl_c(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    eprintln!("stopping");
    shutdown.cancel();
}

pub(crate) fn print<T: Serialize>(
    output: Output,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => print!("{}", human(value)),
    }
    Ok(())
}

pub(crate) fn check_name(what: &str, text: &str) -> Result<()> {
    Name::new(text).map_err(|e| anyhow!("invalid {what} name: {e}"))?;
    Ok(())
}

/// Splits `VOL@SNAP`; both parts are checked.
fn split_target(target: &str) -> Result<(&str, &str)> {
    let (v, s) = target
        .split_once('@')
        .ok_or_else(|| anyhow!("{target:?} names no snapshot; write VOLUME@SNAPSHOT"))?;
    check_name("volume", v)?;
    check_name("snapshot", s)?;
    Ok((v, s))
}

/// A Unix time in milliseconds for people, in UTC.
pub(crate) fn time(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn volumes_table(volumes: &[VolumeInfo]) -> String {
    table::render(
        &[
            "NAME",
            "SIZE",
            "USED",
            "RAW",
            "REPLICAS",
            "SNAPSHOTS",
            "STATUS",
            "CLUSTER",
        ],
        &volumes
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    format_size(v.size),
                    group::size_or_dash(v.used_logical_bytes),
                    group::size_or_dash(v.used_raw_bytes),
                    v.replicas.to_string(),
                    v.snapshots.len().to_string(),
                    v.status.clone(),
                    v.cluster.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

fn snapshots_table(snapshots: &[SnapshotInfo]) -> String {
    table::render(
        &["NAME", "SIZE", "CREATED", "EXPORT"],
        &snapshots
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    format_size(s.size),
                    time(s.created_unix_ms),
                    s.export.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

fn volume_details(v: &VolumeInfo) -> String {
    let mut out = format!(
        "name:      {}\nid:        {}\nsize:      {}\nused:      {} (raw {}, every replica counted)\nreplicas:  {}\nrole:      {}\nstatus:    {}\ncluster:   {}\nservers:   {}\nstale:     {}\ncreated:   {}\nexport:    {}\n",
        v.name,
        v.id,
        format_size(v.size),
        group::size_or_dash(v.used_logical_bytes),
        group::size_or_dash(v.used_raw_bytes),
        v.replicas,
        v.role,
        v.status,
        v.cluster,
        v.servers.join(", "),
        if v.stale_servers.is_empty() { "-".to_string() } else { v.stale_servers.join(", ") },
        time(v.created_unix_ms),
        v.nbd_url
    );
    if let Some(target) = &v.target_servers {
        out.push_str(&format!("moving to: {}\n", target.join(", ")));
    }
    if let Some(j) = &v.job {
        out.push_str(&format!("job:       {}\n", jobs::summary(j)));
    }
    if v.snapshots.is_empty() {
        out.push_str("snapshots: none\n");
    } else {
        out.push_str("snapshots:\n");
        for line in snapshots_table(&v.snapshots).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Runs one client command against the API.
pub async fn client(command: Command, global: GlobalArgs) -> Result<()> {
    let api = Client::new(global.api.as_deref().unwrap_or(DEFAULT_API_URL))?;
    let out = global.output;
    match command {
        Command::Server(_) => group::servers(&api, out).await,
        Command::Manager(cmd) => group::manager(&api, out, cmd).await,
        Command::Cluster(cmd) => group::cluster(&api, out, cmd).await,
        Command::Volume(cmd) => volume(&api, out, cmd).await,
        Command::Snapshot(cmd) => snapshot(&api, out, cmd).await,
        Command::Job(cmd) => jobs::job(&api, out, cmd).await,
        Command::Dev(_) => bail!("strata dev is not a client command"),
    }
}

async fn volume(api: &Client, out: Output, cmd: VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            cluster,
            replicas,
        } => {
            check_name("volume", &name)?;
            let size = parse_size(&size)?;
            let v: VolumeInfo = api
                .post(
                    "/v1/volumes",
                    &CreateVolume {
                        name,
                        size,
                        cluster,
                        replicas,
                    },
                )
                .await?;
            print(out, &v, volume_details)
        }
        VolumeCommand::List => {
            let vs: Vec<VolumeInfo> = api.get("/v1/volumes").await?;
            print(out, &vs, |v| volumes_table(v))
        }
        VolumeCommand::Show { name } => {
            check_name("volume", &name)?;
            let v: VolumeInfo = api.get(&format!("/v1/volumes/{}", segment(&name))).await?;
            print(out, &v, volume_details)
        }
        VolumeCommand::Resize { name, size } => {
            check_name("volume", &name)?;
            let size = parse_size(&size)?;
            let v: VolumeInfo = api
                .post(
                    &format!("/v1/volumes/{}/resize", segment(&name)),
                    &ResizeVolume { size },
                )
                .await?;
            print(out, &v, volume_details)
        }
        VolumeCommand::Delete {
            name,
            force,
            with_snapshots,
        } => {
            check_name("volume", &name)?;
            api.delete(&format!(
                "/v1/volumes/{}?force={force}&with_snapshots={with_snapshots}",
                segment(&name)
            ))
            .await?;
            print(out, &serde_json::json!({ "deleted": name }), |_| {
                format!("deleted volume {name}\n")
            })
        }
        VolumeCommand::Verify {
            target,
            repair,
            no_wait,
            max_rate,
        } => {
            let (volume, snapshot) = match target.split_once('@') {
                Some(_) => {
                    let (v, s) = split_target(&target)?;
                    (v.to_string(), Some(s.to_string()))
                }
                None => (target.clone(), None),
            };
            check_name("volume", &volume)?;
            let max_rate = max_rate.as_deref().map(parse_rate).transpose()?;
            let job: JobInfo = api
                .post(
                    &format!("/v1/volumes/{}/verify", segment(&volume)),
                    &VerifyRequest {
                        snapshot,
                        repair,
                        max_rate,
                    },
                )
                .await?;
            jobs::started(api, out, job, no_wait).await
        }
    }
}

/// A rate in bytes per second: a size, optionally followed by `/s` (`100MiB/s`).
fn parse_rate(text: &str) -> Result<u64> {
    let size = text.strip_suffix("/s").unwrap_or(text);
    let rate = parse_size(size).map_err(|e| anyhow!("invalid rate {text:?}: {e}"))?;
    if rate == 0 {
        bail!("a rate of 0 would never end; give a positive rate such as 100MiB/s");
    }
    Ok(rate)
}

/// A verify report for people: a summary line, then each differing chunk's replicas.
pub(crate) fn verify_text(r: &VerifyReport) -> String {
    let target = match &r.snapshot {
        Some(s) => format!("{}@{s}", r.volume),
        None => r.volume.clone(),
    };
    let mut out = format!(
        "{target}: {} chunk(s) compared ({} held no data on any replica), {} differ\n",
        r.chunks,
        r.unallocated_chunks,
        r.mismatches.len() as u64 + r.unlisted_mismatches
    );
    for m in &r.mismatches {
        out.push_str(&format!(
            "  chunk {} (offset {}){}\n",
            m.chunk,
            m.offset,
            if m.repaired { ": repaired" } else { "" }
        ));
        for d in &m.replicas {
            let what = match (&d.digest, &d.error) {
                (Some(h), _) => format!(
                    "{} generation {}",
                    h.get(..16).unwrap_or(h),
                    d.generation.unwrap_or(0)
                ),
                (None, Some(e)) => format!("error: {e}"),
                (None, None) => "-".into(),
            };
            out.push_str(&format!("    {:<16} {what}\n", d.server));
        }
    }
    if r.unlisted_mismatches > 0 {
        out.push_str(&format!(
            "  and {} more differing chunk(s), not listed\n",
            r.unlisted_mismatches
        ));
    }
    out
}

async fn snapshot(api: &Client, out: Output, cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Create { target } => {
            let (volume, name) = match target.split_once('@') {
                Some(_) => {
                    let (v, s) = split_target(&target)?;
                    (v.to_string(), Some(s.to_string()))
                }
                None => {
                    check_name("volume", &target)?;
                    (target.clone(), None)
                }
            };
            let s: SnapshotInfo = api
                .post(
                    &format!("/v1/volumes/{}/snapshots", segment(&volume)),
                    &CreateSnapshot { name },
                )
                .await?;
            print(out, &s, |s| format!("created snapshot {}\n", s.export))
        }
        SnapshotCommand::List { volume } => {
            check_name("volume", &volume)?;
            let ss: Vec<SnapshotInfo> = api
                .get(&format!("/v1/volumes/{}/snapshots", segment(&volume)))
                .await?;
            print(out, &ss, |s| snapshots_table(s))
        }
        SnapshotCommand::Delete { target, force } => {
            let (v, s) = split_target(&target)?;
            api.delete(&format!(
                "/v1/volumes/{}/snapshots/{}?force={force}",
                segment(v),
                segment(s)
            ))
            .await?;
            print(out, &serde_json::json!({ "deleted": target }), |_| {
                format!("deleted snapshot {target}\n")
            })
        }
        SnapshotCommand::Diff { from, to } => {
            let (volume, a) = split_target(&from)?;
            let mut path = format!("/v1/volumes/{}/diff?from={}", segment(volume), segment(a));
            if let Some(to) = &to {
                let (v2, b) = split_target(to)?;
                if v2 != volume {
                    bail!("both snapshots must be of one volume, not {volume} and {v2}");
                }
                path.push_str(&format!("&to={}", segment(b)));
            }
            let d: DiffInfo = api.get(&path).await?;
            print(out, &d, |d| {
                let mut text = table::render(
                    &["OFFSET", "LENGTH"],
                    &d.ranges
                        .iter()
                        .map(|r| vec![r.offset.to_string(), r.len.to_string()])
                        .collect::<Vec<_>>(),
                );
                text.push_str(&format!(
                    "{} changed in {} ranges from {}@{} to {}\n",
                    format_size(d.changed_bytes),
                    d.ranges.len(),
                    d.volume,
                    d.from,
                    if d.to == "HEAD" {
                        "the live volume".to_string()
                    } else {
                        format!("{}@{}", d.volume, d.to)
                    }
                ));
                text
            })
        }
    }
}
