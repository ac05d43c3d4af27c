//! The local HTTP API and the `fleetmesh` CLI against a real mesh.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use fleetmesh_node::{Phase, TaskView};
use serde_json::{json, Value};

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Runs the CLI (blocking, in a thread) and returns (success, stdout, stderr).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmesh"))
                .args(&args)
                .env("RUST_LOG", "error")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into(),
                String::from_utf8_lossy(&out.stderr).into(),
            )
        }),
    )
    .await
    .expect("CLI timed out")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_cli_submit_status_peers_metrics_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 4, |_, _| {}).await;
    ready(&nodes, 3).await;
    let server = fleetmesh_cli::server::serve(
        "127.0.0.1:0".parse().unwrap(),
        nodes[0].client.clone(),
        Default::default(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.addr);

    // Submit through the API, wait, read back.
    let (code, sub) = post(&format!("{base}/v1/tasks"), json!({ "digits_sample": 4, "redundancy": 2 })).await;
    assert_eq!(code, 202, "{sub}");
    let id = sub["task_id"].as_str().unwrap().to_owned();
    let expected = sub["expected_label"].as_u64().unwrap();
    let (code, body) = get(&format!("{base}/v1/tasks/{id}/wait?timeout_ms=30000")).await;
    assert_eq!(code, 200);
    let view: TaskView = serde_json::from_str(&body).unwrap();
    assert_eq!(view.phase, Phase::Verified);
    assert_eq!(view.label.map(u64::from), Some(expected));
    assert_eq!(view.verified_by.len(), 2);
    let (_, list) = get(&format!("{base}/v1/tasks")).await;
    assert!(list.contains(&id));
    let (_, peers) = get(&format!("{base}/v1/peers")).await;
    let peers: Vec<fleetmesh_node::PeerInfo> = serde_json::from_str(&peers).unwrap();
    assert!(peers.iter().filter(|p| p.connected).count() >= 3);
    let (_, node) = get(&format!("{base}/v1/node")).await;
    assert!(node.contains(&nodes[0].client.peer_id().to_string()));
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok".to_owned()));
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert!(metrics.contains("fleetmesh_tasks_verified_total 1"), "{metrics}");
    assert!(metrics.contains("fleetmesh_libp2p_"), "libp2p's own metrics are missing");
    // The process's signature operations, read at the scrape: a verified task made some.
    let ops = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
    };
    assert!(ops("fleetmesh_signatures_made_total").is_some_and(|n| n > 0), "{metrics}");
    assert!(ops("fleetmesh_signatures_checked_total").is_some_and(|n| n > 0), "{metrics}");

    // A batch through the API: the expected labels in order, one verified root, each output
    // with its path to it.
    let (code, sub) = post(&format!("{base}/v1/tasks"), json!({ "digits_samples": [5, 6, 7] })).await;
    assert_eq!(code, 202, "{sub}");
    let id3 = sub["task_id"].as_str().unwrap().to_owned();
    let labels: Vec<u64> =
        sub["expected_labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap()).collect();
    let set = fleetmesh_node::digits::test_set();
    assert_eq!(labels, (5..8).map(|i| u64::from(set[i].label)).collect::<Vec<_>>());
    let (_, body) = get(&format!("{base}/v1/tasks/{id3}/wait?timeout_ms=30000")).await;
    let view: TaskView = serde_json::from_str(&body).unwrap();
    assert_eq!((view.phase, view.batch, view.items.len()), (Phase::Verified, Some(3), 3), "{body}");
    assert!(view.items.iter().all(|i| !i.path.is_empty() && i.label.is_some()), "{body}");

    // Bad requests: a clear error and a 4xx.
    for body in [
        json!({ "input_base64": "%%%" }),
        json!({ "input_base64": "AAAA", "digits_sample": 1 }),
        json!({}),
        json!({ "digits_sample": 100000 }),
        json!({ "digits_sample": 1, "model": "not-hex" }),
        json!({ "digits_sample": 1, "redundancy": 0 }),
    ] {
        let (code, err) = post(&format!("{base}/v1/tasks"), body.clone()).await;
        assert_eq!(code, 400, "{body} -> {err}");
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()), "{err}");
    }
    // Bad batches: the error names what is wrong.
    for (body, says) in [
        (json!({ "digits_samples": [] }), "1 to 256"),
        (json!({ "digits_samples": vec![1; 257] }), "257 samples; a batch holds 1 to 256"),
        (json!({ "digits_samples": [1, 2], "batch": 3 }), "batch is 3 but digits_samples lists 2"),
        (json!({ "digits_samples": [1, 2], "digits_sample": 1 }), "exactly one of"),
        (json!({ "input_base64": "AAAAAAAAAAA=", "batch": 3 }), "8 input bytes do not split into 3"),
        (json!({ "input_base64": "AAAAAAAAAAA=", "batch": 2 }), "each of 2"),
    ] {
        let (code, err) = post(&format!("{base}/v1/tasks"), body.clone()).await;
        assert_eq!(code, 400, "{body} -> {err}");
        assert!(err["error"].as_str().is_some_and(|e| e.contains(says)), "{body} -> {err}");
    }
    let raw = reqwest::Client::new()
        .post(format!("{base}/v1/tasks"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert!(raw.status().is_client_error());
    assert_eq!(get(&format!("{base}/v1/tasks/xyz")).await.0, 400);
    assert_eq!(get(&format!("{base}/v1/tasks/{}", "0".repeat(64))).await.0, 404);

    // The CLI against the same node.
    let api = vec!["--api".to_owned(), base.clone()];
    let (ok, out, err) = cli([
        vec!["submit".into(), "--digits-sample".into(), "9".into(), "--redundancy".into(), "2".into()],
        api.clone(),
    ]
    .concat())
    .await;
    assert!(ok, "{out}{err}");
    let label9 = fleetmesh_node::digits::test_set()[9].label;
    assert!(out.contains("phase    Verified"), "{out}");
    assert!(out.contains(&format!("(expected {label9})")), "{out}");
    let (ok, out, err) =
        cli([vec!["submit".into(), "--digits-samples".into(), "9,10".into()], api.clone()].concat()).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("merkle root over 2 outputs") && out.contains("item   1 label"), "{out}");
    assert!(out.contains(&format!("(expected {label9})")), "{out}");
    let (ok, out, _) = cli([vec!["status".into(), id.clone()], api.clone()].concat()).await;
    assert!(ok && out.contains("\"verified\""), "{out}");
    let (ok, out, _) = cli([vec!["peers".into()], api.clone()].concat()).await;
    assert!(ok && out.lines().count() >= 4, "{out}");
    let (ok, out, _) = cli([vec!["health".into()], api.clone()].concat()).await;
    assert!(ok && out.trim() == "ok");
    // Errors say what is wrong and exit non-zero.
    let (ok, _, err) = cli([vec!["submit".into()], api.clone()].concat()).await;
    assert!(!ok && err.contains("--digits-sample"), "{err}");
    let (ok, _, err) = cli(vec!["health".into(), "--api".into(), "http://127.0.0.1:1".into()]).await;
    assert!(!ok && err.contains("unreachable"), "{err}");
    let (ok, _, err) = cli([vec!["status".into(), "0".repeat(64)], api].concat()).await;
    assert!(!ok && err.contains("does not know task"), "{err}");
    server.shutdown().await;
    stop_all(nodes).await;
}

/// Finding 10: the API refuses what it does not know, always answers `{"error": ...}`, only
/// answers localhost without a token, needs a token beyond loopback, and bounds its load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_strangers_typos_and_floods_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, _| {}).await;
    let client = nodes[0].client.clone();
    let opts = |token: Option<&str>, max_concurrent| fleetmesh_cli::server::ServeOptions {
        token: token.map(str::to_owned),
        max_concurrent,
        ..Default::default()
    };
    let server = fleetmesh_cli::server::serve("127.0.0.1:0".parse().unwrap(), client.clone(), opts(None, 2))
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let error_of = |r: reqwest::Response| async move {
        let code = r.status().as_u16();
        let body: Value = r.json().await.expect("every error is a JSON body");
        (code, body["error"].as_str().expect("with an error field").to_owned())
    };
    // A page elsewhere that rebinds its DNS name to 127.0.0.1 sends its own Host.
    let r = http.get(format!("{base}/v1/peers")).header("Host", "evil.example:7070").send().await.unwrap();
    let (code, msg) = error_of(r).await;
    assert_eq!(code, 403, "{msg}");
    // A typo, malformed JSON, the wrong content type, a body over the limit, an unknown route,
    // a bad query: each a JSON error with the right status.
    let r = http.post(format!("{base}/v1/tasks")).json(&json!({"digits_sample": 1, "redundancey": 3})).send();
    let (code, msg) = error_of(r.await.unwrap()).await;
    assert!(code == 400 && msg.contains("redundancey"), "{code} {msg}");
    let r = http.post(format!("{base}/v1/tasks")).header("content-type", "application/json").body("{nope");
    let (code, _) = error_of(r.send().await.unwrap()).await;
    assert_eq!(code, 400);
    let (code, _) = error_of(http.post(format!("{base}/v1/tasks")).body("{}").send().await.unwrap()).await;
    assert_eq!(code, 415);
    let big = vec![b'1'; 3 * fleetmesh_protocol::limits::MAX_INPUT_BYTES];
    // Its own client: the server answers before reading the whole body and closes that
    // connection, which must not be reused for the next request.
    let once = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let r = once.post(format!("{base}/v1/tasks")).header("content-type", "application/json").body(big);
    let (code, _) = error_of(r.send().await.unwrap()).await;
    assert_eq!(code, 413);
    let (code, _) = error_of(http.get(format!("{base}/v2/nothing")).send().await.unwrap()).await;
    assert_eq!(code, 404);
    let (code, _) = error_of(http.delete(format!("{base}/v1/peers")).send().await.unwrap()).await;
    assert_eq!(code, 405);
    let id = "0".repeat(64);
    let (code, _) =
        error_of(http.get(format!("{base}/v1/tasks/{id}/wait?timeout_ms=soon")).send().await.unwrap()).await;
    assert_eq!(code, 400);
    // A path parameter that is not UTF-8.
    let (code, _) = error_of(http.get(format!("{base}/v1/tasks/%FF")).send().await.unwrap()).await;
    assert_eq!(code, 400);
    let (code, _) = error_of(http.get(format!("{base}/v1/tasks/%FF/wait")).send().await.unwrap()).await;
    assert_eq!(code, 400);
    // Two requests at once are served; a third is told to come back.
    let (req, _) = digits_task(0, 1);
    let task = client.submit(req).await.unwrap(); // alone in the mesh: it stays open
    let wait = |b: String| {
        let http = http.clone();
        tokio::spawn(
            async move { http.get(format!("{b}/v1/tasks/{task}/wait?timeout_ms=3000")).send().await },
        )
    };
    let (a, b) = (wait(base.clone()), wait(base.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, msg) = error_of(http.get(format!("{base}/v1/peers")).send().await.unwrap()).await;
    assert_eq!(code, 503, "{msg}");
    assert_eq!(a.await.unwrap().unwrap().status().as_u16(), 200);
    assert_eq!(b.await.unwrap().unwrap().status().as_u16(), 200);
    server.shutdown().await;

    // Beyond loopback: no token, no server.
    let err = fleetmesh_cli::server::serve("0.0.0.0:0".parse().unwrap(), client.clone(), opts(None, 8)).await;
    assert!(err.err().unwrap().to_string().contains("token"));
    let server =
        fleetmesh_cli::server::serve("0.0.0.0:0".parse().unwrap(), client.clone(), opts(Some("s3cret"), 8))
            .await
            .unwrap();
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    let (code, _) = error_of(http.get(format!("{base}/v1/peers")).send().await.unwrap()).await;
    assert_eq!(code, 401);
    let (code, _) =
        error_of(http.get(format!("{base}/v1/peers")).bearer_auth("wrong").send().await.unwrap()).await;
    assert_eq!(code, 401);
    let ok =
        http.get(format!("{base}/v1/peers")).bearer_auth("s3cret").header("Host", "vehicle-7:7070").send();
    assert_eq!(ok.await.unwrap().status().as_u16(), 200, "with the token any Host is fine");
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status().as_u16(), 200);
    let probe = http.get(format!("{base}/healthz")).header("Host", "vehicle-7:7070").send();
    assert_eq!(probe.await.unwrap().status().as_u16(), 200, "with a token, /healthz answers any Host");
    // The typed client carries the token.
    let api = fleetmesh_api::client::ApiClient::new(base.clone(), std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(api.peers().await.unwrap_err().status(), Some(401));
    assert!(api.with_token(Some("s3cret".into())).peers().await.is_ok());
    server.shutdown().await;
    stop_all(nodes).await;
}

/// Connections that never send a request (issue 9, the second review's finding 13): at most
/// `max_connections` are open at once, and each is closed once its header time is out, so
/// clients that connect and wait cannot keep the API from everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_are_capped_and_closed() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, _| {}).await;
    let opts = fleetmesh_cli::server::ServeOptions {
        max_connections: 2,
        header_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let server = fleetmesh_cli::server::serve("127.0.0.1:0".parse().unwrap(), nodes[0].client.clone(), opts)
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Both places are taken: a real request waits (it is not even accepted)...
    let url = format!("http://{}/healthz", server.addr);
    let probe = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!probe.is_finished(), "a third connection was served while two held every place");
    // ...until the server closes the silent ones.
    for s in &mut idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the server never closed a connection that sent nothing");
    }
    assert_eq!(tokio::time::timeout(WAIT, probe).await.unwrap().unwrap().unwrap(), 200);
    server.shutdown().await;
    stop_all(nodes).await;
}

/// A request whose body never finishes (the second review's finding 13, its open half): it is
/// answered 408 once the body time is out and its connection closed, and its place is free
/// for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_is_answered_408_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, _| {}).await;
    let opts = fleetmesh_cli::server::ServeOptions {
        max_concurrent: 1,
        body_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let server = fleetmesh_cli::server::serve("127.0.0.1:0".parse().unwrap(), nodes[0].client.clone(), opts)
        .await
        .unwrap();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"digits_sample\"";
    slow.write_all(head.as_bytes()).await.unwrap();
    // While it holds the only place, another request is turned away...
    let url = format!("http://{}/v1/peers", server.addr);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 503);
    // ...until its body time is out: 408, and the connection closed.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200, "the place is free again");
    // `/healthz`, which answers anyone, reads no body: a stranger's endless one holds no place.
    let mut probe = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n\r\nx";
    probe.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(WAIT, probe.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200", "healthz answers at once");
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200, "healthz holds no place");
    server.shutdown().await;
    stop_all(nodes).await;
}
