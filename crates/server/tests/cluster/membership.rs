//! Joining, managers, `server list` and clusters.

use crate::harness::{leader, Group};
use reqwest::Method;
use serde_json::{json, Value};

fn names(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_join_become_managers_and_form_clusters() {
    let g = Group::start(3).await;
    // Joined servers follow the log; only the bootstrap server votes.
    let servers = g
        .wait_for(2, "/v1/servers", "three servers up", |s| {
            s.as_array()
                .is_some_and(|s| s.len() == 3 && s.iter().all(|s| s["state"] == "up"))
        })
        .await;
    assert_eq!(names(&servers), ["s1", "s2", "s3"]);
    let roles: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["manager"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["leader", "none", "none"]);
    assert!(
        servers[1]["capacity_bytes"].as_u64().is_some_and(|c| c > 0),
        "{servers}"
    );

    // Two managers is refused with the way out; adding two at once works.
    let (status, body) = g.post(1, "/v1/managers", json!({"add": ["s2"]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("add two at once"),
        "{body}"
    );
    g.three_managers().await;
    let managers = g.get(2, "/v1/managers").await;
    assert_eq!(names(&managers), ["s1", "s2", "s3"]);
    assert_eq!(
        managers
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["leader"] == true)
            .count(),
        1
    );
    assert_eq!(leader(&managers).as_deref(), Some("s1"));
    let servers = g.get(1, "/v1/servers").await;
    let roles: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["manager"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["leader", "manager", "manager"]);

    // Clusters, through a follower: s2 and s3 are in no cluster after joining.
    let (status, body) = g
        .post(
            2,
            "/v1/clusters",
            json!({"name": "fast", "servers": ["s2", "s3"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = g
        .post(
            1,
            "/v1/volumes",
            json!({"name": "v", "size": 1 << 20, "cluster": "fast", "replicas": 2}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = g
        .call(2, Method::DELETE, "/v1/clusters/fast/servers/s3", None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("volume \"v\" has 2 replicas and would be left with 1 server(s)"),
        "{body}"
    );
    // s1 moves out of `default` into `fast`; it is not in the volume's layout, so it leaves
    // at once.
    let (status, body) = g
        .post(2, "/v1/clusters/fast/servers", json!({"server": "s1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["servers"], json!(["s2", "s3", "s1"]));
    assert_eq!(g.get(0, "/v1/clusters/default").await["servers"], json!([]));
    let (status, body) = g
        .call(1, Method::DELETE, "/v1/clusters/fast/servers/s1", None)
        .await;
    assert_eq!(status, 202, "{body}");
    let job = g.wait_job(2, body["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, body) = g
        .post(0, "/v1/clusters/default/servers", json!({"server": "s1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let clusters = g.get(2, "/v1/clusters").await;
    assert_eq!(names(&clusters), ["default", "fast"]);
    g.stop().await;
}
