//! Runtime log level: `main` installs a setter backed by a `tracing-subscriber` reload layer;
//! the admin endpoint's `POST /logging?level=` calls it.

use std::sync::{Mutex, OnceLock};

type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// Installs the function that replaces the log filter (once, at start), with the initial filter.
pub fn install(initial: &str, f: Setter) {
    let _ = SETTER.set(f);
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = initial.to_string();
}

/// Replaces the log filter (`debug`, `info`, `tern=debug,hyper=warn`, ...).
pub fn set_level(filter: &str) -> Result<(), String> {
    let f = SETTER
        .get()
        .ok_or_else(|| "runtime log level changes are not available".to_string())?;
    f(filter)?;
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_string();
    Ok(())
}

/// The filter in effect.
pub fn current() -> String {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
