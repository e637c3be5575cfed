//! `strata dev`: a real Strata cluster on loopback for trying it out — three servers in one
//! process (`dev-1` bootstraps a management group, `dev-2` and `dev-3` join it, all three in
//! the `default` cluster), with a 1 GiB volume `demo` whose chunks are striped over them with
//! two replicas each, kept in `./strata-dev/dev-N` until Ctrl-C. Run it again and it carries on
//! with the same data.
//!
//! Addresses: `dev-1` listens on `--api` (default 127.0.0.1:7780) and `--nbd` (10809);
//! `dev-N` on the API port + 2(N-1) and the NBD port + (N-1); each server's peer port is its
//! API port + 1. With port 0 every server picks free ports.

use crate::args::{DevArgs, GlobalArgs};
use crate::client::Client;
use crate::commands::{init_logging, listen_addr, wait_for_ctrl_c};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use strata_api_types::{AddClusterServer, ClusterInfo, CreateVolume, VolumeInfo};
use strata_server::config::ServerConfigFile;
use strata_server::RunningServer;
use tokio_util::sync::CancellationToken;

const DEMO_VOLUME: &str = "demo";
const DEMO_SIZE: u64 = 1 << 30;
const SERVERS: u16 = 3;
const DEMO_REPLICAS: u8 = 2;

/// `addr` with its port moved up by `by` (port 0 stays 0: pick a free one).
fn shifted(addr: SocketAddr, by: u16) -> Result<String> {
    let port = match addr.port() {
        0 => 0,
        p => p
            .checked_add(by)
            .context("the dev ports run past 65535; pick lower --api and --nbd ports")?,
    };
    Ok(SocketAddr::new(addr.ip(), port).to_string())
}

/// Starts server `n` (1-based); the first bootstraps, the others join it.
async fn start_server(
    args: &DevArgs,
    api: SocketAddr,
    nbd: SocketAddr,
    n: u16,
    join: Option<String>,
    shutdown: &CancellationToken,
) -> Result<RunningServer> {
    let name = format!("dev-{n}");
    let config = ServerConfigFile {
        data_dir: Some(args.dir.join(&name)),
        name: Some(name),
        api: Some(shifted(api, 2 * (n - 1))?),
        nbd: Some(shifted(nbd, n - 1)?),
        bootstrap: join.is_none(),
        join,
        ..Default::default()
    }
    .validate()?;
    strata_server::start(config, shutdown.child_token()).await
}

/// Runs the local deployment until Ctrl-C.
pub async fn run(args: DevArgs, global: GlobalArgs) -> Result<()> {
    init_logging();
    let api: SocketAddr = listen_addr(global.api.as_deref().unwrap_or("127.0.0.1:7780"))
        .parse()
        .context("--api must be IP:PORT for strata dev")?;
    let nbd: SocketAddr = args
        .nbd
        .parse()
        .context("--nbd must be IP:PORT, e.g. 127.0.0.1:10809")?;
    let shutdown = CancellationToken::new();
    let first = start_server(&args, api, nbd, 1, None, &shutdown).await?;
    let api_url = first.api_url();
    let mut servers = vec![first];
    for n in 2..=SERVERS {
        servers.push(start_server(&args, api, nbd, n, Some(api_url.clone()), &shutdown).await?);
    }
    let client = Client::new(&api_url)?;
    let cluster: ClusterInfo = client.get("/v1/clusters/default").await?;
    for s in &servers {
        let name = s.identity.name.to_string();
        if !cluster.servers.contains(&name) {
            let _: ClusterInfo = client
                .post(
                    "/v1/clusters/default/servers",
                    &AddClusterServer { server: name },
                )
                .await?;
        }
    }
    let volumes: Vec<VolumeInfo> = client.get("/v1/volumes").await?;
    if !volumes.iter().any(|v| v.name == DEMO_VOLUME) {
        let _: VolumeInfo = client
            .post(
                "/v1/volumes",
                &CreateVolume {
                    name: DEMO_VOLUME.into(),
                    size: DEMO_SIZE,
                    cluster: None,
                    replicas: Some(DEMO_REPLICAS),
                },
            )
            .await?;
    }
    let nbd_of = |s: &RunningServer| format!("nbd://{}/{DEMO_VOLUME}", s.nbd_addr);
    let nbd = nbd_of(&servers[0]);
    let env = if api_url == "http://127.0.0.1:7780" {
        String::new()
    } else {
        format!("STRATA_API={api_url} ")
    };
    let table: String = servers
        .iter()
        .map(|s| {
            format!(
                "  {:<6}  API {}  NBD {}\n",
                s.identity.name,
                s.api_url(),
                s.nbd_addr
            )
        })
        .collect();
    println!(
        "\nStrata dev is running in {dir}: a cluster of {SERVERS} servers (data kept across \
         restarts; Ctrl-C stops it).\n\n{table}\
         \n  volume  {DEMO_VOLUME} (1GiB, {DEMO_REPLICAS} replicas per chunk), on any server: {nbd}\n\
         \nTry:\n  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' {nbd}\n  \
         qemu-io -f raw -r -c 'read -P 0xab 0 1M' {other}\n  \
         {env}strata snapshot create {DEMO_VOLUME}@first\n  \
         qemu-img compare -f raw -F raw {nbd} nbd://{addr}/{DEMO_VOLUME}@first\n  \
         nbdcopy {nbd} demo.img\n  \
         {env}strata volume show {DEMO_VOLUME}\n  \
         {env}strata volume verify {DEMO_VOLUME}\n  \
         {env}strata server list\n  \
         curl {api_url}/metrics\n",
        dir = args.dir.display(),
        addr = servers[0].nbd_addr,
        other = nbd_of(&servers[1]),
    );
    wait_for_ctrl_c(shutdown).await;
    for s in servers.into_iter().rev() {
        s.wait().await;
    }
    Ok(())
}
