//! The commands about the management group itself: `strata server list`, `strata manager ...`
//! and `strata cluster ...`. Like every client command they call the API of any server, which
//! forwards to the management leader.

use crate::args::{ClusterCommand, ManagerCommand, Output};
use crate::client::{segment, Client};
use crate::commands::{check_name, print};
use crate::table;
use anyhow::Result;
use strata_api_types::{
    AddClusterServer, ChangeManagers, ClusterInfo, CreateCluster, JobInfo, ManagerInfo, ServerInfo,
};
use strata_types::format_size;

/// A size for people, or `-` when unknown.
pub fn size_or_dash(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), format_size)
}

/// `strata server list`.
pub async fn servers(api: &Client, out: Output) -> Result<()> {
    let servers: Vec<ServerInfo> = api.get("/v1/servers").await?;
    print(out, &servers, |s| {
        table::render(
            &[
                "NAME", "STATE", "MANAGER", "CLUSTER", "API", "NBD", "CAPACITY", "USED",
            ],
            &s.iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.state.clone(),
                        s.manager.clone(),
                        s.cluster.clone().unwrap_or_else(|| "-".into()),
                        s.api_addr.clone(),
                        s.nbd_addr.clone(),
                        size_or_dash(s.capacity_bytes),
                        size_or_dash(s.used_bytes),
                    ]
                })
                .collect::<Vec<_>>(),
        )
    })
}

fn managers_table(managers: &[ManagerInfo]) -> String {
    table::render(
        &["NAME", "ROLE", "STATE"],
        &managers
            .iter()
            .map(|m| {
                let role = if m.leader { "leader" } else { "manager" };
                vec![m.name.clone(), role.into(), m.state.clone()]
            })
            .collect::<Vec<_>>(),
    )
}

/// `strata manager ...`.
pub async fn manager(api: &Client, out: Output, cmd: ManagerCommand) -> Result<()> {
    let change = match cmd {
        ManagerCommand::List => {
            let managers: Vec<ManagerInfo> = api.get("/v1/managers").await?;
            return print(out, &managers, |m| managers_table(m));
        }
        ManagerCommand::Add { servers } => ChangeManagers {
            add: servers,
            remove: Vec::new(),
        },
        ManagerCommand::Remove { servers } => ChangeManagers {
            add: Vec::new(),
            remove: servers,
        },
    };
    for name in change.add.iter().chain(&change.remove) {
        check_name("server", name)?;
    }
    let managers: Vec<ManagerInfo> = api.post("/v1/managers", &change).await?;
    print(out, &managers, |m| managers_table(m))
}

/// A cluster for people.
pub(crate) fn cluster_details(c: &ClusterInfo) -> String {
    let leaving = if c.leaving.is_empty() {
        "-".to_string()
    } else {
        c.leaving.join(", ")
    };
    format!(
        "name:     {}\nservers:  {}\nleaving:  {leaving}\nvolumes:  {}\n",
        c.name,
        c.servers.join(", "),
        c.volumes.join(", ")
    )
}

/// `strata cluster ...`.
pub async fn cluster(api: &Client, out: Output, cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::List => {
            let clusters: Vec<ClusterInfo> = api.get("/v1/clusters").await?;
            print(out, &clusters, |c| {
                table::render(
                    &["NAME", "SERVERS", "VOLUMES"],
                    &c.iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                c.servers.join(","),
                                c.volumes.len().to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            })
        }
        ClusterCommand::Show { name } => {
            check_name("cluster", &name)?;
            let c: ClusterInfo = api.get(&format!("/v1/clusters/{}", segment(&name))).await?;
            print(out, &c, cluster_details)
        }
        ClusterCommand::Create { name, servers } => {
            check_name("cluster", &name)?;
            for s in &servers {
                check_name("server", s)?;
            }
            let c: ClusterInfo = api
                .post("/v1/clusters", &CreateCluster { name, servers })
                .await?;
            print(out, &c, cluster_details)
        }
        ClusterCommand::AddServer { name, server } => {
            check_name("cluster", &name)?;
            check_name("server", &server)?;
            let path = format!("/v1/clusters/{}/servers", segment(&name));
            let c: ClusterInfo = api.post(&path, &AddClusterServer { server }).await?;
            print(out, &c, cluster_details)
        }
        ClusterCommand::RemoveServer {
            name,
            server,
            no_wait,
        } => {
            check_name("cluster", &name)?;
            check_name("server", &server)?;
            let path = format!(
                "/v1/clusters/{}/servers/{}",
                segment(&name),
                segment(&server)
            );
            let job: JobInfo = api.delete_json(&path).await?;
            crate::jobs::started(api, out, job, no_wait).await
        }
    }
}
