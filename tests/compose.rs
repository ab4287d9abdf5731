//! The deployment examples' flows, without Docker or AWS: the commands and environment that
//! `docker-compose.yml` and `config-examples/ecs/task-definition.json` give `tern-sync` and `tern`,
//! run as real processes against moto's S3 server.
//!
//! Compose demo (`docker-compose config` resolves the file):
//! 1. `publish` publishes `config-examples/compose` (ports moved to free ones, the demo backend
//!    replaced by a test backend);
//! 2. `tern-sync` syncs it into a directory; its health check (`tern-sync health`) passes;
//! 3. `tern --config DEST/current` answers `/` and proxies `/api/`;
//! 4. editing a file and running `publish` again changes the answer within the agent's poll
//!    interval; publishing an invalid edit is refused and changes nothing.
//!
//! ECS task: `tern-sync publish` (docs/ecs.md) of `config-examples/ecs/config`, the init container's
//! `tern-sync run --once` exits 0, the long-running agent becomes healthy, `tern` serves ingress and
//! egress, a rollback (`publish --rollback VERSION`) takes effect, SIGTERM drains and exits 0 within
//! `stopTimeout`.
//!
//! Needs moto (`python3 -m pip install 'moto[server]'`, installed by `scripts/install-test-deps`)
//! and docker-compose (to resolve the file; `apt-get install -y docker-compose`). The `tern-sync`
//! binary is built with the same cargo and profile (or taken from `TERN_SYNC_BIN`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_testkit::s3::Moto;
use tern_testkit::{
    free_port, get, request, tern_bin, tern_sync_bin, wait_body, wait_for, workspace_root, Backend,
    Proc, DEADLINE,
};

/// `docker-compose.yml` as the compose client resolves it.
fn compose() -> Value {
    let run = |prog: &str, pre: &[&str]| {
        Command::new(prog)
            .args(pre)
            .args(["-f", "docker-compose.yml", "config"])
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let out = run("docker-compose", &[])
        .or_else(|| run("docker", &["compose"]))
        .unwrap_or_else(|| {
            panic!(
                "`docker-compose -f docker-compose.yml config` failed or docker-compose is not \
                 installed (apt-get install -y docker-compose)"
            )
        });
    serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("compose config output")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// The `tern-sync` binary: `TERN_SYNC_BIN`, else built by cargo with this test's profile.
fn tern_sync_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TERN_SYNC_BIN") {
        return PathBuf::from(p);
    }
    tern_sync_bin()
}

/// Replaces `from` in `args` (whole arguments) with `to`.
fn replace_arg(args: &mut [String], from: &str, to: &str) {
    let n = args
        .iter_mut()
        .filter(|a| *a == from)
        .map(|a| *a = to.into())
        .count();
    assert!(n > 0, "{from} not in {args:?}");
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

/// Runs the compose `publish` service's command on `src`; returns (success, output).
fn publish(
    sync_bin: &Path,
    cmd: &[String],
    env: &BTreeMap<String, String>,
    src: &Path,
) -> (bool, String) {
    let mut args = cmd[1..].to_vec();
    replace_arg(&mut args, "/src", src.to_str().unwrap());
    let out = hermetic(Command::new(sync_bin), env)
        .args(&args)
        .output()
        .expect("run tern-sync publish");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The compose service's environment, and nothing from this machine's AWS setup.
fn hermetic(mut c: Command, env: &BTreeMap<String, String>) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("TERN_SYNC_") {
            c.env_remove(k);
        }
    }
    c.envs(env)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    c
}

/// Creates `bucket` on the S3 server at `url` (with boto3, which comes with moto).
fn create_bucket(url: &str, bucket: &str, env: &BTreeMap<String, String>) {
    let st = hermetic(Command::new("python3"), env)
        .args([
            "-c",
            "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])",
            url,
            bucket,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "create bucket {bucket}");
}

/// Copies the example `dir` to `to`, replacing addresses (`from` -> `to`) in every file, in one
/// pass (a replacement is never rewritten again).
fn copy_example(dir: &str, to: &Path, map: &[(&str, String)]) {
    let mut keys: Vec<&str> = map.iter().map(|(k, _)| *k).collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let alternation: Vec<String> = keys.iter().map(|k| regex::escape(k)).collect();
    let addresses = regex::Regex::new(&alternation.join("|")).unwrap();
    let lookup: BTreeMap<&str, &String> = map.iter().map(|(k, v)| (*k, v)).collect();
    for entry in walkdir::WalkDir::new(workspace_root().join(dir)) {
        let entry = entry.unwrap();
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(workspace_root().join(dir))
            .unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = addresses.replace_all(&text, |c: &regex::Captures| lookup[&c[0]].clone());
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, text.as_bytes()).unwrap();
    }
}

/// The `tern-sync` binary, checked to be the real agent.
fn real_tern_sync() -> PathBuf {
    let bin = tern_sync_binary();
    let help = Command::new(&bin).arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("publish"),
        "{} has no `publish`: the sync agent (branch `sync`) is not on this tree yet",
        bin.display()
    );
    bin
}

/// Polls a health-check command (`["CMD", "tern-sync", "health"]`) until it exits 0.
async fn wait_healthy(
    sync_bin: &Path,
    check: &[String],
    env: &BTreeMap<String, String>,
    agent: &Proc,
) {
    assert_eq!(check[..2], ["CMD", "tern-sync"], "{check:?}");
    let start = Instant::now();
    while !hermetic(Command::new(sync_bin), env)
        .args(&check[2..])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < DEADLINE,
            "tern-sync never became healthy:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `tern` with a command from a compose file or task definition (`["tern", ...]`) whose
/// `--config` is under `compose_dest`, moved under `dest`; waits for `/ready` on `admin`.
async fn start_tern(
    cmd: &[String],
    compose_dest: &str,
    dest: &Path,
    admin: u16,
    log: PathBuf,
) -> Proc {
    let mut args = cmd.to_vec();
    assert_eq!(args[0], "tern");
    let config = flag(&args, "--config").expect("--config");
    let rel = Path::new(&config)
        .strip_prefix(compose_dest)
        .expect("tern reads under tern-sync's destination");
    replace_arg(&mut args, &config, dest.join(rel).to_str().unwrap());
    let mut c = Command::new(tern_bin());
    c.args(&args[1..]).env_remove("RUST_LOG");
    let what = format!("tern /ready (log {})", log.display());
    let tern = Proc::spawn_logged(&mut c, log);
    let ready = format!("http://127.0.0.1:{admin}/ready");
    wait_for(&what, || {
        let url = ready.clone();
        async move {
            request("GET", &url, &[], "")
                .await
                .ok()
                .filter(|r| r.status == 200)
        }
    })
    .await;
    tern
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_flow_publish_sync_serve_and_republish() {
    let c = compose();
    let services = &c["services"];
    let work = tempfile::tempdir().unwrap();

    // s3: moto, as in the compose file.
    assert!(
        services["s3"]["image"]
            .as_str()
            .unwrap()
            .starts_with("motoserver/moto:"),
        "the compose store is moto"
    );
    let moto = Moto::start();

    // The environment the compose file gives publish and tern-sync, pointed at this moto.
    let mut env = environment(&services["publish"]);
    assert_eq!(env, environment(&services["tern-sync"]), "same S3 settings");
    env.insert("TERN_SYNC_ENDPOINT_URL".into(), moto.url());
    env.insert(
        "TERN_SYNC_HEALTH_ADDRESS".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    // create-bucket (the compose job uses the AWS CLI).
    create_bucket(&moto.url(), &env["TERN_SYNC_BUCKET"], &env);

    // The example, with its ports moved and the demo backend replaced.
    let backend = Backend::start("demo-backend").await;
    let listen = free_port();
    let admin = free_port();
    let src = work.path().join("src");
    copy_example(
        "config-examples/compose",
        &src,
        &[
            ("0.0.0.0:10000", format!("127.0.0.1:{listen}")),
            ("127.0.0.1:9901", format!("127.0.0.1:{admin}")),
            ("backend:5678", backend.addr.to_string()),
        ],
    );

    // publish
    let sync_bin = real_tern_sync();
    let publish_cmd = strings(&services["publish"]["command"]);
    assert_eq!(publish_cmd[0], "tern-sync");
    let (ok, out) = publish(&sync_bin, &publish_cmd, &env, &src);
    assert!(ok, "publish failed:\n{out}");

    // tern-sync run, then its health check (the compose health check command).
    let dest = work.path().join("config");
    let mut run_args = strings(&services["tern-sync"]["command"]);
    assert_eq!(run_args[0], "tern-sync");
    let compose_dest = flag(&run_args, "--dest").expect("--dest");
    replace_arg(&mut run_args, &compose_dest, dest.to_str().unwrap());
    let interval = tern_config::Dur::parse(&flag(&run_args, "--interval").expect("--interval"))
        .unwrap()
        .0;
    let mut agent_cmd = hermetic(Command::new(&sync_bin), &env);
    agent_cmd.args(&run_args[1..]);
    let agent = Proc::spawn_logged(&mut agent_cmd, work.path().join("agent.log"));
    let health = strings(&services["tern-sync"]["healthcheck"]["test"]);
    wait_healthy(&sync_bin, &health, &env, &agent).await;

    // tern, with the compose command (its --config is under the agent's --dest).
    let tern_cmd = strings(&services["tern"]["command"]);
    let tern = start_tern(
        &tern_cmd,
        &compose_dest,
        &dest,
        admin,
        work.path().join("tern.log"),
    )
    .await;

    let base = format!("http://127.0.0.1:{listen}");
    let r = get(&format!("{base}/"), &[]).await;
    assert!(r.body.contains("version 1"), "{}", r.body);
    let r = get(&format!("{base}/api/hello"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""uri":"/hello""#), "{}", r.body);

    // Edit, publish again: the answer changes within the poll interval (plus reload time).
    let routes = src.join("routes.yaml");
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(&routes, text.replace("version 1", "version 2")).unwrap();
    let (ok, out) = publish(&sync_bin, &publish_cmd, &env, &src);
    assert!(ok, "second publish failed:\n{out}");
    let published = Instant::now();
    wait_body(&format!("{base}/"), &[], "version 2").await;
    let took = published.elapsed();
    assert!(
        took < interval + Duration::from_secs(2),
        "the new answer took {took:?} with a poll interval of {interval:?}"
    );

    // An invalid edit is refused by publish with file:line:col; the answer stays.
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(
        &routes,
        text.replace("version 2", "version 3")
            .replace("cluster: backend", "cluster: nope"),
    )
    .unwrap();
    let (ok, out) = publish(&sync_bin, &publish_cmd, &env, &src);
    assert!(!ok, "an invalid configuration was published:\n{out}");
    assert!(out.contains("routes.yaml:"), "{out}");
    let r = get(&format!("{base}/"), &[]).await;
    assert!(r.body.contains("version 2"), "{}", r.body);
    drop((tern, agent, moto));
}

fn container<'a>(td: &'a Value, name: &str) -> &'a Value {
    td["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} missing"))
}

fn container_env(c: &Value) -> BTreeMap<String, String> {
    c["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The ECS task definition's containers, in their start order, against moto instead of S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_task_flow_init_sync_serve_rollback_and_drain() {
    let td: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("config-examples/ecs/task-definition.json"))
            .unwrap(),
    )
    .unwrap();
    let init = container(&td, "tern-sync-init");
    let sync = container(&td, "tern-sync");
    let tern_c = container(&td, "tern");
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start();

    // The task's environment, plus what the task role and the region give on ECS.
    let dest = work.path().join("config");
    let task_dest = container_env(init)["TERN_SYNC_DEST"].clone();
    let s3_env = |c: &Value| {
        let mut env = container_env(c);
        env.insert("TERN_SYNC_DEST".into(), dest.to_str().unwrap().into());
        env.insert("TERN_SYNC_ENDPOINT_URL".into(), moto.url());
        env.insert("TERN_SYNC_FORCE_PATH_STYLE".into(), "true".into());
        env.insert("AWS_ACCESS_KEY_ID".into(), "task-role".into());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), "task-role".into());
        env.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
        env
    };
    let mut init_env = s3_env(init);
    let mut sync_env = s3_env(sync);
    // Each agent's health endpoint on a free port (the task uses the default 127.0.0.1:9902).
    init_env.insert(
        "TERN_SYNC_HEALTH_ADDRESS".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    sync_env.insert(
        "TERN_SYNC_HEALTH_ADDRESS".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    let bucket = init_env["TERN_SYNC_BUCKET"].clone();
    let prefix = init_env["TERN_SYNC_PREFIX"].clone();
    create_bucket(&moto.url(), &bucket, &init_env);

    // The ECS example configuration with its addresses moved and its upstreams replaced.
    let app = Backend::start("app").await;
    let orders = Backend::start("orders").await;
    let payments = Backend::start("payments").await;
    let (ingress, egress, admin) = (free_port(), free_port(), free_port());
    let src = work.path().join("src");
    copy_example(
        "config-examples/ecs/config",
        &src,
        &[
            ("0.0.0.0:8000", format!("127.0.0.1:{ingress}")),
            ("127.0.0.1:10000", format!("127.0.0.1:{egress}")),
            ("127.0.0.1:9901", format!("127.0.0.1:{admin}")),
            ("127.0.0.1:8080", app.addr.to_string()),
            ("orders.internal:8080", orders.addr.to_string()),
            ("payments.internal:8080", payments.addr.to_string()),
        ],
    );

    // CI: tern-sync publish --bucket B --prefix P DIR (docs/ecs.md, step 4).
    let sync_bin = real_tern_sync();
    let publish_args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "tern-sync",
            "publish",
            "--bucket",
            &bucket,
            "--prefix",
            &prefix,
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run_publish = |args: Vec<String>| {
        let out = hermetic(Command::new(&sync_bin), &init_env)
            .args(&args[1..])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}:\n{text}");
        // "published VERSION (...)"
        text.split_whitespace()
            .skip_while(|w| *w != "published")
            .nth(1)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let v1 = run_publish(publish_args(&[src.to_str().unwrap()]));
    assert!(!v1.is_empty(), "no version printed");

    // tern-sync-init: runs to completion, exit 0 (the SUCCESS condition tern waits for).
    let init_cmd = strings(&init["command"]);
    let out = hermetic(Command::new(&sync_bin), &init_env)
        .args(&init_cmd[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{init_cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest.join("current").exists());

    // tern-sync (long-running) and its container health check.
    let mut agent_cmd = hermetic(Command::new(&sync_bin), &sync_env);
    agent_cmd.args(&strings(&sync["command"])[1..]);
    let agent = Proc::spawn_logged(&mut agent_cmd, work.path().join("agent.log"));
    let interval = tern_config::Dur::parse(
        &flag(&strings(&sync["command"]), "--interval").unwrap_or("5s".into()),
    )
    .unwrap()
    .0;
    wait_healthy(
        &sync_bin,
        &strings(&sync["healthCheck"]["command"]),
        &sync_env,
        &agent,
    )
    .await;

    // tern, with the task's command.
    let mut tern = start_tern(
        &strings(&tern_c["command"]),
        &task_dest,
        &dest,
        admin,
        work.path().join("tern.log"),
    )
    .await;
    let r = get(&format!("http://127.0.0.1:{ingress}/users/1"), &[]).await;
    assert!(r.body.contains(r#""backend":"app""#), "{}", r.body);
    let r = get(&format!("http://127.0.0.1:{egress}/orders/items"), &[]).await;
    assert!(r.body.contains(r#""backend":"orders""#), "{}", r.body);
    let missing = format!("http://127.0.0.1:{egress}/inventory/");
    assert!(get(&missing, &[]).await.body.contains("no such dependency"));

    // A new version, then a rollback to the first (docs/ecs.md, "Rolling back").
    let routes = src.join("routes.yaml");
    let text = std::fs::read_to_string(&routes).unwrap();
    std::fs::write(&routes, text.replace("no such dependency", "not routed")).unwrap();
    run_publish(publish_args(&[src.to_str().unwrap()]));
    wait_body(&missing, &[], "not routed").await;
    run_publish(publish_args(&["--rollback", &v1]));
    let start = Instant::now();
    wait_body(&missing, &[], "no such dependency").await;
    assert!(start.elapsed() < interval + Duration::from_secs(3));

    // Deploy: SIGTERM; tern drains and exits 0 within the task's stopTimeout.
    let stop = Duration::from_secs(tern_c["stopTimeout"].as_u64().unwrap());
    let st = Command::new("kill")
        .args(["-s", "TERM", &tern.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = tern.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < stop,
            "tern still running after stopTimeout:\n{}",
            tern.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "tern exited with {status}:\n{}",
        tern.logs()
    );
    drop((agent, moto));
}
