//! Diagnostics: every problem found in a configuration, with its place and a stable code.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::value::Pos;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// The configuration loads, but something looks wrong or risky.
    Warning,
}

/// Stable diagnostic codes (documented in `docs/validate.md`).
pub mod codes {
    /// YAML syntax error.
    pub const SYNTAX: &str = "E001";
    /// A field that does not exist at this place.
    pub const UNKNOWN_FIELD: &str = "E002";
    /// A value of the wrong type, or a required field missing.
    pub const WRONG_TYPE: &str = "E003";
    /// A value of the right type that is not allowed (bad duration, address, status, regex, ...).
    pub const BAD_VALUE: &str = "E004";
    /// The same name defined twice.
    pub const DUPLICATE: &str = "E005";
    /// A reference to a name that is not defined.
    pub const DANGLING_REFERENCE: &str = "E006";
    /// Two sockets on one address.
    pub const ADDRESS_CONFLICT: &str = "E007";
    /// A file or directory that cannot be read.
    pub const IO: &str = "E008";
    /// A file over a limit: its size, or the YAML parser's budget (nodes, nesting, aliases).
    pub const LIMIT: &str = "E009";
    /// A header rule that sets or removes a header no rule may touch (pseudo-headers, hop-by-hop
    /// headers, a request's `host`).
    pub const HEADER_NOT_MUTABLE: &str = "E010";
    /// Key material that cannot be used: a file that cannot be read, an environment variable
    /// that is not set or empty, PEM that does not parse, a key that does not match its
    /// certificate, a chain out of order, a CA that cannot be a trust anchor.
    pub const KEY_MATERIAL: &str = "E011";
    /// A certificate that has expired (or is not valid yet).
    pub const CERT_EXPIRED: &str = "E012";
    /// A file that defines nothing.
    pub const EMPTY_FILE: &str = "W001";
    /// A route that can never match: an earlier route in the same virtual host takes all its requests.
    pub const UNREACHABLE_ROUTE: &str = "W002";
    /// A domain served by two virtual hosts of one route config; the second never sees its requests.
    pub const DOMAIN_COLLISION: &str = "W003";
    /// `per_try_timeout × (num_retries + 1)` longer than the route timeout: later tries are cut short.
    pub const RETRIES_EXCEED_TIMEOUT: &str = "W004";
    /// Retries without `per_try_timeout`: one slow try uses the whole route timeout.
    pub const RETRY_WITHOUT_PER_TRY_TIMEOUT: &str = "W005";
    /// Non-idempotent requests retried on conditions where the upstream may have processed them.
    pub const RETRY_NON_IDEMPOTENT: &str = "W006";
    /// Retries to a cluster whose retry limit is only the implicit default.
    pub const RETRY_WITHOUT_BUDGET: &str = "W007";
    /// A fault delay longer than the route timeout.
    pub const FAULT_DELAY_EXCEEDS_TIMEOUT: &str = "W008";
    /// A circuit-breaker threshold below the retries the cluster allows in flight.
    pub const BREAKER_BELOW_RETRIES: &str = "W009";
    /// The admin endpoint listens beyond loopback: anyone who reaches it can drain or stop the proxy.
    pub const ADMIN_NOT_LOOPBACK: &str = "W010";
    /// A certificate that expires soon (within `--cert-expiry-warn`, default 30 days).
    pub const CERT_EXPIRING: &str = "W011";
    /// A listener certificate's `server_names` that its subject alternative names do not cover:
    /// clients that verify the name refuse it.
    pub const SERVER_NAME_NOT_COVERED: &str = "W012";
    /// `insecure_skip_verify: true`: upstream certificates are not verified.
    pub const INSECURE_SKIP_VERIFY: &str = "W013";
    /// TLS 1.0 or 1.1 configured: obsolete (RFC 8996) and not spoken; 1.2 is the floor.
    pub const LEGACY_TLS_VERSION: &str = "W014";
    /// Key material from an environment variable that is not set where the check ran
    /// (`tern-validate`): not checked.
    pub const KEY_NOT_CHECKED: &str = "W015";
    /// gRPC settings (`retry_on` gRPC conditions, `grpc_health_check`) on a cluster that does not
    /// speak HTTP/2 upstream: gRPC servers speak HTTP/2 only.
    pub const GRPC_NEEDS_HTTP2: &str = "W016";
}

/// Another place that explains a diagnostic (e.g. the first definition of a duplicate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Related {
    /// What this place is.
    pub message: String,
    /// File of the related place.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable code such as `E005`.
    pub code: &'static str,
    /// One-line description.
    pub message: String,
    /// File the problem is in.
    pub file: PathBuf,
    /// 1-based line (0 when the problem concerns a whole file or directory).
    pub line: u32,
    /// 1-based column (0 when unknown).
    pub column: u32,
    /// A suggestion, such as "did you mean `timeout`?" (`null` in JSON when there is none).
    pub help: Option<String>,
    /// Other places involved (always present in JSON, possibly empty).
    pub related: Vec<Related>,
}

impl Diagnostic {
    /// An error at `file:pos`.
    pub fn error(code: &'static str, file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, file, pos, message)
    }

    /// A warning at `file:pos`.
    pub fn warning(code: &'static str, file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, file, pos, message)
    }

    fn new(
        severity: Severity,
        code: &'static str,
        file: &Path,
        pos: Pos,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity,
            code,
            message: message.into(),
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            help: None,
            related: Vec::new(),
        }
    }

    /// Adds a suggestion.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a related place.
    pub fn with_related(mut self, message: impl Into<String>, file: &Path, pos: Pos) -> Self {
        self.related.push(Related {
            message: message.into(),
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
        });
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: error[E005]: message`, the form editors and CI logs link to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}",
            self.file.display(),
            self.line,
            self.column,
            sev,
            self.code,
            self.message
        )?;
        for r in &self.related {
            write!(
                f,
                " ({} at {}:{}:{})",
                r.message,
                r.file.display(),
                r.line,
                r.column
            )?;
        }
        if let Some(h) = &self.help {
            write!(f, " help: {h}")?;
        }
        Ok(())
    }
}
