//! The S3 client: construction from the default credential chain, counted requests with the
//! outcomes the agent cares about (304, 404), and retry backoff.

use std::sync::Arc;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};

use crate::cli::S3Args;
use crate::metrics::Metrics;

/// An S3 failure, already rendered with the SDK's full error context.
#[derive(Debug)]
pub struct S3Error(pub String);

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for S3Error {}

/// Result of a GET.
#[derive(Debug)]
pub enum Got {
    /// 200 with the body and ETag.
    Object {
        /// Contents.
        body: Bytes,
        /// ETag as sent by the server (with quotes).
        etag: Option<String>,
    },
    /// 304: the ETag given still matches.
    NotModified,
    /// 404.
    NotFound,
    /// The object is larger than the limit given (the body was not read).
    TooLarge(u64),
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Full key.
    pub key: String,
    /// ETag with quotes.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, Unix seconds.
    pub modified: i64,
}

/// An S3 client bound to one bucket that counts every request it makes.
#[derive(Clone)]
pub struct S3 {
    client: aws_sdk_s3::Client,
    /// The bucket.
    pub bucket: String,
    metrics: Arc<Metrics>,
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// A one-line error: service errors as status, code and message; others with their cause chain.
fn err<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &str,
    key: &str,
    e: SdkError<E, HttpResponse>,
) -> S3Error {
    let detail = match &e {
        SdkError::ServiceError(se) => format!(
            "HTTP {} {}: {}",
            se.raw().status().as_u16(),
            se.err().code().unwrap_or("(no code)"),
            se.err().message().unwrap_or("")
        ),
        _ => DisplayErrorContext(&e).to_string(),
    };
    S3Error(format!("{op} {key}: {detail}"))
}

impl S3 {
    /// Builds a client from aws-config's default chain plus the endpoint options.
    ///
    /// `retries` false disables the SDK's own retries: the agent retries whole polls with its own
    /// backoff, and its request counters then count real requests.
    pub async fn new(
        args: &S3Args,
        metrics: Arc<Metrics>,
        retries: bool,
        timeout: Duration,
    ) -> Self {
        let region = RegionProviderChain::first_try(args.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3).min(timeout))
                    .operation_attempt_timeout(timeout)
                    .build(),
            )
            .retry_config(if retries {
                RetryConfig::standard()
            } else {
                RetryConfig::disabled()
            });
        if let Some(url) = &args.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(args.force_path_style)
            .build();
        S3 {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: args.bucket.clone(),
            metrics,
        }
    }

    /// GETs `key`; with `if_none_match` a 304 gives [`Got::NotModified`]. Bodies over `limit` are refused.
    pub async fn get(
        &self,
        key: &str,
        if_none_match: Option<&str>,
        limit: u64,
    ) -> Result<Got, S3Error> {
        self.metrics.s3("GetObject");
        let res = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(if_none_match.map(str::to_string))
            .send()
            .await;
        let out = match res {
            Ok(o) => o,
            // The SDK reports 304 as an error with no useful code: the status is what counts.
            Err(e) if status(&e) == Some(304) => return Ok(Got::NotModified),
            Err(e) if status(&e) == Some(404) => return Ok(Got::NotFound),
            Err(e) => return Err(err("GetObject", key, e)),
        };
        let declared = out.content_length.unwrap_or(0).max(0) as u64;
        if declared > limit {
            return Ok(Got::TooLarge(declared));
        }
        let etag = out.e_tag.clone();
        let body = self.read_limited(out.body, limit, key).await?;
        if body.len() as u64 > limit {
            return Ok(Got::TooLarge(body.len() as u64));
        }
        Ok(Got::Object { body, etag })
    }

    /// Reads a body, stopping as soon as it exceeds `limit` (a lying Content-Length cannot exhaust memory).
    async fn read_limited(
        &self,
        mut stream: ByteStream,
        limit: u64,
        key: &str,
    ) -> Result<Bytes, S3Error> {
        let mut buf = BytesMut::new();
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => {
                    self.metrics
                        .bytes_downloaded
                        .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > limit {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(S3Error(format!("GetObject {key}: reading body: {e}"))),
            }
        }
        Ok(buf.freeze())
    }

    /// HEADs `key`: its size, or None when it does not exist.
    pub async fn head_size(&self, key: &str) -> Result<Option<u64>, S3Error> {
        self.metrics.s3("HeadObject");
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length.unwrap_or(0).max(0) as u64)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(err("HeadObject", key, e)),
        }
    }

    /// PUTs `key`.
    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), S3Error> {
        self.metrics.s3("PutObject");
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("PutObject", key, e))
    }

    /// DELETEs `key`.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.metrics.s3("DeleteObject");
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("DeleteObject", key, e))
    }

    /// Lists every object under `prefix` (one request per page of up to 1000 keys).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            self.metrics.s3("ListObjectsV2");
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                // XML cannot carry every byte a key may hold (control characters): ask for
                // URL-encoded keys so one hostile key cannot break every listing.
                .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    let code = e.code().unwrap_or("").to_string();
                    let mut s = err("ListObjectsV2", prefix, e);
                    if code == "NoSuchBucket" {
                        s.0 = format!("bucket {} does not exist: {}", self.bucket, s.0);
                    }
                    s
                })?;
            for o in page.contents() {
                let raw = o.key().unwrap_or_default();
                let Some(key) = url_decode(raw) else {
                    // Not UTF-8 once decoded: no path could be made of it anyway.
                    tracing::error!("skipping undecodable key {raw:?}");
                    self.metrics
                        .keys_rejected
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                out.push(Listed {
                    key,
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o.last_modified().map(|t| t.secs()).unwrap_or(0),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Decodes a key from a listing with `encoding-type=url` (`%XX` escapes, `+` for space).
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Exponential backoff with full jitter: the n-th retry waits a random time in
/// `[floor, min(cap, base * 2^n)]`, so many agents restarting together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff growing from `base` up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.failures.min(20)).unwrap_or(u32::MAX));
        self.failures = self.failures.saturating_add(1);
        let upper = exp.min(self.cap);
        // A small floor keeps a zero draw from turning into a busy loop.
        let floor = Duration::from_millis(50).min(upper);
        let ms = rand::random_range(floor.as_millis() as u64..=upper.as_millis() as u64);
        Duration::from_millis(ms)
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn succeed(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding() {
        assert_eq!(
            url_decode("a%20b%2Bc+d%01%C3%A9").as_deref(),
            Some("a b+c d\u{1}é")
        );
        assert_eq!(url_decode("%FF"), None);
        assert_eq!(url_decode("%4"), None);
    }

    #[test]
    fn backoff_grows_within_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..10 {
            assert!(b.fail() <= Duration::from_secs(1));
        }
        assert_eq!(b.failures(), 10);
        b.succeed();
        assert!(b.fail() <= Duration::from_millis(100));
    }
}
