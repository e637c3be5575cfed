//! `strata dev`: a real Strata on loopback for trying it out — for now one server (a new
//! management group with a `default` cluster) in `./strata-dev`, with a 1 GiB volume `demo`,
//! until Ctrl-C. Run it again and it carries on with the same data.

use crate::args::{DevArgs, GlobalArgs};
use crate::client::Client;
use crate::commands::{init_logging, listen_addr, wait_for_ctrl_c};
use anyhow::Result;
use strata_api_types::{CreateVolume, VolumeInfo};
use strata_server::config::ServerConfigFile;
use tokio_util::sync::CancellationToken;

const DEMO_VOLUME: &str = "demo";
const DEMO_SIZE: u64 = 1 << 30;

/// Runs the local deployment until Ctrl-C.
pub async fn run(args: DevArgs, global: GlobalArgs) -> Result<()> {
    init_logging();
    let config = ServerConfigFile {
        data_dir: Some(args.dir.clone()),
        name: Some("dev-1".into()),
        api: Some(listen_addr(
            global.api.as_deref().unwrap_or("127.0.0.1:7780"),
        )),
        nbd: Some(args.nbd.clone()),
        bootstrap: true,
        ..Default::default()
    }
    .validate()?;
    let shutdown = CancellationToken::new();
    let running = strata_server::start(config, shutdown.clone()).await?;
    let api_url = running.api_url();
    let api = Client::new(&api_url)?;
    let volumes: Vec<VolumeInfo> = api.get("/v1/volumes").await?;
    if !volumes.iter().any(|v| v.name == DEMO_VOLUME) {
        let _: VolumeInfo = api
            .post(
                "/v1/volumes",
                &CreateVolume {
                    name: DEMO_VOLUME.into(),
                    size: DEMO_SIZE,
                    cluster: None,
                    replicas: None,
                },
            )
            .await?;
    }
    let nbd = format!("nbd://{}/{DEMO_VOLUME}", running.nbd_addr);
    let env = if api_url == "http://127.0.0.1:7780" {
        String::new()
    } else {
        format!("STRATA_API={api_url} ")
    };
    println!(
        "\nStrata dev is running in {dir} (data kept across restarts; Ctrl-C stops it).\n\
         \n  API         {api_url}\n  volume      {DEMO_VOLUME} (1GiB)  {nbd}\n\
         \nTry:\n  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' {nbd}\n  \
         {env}strata snapshot create {DEMO_VOLUME}@first\n  \
         qemu-img compare -f raw -F raw {nbd} nbd://{addr}/{DEMO_VOLUME}@first\n  \
         nbdcopy {nbd} demo.img\n  \
         {env}strata volume show {DEMO_VOLUME}\n  \
         curl {api_url}/metrics\n",
        dir = args.dir.display(),
        addr = running.nbd_addr,
    );
    wait_for_ctrl_c(shutdown).await;
    running.wait().await;
    Ok(())
}
