//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`): one environment
//! per process, created on first use.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::{Error, Result};

const LIB_NAME: &str = "libonnxruntime.so";

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Where the library is looked for, in order: `ORT_DYLIB_PATH` if set, next to the running
/// executable, then the folder `scripts/setup.sh` fills in this checkout.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        out.push(dir.join(LIB_NAME));
    }
    out.push(vendored_dir().join(LIB_NAME));
    out
}

/// The git-ignored folder of this checkout where setup puts the library.
pub fn vendored_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/onnxruntime")
}

/// The process's ONNX Runtime environment, loading the library on first call.
pub fn environment() -> Result<&'static Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let candidates = library_candidates();
    let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| Error::RuntimeMissing {
        searched: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })?;
    let shown = path.display().to_string();
    let builder = ort::init_from(path)
        .map_err(|e| Error::RuntimeLoad { path: shown.clone(), reason: e.to_string() })?;
    let env = builder
        .with_name("fraudstream")
        .build()
        .map_err(|e| Error::RuntimeLoad { path: shown, reason: e.to_string() })?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}
