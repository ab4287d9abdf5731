//! Warnings about configurations that load but look wrong or risky (unreachable routes, ...).

use super::diag::Diagnostic;
use super::Config;

/// Adds warnings for `cfg` to `diags`. Runs only on configurations that parsed.
pub fn lint(_cfg: &Config, _diags: &mut Vec<Diagnostic>) {}
