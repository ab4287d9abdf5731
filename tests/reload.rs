//! Hot reload: every trigger, all-or-nothing application, listener set changes.

use std::os::unix::fs::symlink;
use std::path::Path;

use tern_testkit::{
    admin_yaml, direct_yaml, free_port, get, listener_yaml, tern_bin, tern_check, wait_body,
    wait_for, Backend, ConfigDir, Tern,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A full config (admin + one listener + direct response `body`) as one file's text.
fn whole(admin: u16, port: u16, body: &str) -> String {
    format!(
        "{}{}{}",
        admin_yaml(admin),
        listener_yaml("ingress", port, "main"),
        direct_yaml("main", body)
    )
}

async fn body_is(port: u16, needle: &str) {
    wait_body(&format!("http://127.0.0.1:{port}/"), &[], needle).await;
}

#[tokio::test]
async fn in_place_edit_rename_new_file_and_delete() {
    let (admin, port, port2) = (free_port(), free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listener.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write("routes.yaml", &direct_yaml("main", "v1"));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    body_is(port, "v1").await;

    // In-place edit (truncate + write, what `echo >` and many editors do).
    cfg.write("routes.yaml", &direct_yaml("main", "v2"));
    body_is(port, "v2").await;

    // Save by rename (vim, atomic writers): write a hidden temp file, rename over.
    let tmp = cfg.write(".routes.yaml.swp", &direct_yaml("main", "v3"));
    std::fs::rename(tmp, cfg.path().join("routes.yaml")).unwrap();
    body_is(port, "v3").await;

    // A new file in a new subdirectory adds a listener.
    cfg.write(
        "more/second.yaml",
        &format!(
            "{}{}",
            listener_yaml("second", port2, "second"),
            direct_yaml("second", "two")
        ),
    );
    body_is(port2, "two").await;

    // Deleting it removes the listener (its socket closes).
    std::fs::remove_file(cfg.path().join("more/second.yaml")).unwrap();
    wait_for("second listener to close", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port2))
            .await
            .err()
            .map(|_| ())
    })
    .await;
    body_is(port, "v3").await;
    assert!(tern.stat("server.config_update_success").await >= 5);
}

#[tokio::test]
async fn directory_symlink_swap() {
    let (admin, port) = (free_port(), free_port());
    let base = tempfile::tempdir().unwrap();
    for (v, body) in [("v1", "one"), ("v2", "two")] {
        std::fs::create_dir(base.path().join(v)).unwrap();
        std::fs::write(
            base.path().join(v).join("all.yaml"),
            whole(admin, port, body),
        )
        .unwrap();
    }
    symlink("v1", base.path().join("current")).unwrap();
    let _tern = Tern::start(&base.path().join("current"), admin, &[]).await;
    body_is(port, "one").await;
    // The sync agent's swap: a temp symlink renamed over `current`.
    symlink("v2", base.path().join(".current.tmp")).unwrap();
    std::fs::rename(
        base.path().join(".current.tmp"),
        base.path().join("current"),
    )
    .unwrap();
    body_is(port, "two").await;
    // And back, then an edit inside the now-current target.
    symlink("v1", base.path().join(".current.tmp")).unwrap();
    std::fs::rename(
        base.path().join(".current.tmp"),
        base.path().join("current"),
    )
    .unwrap();
    body_is(port, "one").await;
    std::fs::write(
        base.path().join("v1/all.yaml"),
        whole(admin, port, "one-edited"),
    )
    .unwrap();
    body_is(port, "one-edited").await;
}

#[tokio::test]
async fn symlinked_parent_directory_swap() {
    // PATH itself is a plain directory name below a symlinked directory: /base/live -> a, PATH = /base/live/conf.
    let (admin, port) = (free_port(), free_port());
    let base = tempfile::tempdir().unwrap();
    for (v, body) in [("a", "from-a"), ("b", "from-b")] {
        let d = base.path().join(v).join("conf");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("all.yaml"), whole(admin, port, body)).unwrap();
    }
    symlink("a", base.path().join("live")).unwrap();
    let _tern = Tern::start(&base.path().join("live/conf"), admin, &[]).await;
    body_is(port, "from-a").await;
    symlink("b", base.path().join(".live.tmp")).unwrap();
    std::fs::rename(base.path().join(".live.tmp"), base.path().join("live")).unwrap();
    body_is(port, "from-b").await;
}

/// Kubernetes ConfigMap layout: files are symlinks into `..data`, itself a symlink swapped atomically.
#[tokio::test]
async fn configmap_data_symlink_swap() {
    let (admin, port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write_version = |name: &str, body: &str| {
        std::fs::create_dir(d.join(name)).unwrap();
        std::fs::write(d.join(name).join("tern.yaml"), whole(admin, port, body)).unwrap();
    };
    write_version("..2026_11_22_01", "cm-one");
    symlink("..2026_11_22_01", d.join("..data")).unwrap();
    symlink("..data/tern.yaml", d.join("tern.yaml")).unwrap();
    let _tern = Tern::start(d, admin, &[]).await;
    body_is(port, "cm-one").await;
    write_version("..2026_11_22_02", "cm-two");
    symlink("..2026_11_22_02", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_11_22_01")).unwrap();
    body_is(port, "cm-two").await;
}

#[tokio::test]
async fn invalid_config_is_kept_out_and_reported() {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listener.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write("routes.yaml", &direct_yaml("main", "good"));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    let v1 = tern.config_dump().await["version"].clone();

    // A route to a cluster no file defines.
    cfg.write(
        "routes.yaml",
        "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: / }\n            route: { cluster: missing }\n",
    );
    let dump = wait_for("rejection in config_dump", || async {
        let d = tern.config_dump().await;
        (!d["last_reload_error"].is_null()).then_some(d)
    })
    .await;
    assert_eq!(dump["version"], v1, "the running version is the old one");
    let diag = &dump["last_reload_error"]["diagnostics"][0];
    assert_eq!(diag["code"], "E006");
    assert!(diag["file"].as_str().unwrap().ends_with("routes.yaml"));
    assert_eq!(
        (diag["line"].as_u64(), diag["column"].as_u64()),
        (Some(8), Some(31))
    );
    assert_eq!(tern.stat("server.config_update_rejected").await, 1);
    let r = get(&format!("http://127.0.0.1:{port}/"), &[]).await;
    assert_eq!(r.body, "good", "old routes keep serving");
    let prom = get(&tern.admin_url("/stats/prometheus"), &[]).await.body;
    assert!(
        prom.contains("tern_config_update_rejected_total 1"),
        "{prom}"
    );

    // A YAML syntax error is rejected the same way.
    cfg.write("broken.yaml", "clusters: [ { name: x\n");
    wait_for("second rejection", || async {
        (tern.stat("server.config_update_rejected").await == 2).then_some(())
    })
    .await;
    assert!(
        tern.logs().contains("broken.yaml"),
        "the error is logged with its file"
    );

    // Fixing both applies the new set and clears the error.
    std::fs::remove_file(cfg.path().join("broken.yaml")).unwrap();
    cfg.write("routes.yaml", &direct_yaml("main", "fixed"));
    body_is(port, "fixed").await;
    assert!(tern.config_dump().await["last_reload_error"].is_null());
}

#[tokio::test]
async fn unbindable_listener_rejects_the_whole_set() {
    let (admin, port) = (free_port(), free_port());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let cfg = ConfigDir::new();
    cfg.write("a.yaml", &whole(admin, port, "before"));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    // The clashing file first: every intermediate state the watcher may see includes it.
    cfg.write("b.yaml", &listener_yaml("clash", taken_port, "main"));
    cfg.write("a.yaml", &whole(admin, port, "after"));
    let dump = wait_for("bind rejection", || async {
        let d = tern.config_dump().await;
        (!d["last_reload_error"].is_null()).then_some(d)
    })
    .await;
    let msg = dump["last_reload_error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("cannot bind listener 127.0.0.1:{taken_port}")),
        "{msg}"
    );
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/"), &[]).await.body,
        "before"
    );
}

#[tokio::test]
async fn unchanged_content_is_skipped_and_sighup_forces() {
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("a.yaml", &whole(admin, port, "same"));
    let tern = Tern::start(cfg.path(), admin, &[]).await;
    cfg.write("a.yaml", &whole(admin, port, "same"));
    wait_for("unchanged count", || async {
        (tern.stat("server.config_update_unchanged").await >= 1).then_some(())
    })
    .await;
    assert_eq!(tern.stat("server.config_update_attempt").await, 0);
    tern.signal("HUP");
    // `update_attempt` is counted when the reload starts, `update_success` when it is applied:
    // wait for the second, then both are final.
    wait_for("forced reload", || async {
        (tern.stat("server.config_update_success").await == 2).then_some(())
    })
    .await;
    assert_eq!(tern.stat("server.config_update_attempt").await, 1);
}

/// Reads one HTTP/1.1 response with a content-length body from a raw stream.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                return text[i + 4..i + 4 + len].to_string();
            }
        }
    }
}

#[tokio::test]
async fn open_connections_survive_a_reload_and_in_flight_requests_finish_on_their_config() {
    let slow = Backend::start("old-cluster").await;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    let forward = |addr: &str| {
        format!(
            "{}{}route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: /slow }}\n            route: {{ cluster: c }}\n          - match: {{ prefix: / }}\n            direct_response: {{ status: 200, body: \"{addr}\" }}\nclusters:\n  - name: c\n    endpoints: [{{ address: \"{addr}\" }}]\n",
            admin_yaml(admin),
            listener_yaml("ingress", port, "main")
        )
    };
    cfg.write("a.yaml", &forward(&slow.addr.to_string()));
    let _tern = Tern::start(cfg.path(), admin, &[]).await;

    // A keep-alive connection opened before the reload.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn).await, slow.addr.to_string());

    // An in-flight request to the old cluster.
    let inflight =
        tokio::spawn(
            async move { get(&format!("http://127.0.0.1:{port}/slow?ms=1500"), &[]).await },
        );
    wait_for("slow request to reach the backend", || async {
        let j: serde_json::Value = serde_json::from_str(
            &get(
                &format!("http://127.0.0.1:{}/stats?format=json", admin),
                &[],
            )
            .await
            .body,
        )
        .unwrap();
        (j["cluster.c.upstream_rq_active"].as_i64() == Some(1)).then_some(())
    })
    .await;
    cfg.write("a.yaml", &forward("127.0.0.1:1"));
    body_is(port, "127.0.0.1:1").await;

    let r = inflight.await.unwrap();
    assert_eq!(
        (r.status, r.headers["x-backend"].to_str().unwrap()),
        (200, "old-cluster")
    );
    // Same socket, new routes.
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn).await, "127.0.0.1:1");
}

#[tokio::test]
async fn start_fails_clearly_on_invalid_config() {
    let cfg = ConfigDir::new();
    cfg.write(
        "a.yaml",
        "listeners:\n  - name: x\n    adress: 127.0.0.1:1\n",
    );
    let out = std::process::Command::new(tern_bin())
        .arg("--config")
        .arg(cfg.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a.yaml:3:5: error[E002]: unknown field `adress`"),
        "{err}"
    );
    assert!(err.contains("did you mean `address`?"), "{err}");

    let check = |p: &Path| tern_check(p).status.code();
    assert_eq!(check(cfg.path()), Some(1));
    assert_eq!(check(Path::new("config-examples/quickstart")), Some(0));
}

/// A file written in two steps with a pause between them, the writer keeping it open: the first
/// half is valid YAML on its own, but it is never applied (before, it served for ~200 ms, losing
/// the routes of the second half). The reload waits for the writer to close the file.
#[tokio::test]
async fn a_file_still_open_for_writing_is_not_applied_half_written() {
    use std::io::Write;
    let (admin, port) = (free_port(), free_port());
    let cfg = ConfigDir::new();
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listener.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write("routes.yaml", &direct_yaml("main", "v1"));
    let tern = Tern::start(cfg.path(), admin, &["--reload-max-wait", "60s"]).await;
    body_is(port, "v1").await;

    let first = "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: { prefix: /x }\n            direct_response: { status: 200, body: \"x-new\" }\n";
    let second = "          - match: { prefix: / }\n            direct_response: { status: 200, body: \"v2\" }\n";
    let mut f = std::fs::File::create(cfg.path().join("routes.yaml")).unwrap();
    f.write_all(first.as_bytes()).unwrap();
    // The writer pauses, many debounce times long; all along the old configuration serves.
    let pause = std::time::Instant::now();
    while pause.elapsed() < std::time::Duration::from_millis(800) {
        let x = get(&format!("http://127.0.0.1:{port}/x"), &[]).await;
        assert_eq!(
            (x.status, x.body.as_str()),
            (200, "v1"),
            "the half-written file was applied"
        );
    }
    f.write_all(second.as_bytes()).unwrap();
    drop(f);
    body_is(port, "v2").await;
    let x = get(&format!("http://127.0.0.1:{port}/x"), &[]).await;
    assert_eq!(x.body, "x-new");
    assert_eq!(
        tern.config_dump().await["reloads"]["rejected"],
        0,
        "nothing was rejected either"
    );
}
