//! `publish`: validate, upload new blobs, write the manifest last, garbage-collect; and rollback.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::cli::PublishArgs;
use crate::keys;
use crate::manifest::{self, FileEntry, Layout, Manifest};
use crate::metrics::Metrics;
use crate::s3::{Got, S3};
use crate::snapshot;

/// Runs `publish` (or `publish --rollback`); messages for the user on success, an error otherwise.
pub async fn run(args: PublishArgs) -> Result<(), String> {
    let s3 = S3::new(
        &args.s3,
        Arc::new(Metrics::default()),
        true,
        Duration::from_secs(60),
    )
    .await;
    let layout = Layout::new(&args.s3.prefix);
    let version = match (&args.rollback, &args.src_dir) {
        (Some(v), _) => rollback(&s3, &layout, v).await?,
        (None, Some(src)) => match publish(&s3, &layout, src, args.no_validate).await? {
            Some(v) => v,
            None => return Ok(()),
        },
        (None, None) => return Err("give SRC_DIR or --rollback VERSION".into()),
    };
    gc(&s3, &layout, &version, args.retain as usize, args.gc_grace).await
}

async fn current_manifest(s3: &S3, layout: &Layout) -> Result<Option<Manifest>, String> {
    match s3.get(&layout.manifest(), None, 16 << 20).await {
        Ok(Got::Object { body, .. }) => Ok(serde_json::from_slice(&body).ok()),
        Ok(_) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Publishes `src`; returns the new version, or None when the content is already current.
async fn publish(
    s3: &S3,
    layout: &Layout,
    src: &Path,
    no_validate: bool,
) -> Result<Option<String>, String> {
    if !no_validate {
        let report = tern_config::load_with(src, crate::snapshot::offline());
        for d in &report.diagnostics {
            eprintln!("{d}");
        }
        if report.config.is_none() {
            return Err(format!(
                "{}: {} error(s); nothing published",
                src.display(),
                report.error_count().max(1)
            ));
        }
    }
    let all = snapshot::walk(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    // Hidden files are not configuration (the loader skips them too): editor and VCS leftovers.
    let rels: Vec<String> = all
        .into_iter()
        .filter(|r| !r.split('/').any(|p| p.starts_with('.')))
        .collect();
    let (accepted, rejected) = keys::filter(rels.iter().map(String::as_str));
    if let Some(r) = rejected.first() {
        return Err(format!("refusing to publish {:?}: {}", r.key, r.reason));
    }
    if accepted.is_empty() {
        return Err(format!("no files to publish in {}", src.display()));
    }
    let mut files = Vec::new();
    let mut contents = Vec::new();
    for rel in &accepted {
        let data = std::fs::read(src.join(rel)).map_err(|e| format!("cannot read {rel}: {e}"))?;
        let sha = manifest::sha256_hex(&data);
        files.push(FileEntry {
            path: rel.clone(),
            size: data.len() as u64,
            sha256: sha,
        });
        contents.push(Bytes::from(data));
    }
    let hash = manifest::content_hash(files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())));
    let prev = current_manifest(s3, layout).await?;
    if let Some(p) = &prev {
        if p.content_hash() == hash {
            println!("unchanged: {} is already current", p.version);
            return Ok(None);
        }
    }
    let known: BTreeSet<&str> = prev
        .iter()
        .flat_map(|p| p.files.iter().map(|f| f.sha256.as_str()))
        .collect();
    let mut uploaded = 0;
    let mut done = BTreeSet::new();
    for (f, data) in files.iter().zip(contents) {
        if known.contains(f.sha256.as_str()) || !done.insert(f.sha256.clone()) {
            continue;
        }
        let key = layout.blob(&f.sha256);
        if s3.head_size(&key).await.map_err(|e| e.to_string())? == Some(f.size) {
            continue;
        }
        s3.put(&key, data, "application/octet-stream")
            .await
            .map_err(|e| e.to_string())?;
        uploaded += 1;
    }
    let m = Manifest {
        format: manifest::FORMAT,
        version: manifest::new_version(SystemTime::now(), &hash),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        files,
    };
    let body = Bytes::from(serde_json::to_vec_pretty(&m).expect("manifest serialises"));
    s3.put(
        &layout.version(&m.version),
        body.clone(),
        "application/json",
    )
    .await
    .map_err(|e| e.to_string())?;
    // Last: agents only ever see a manifest whose blobs are all there.
    s3.put(&layout.manifest(), body, "application/json")
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "published {} ({} files, {} new blobs) to s3://{}/{}",
        m.version,
        m.files.len(),
        uploaded,
        s3.bucket,
        layout.manifest()
    );
    Ok(Some(m.version))
}

/// Re-points the current manifest at an earlier version after checking its blobs still exist.
async fn rollback(s3: &S3, layout: &Layout, version: &str) -> Result<String, String> {
    if !manifest::valid_version(version) {
        return Err(format!("invalid version id {version:?}"));
    }
    let body = match s3
        .get(&layout.version(version), None, 16 << 20)
        .await
        .map_err(|e| e.to_string())?
    {
        Got::Object { body, .. } => body,
        _ => {
            let known = versions(s3, layout).await.unwrap_or_default();
            return Err(format!(
                "version {version} not found; retained versions: {}",
                known.join(", ")
            ));
        }
    };
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| format!("manifest of {version} is unreadable: {e}"))?;
    for f in &m.files {
        if s3
            .head_size(&layout.blob(&f.sha256))
            .await
            .map_err(|e| e.to_string())?
            != Some(f.size)
        {
            return Err(format!(
                "cannot roll back to {version}: blob of {} is missing",
                f.path
            ));
        }
    }
    s3.put(&layout.manifest(), body, "application/json")
        .await
        .map_err(|e| e.to_string())?;
    println!("rolled back to {version}");
    Ok(version.to_string())
}

/// Retained version ids, oldest first (ids start with their UTC time, so they sort by age).
async fn versions(s3: &S3, layout: &Layout) -> Result<Vec<String>, String> {
    let dir = layout.manifests_dir();
    let mut v: Vec<String> = s3
        .list(&dir)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|o| {
            o.key
                .strip_prefix(&dir)?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .filter(|v| manifest::valid_version(v))
        .collect();
    v.sort();
    Ok(v)
}

/// Deletes manifests beyond the newest `retain` (never the current one) and blobs that no
/// retained manifest names and that are older than `grace`.
async fn gc(
    s3: &S3,
    layout: &Layout,
    current: &str,
    retain: usize,
    grace: Duration,
) -> Result<(), String> {
    let all = versions(s3, layout).await?;
    let keep_from = all.len().saturating_sub(retain);
    let mut kept = Vec::new();
    let mut removed = 0;
    for (i, v) in all.iter().enumerate() {
        if i >= keep_from || v == current {
            kept.push(v.clone());
        } else {
            s3.delete(&layout.version(v))
                .await
                .map_err(|e| e.to_string())?;
            removed += 1;
        }
    }
    let mut live = BTreeSet::new();
    for v in &kept {
        match s3.get(&layout.version(v), None, 16 << 20).await {
            Ok(Got::Object { body, .. }) => match serde_json::from_slice::<Manifest>(&body) {
                Ok(m) => live.extend(m.files.into_iter().map(|f| f.sha256)),
                // Not knowing what a retained version needs, delete no blob at all.
                Err(_) => return Ok(()),
            },
            _ => return Ok(()),
        }
    }
    let now = now_unix();
    let dir = layout.blobs_dir();
    let mut blobs_removed = 0;
    for o in s3.list(&dir).await.map_err(|e| e.to_string())? {
        let name = o.key.strip_prefix(&dir).unwrap_or("");
        let old_enough = now.saturating_sub(o.modified.max(0) as u64) >= grace.as_secs();
        if !live.contains(name) && old_enough {
            s3.delete(&o.key).await.map_err(|e| e.to_string())?;
            blobs_removed += 1;
        }
    }
    if removed + blobs_removed > 0 {
        println!("garbage-collected {removed} old manifest(s) and {blobs_removed} blob(s)");
    }
    Ok(())
}

fn now_unix() -> u64 {
    crate::health::unix(SystemTime::now())
}
