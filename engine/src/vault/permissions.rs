//! File permissions of what holds card data: a data directory and a PAN
//! export are for the service account only. New sensitive files are
//! created 0600; an existing one readable by group or others gets a
//! warning that says how to fix it (a warning, not a refusal: the operator
//! may have a reason, e.g. a group-owned backup directory).

use std::fs::File;
use std::io;
use std::path::Path;

/// A warning if `path` can be read by group or others, naming the mode and
/// the command that fixes it; `None` if private (or not found).
pub fn exposure_warning(path: &Path, what: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).ok()?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            return None;
        }
        let fix = if meta.is_dir() { "700" } else { "600" };
        Some(format!(
            "warning: {what} {} is readable by group or others (mode {mode:03o}); it holds card data: chmod {fix} {}",
            path.display(),
            path.display()
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, what);
        None
    }
}

/// Create (or truncate) a file only its owner can read and write (0600),
/// for anything that holds clear PANs.
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let file = opts.open(path)?;
    // `mode` applies only when the file is created: tighten an existing one.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn private_files_and_warnings() {
        use super::*;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("export.jsonl");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = exposure_warning(&f, "PAN export").expect("0644 is exposed");
        assert!(w.contains("mode 644") && w.contains("chmod 600"), "{w}");
        drop(create_private(&f).unwrap());
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(exposure_warning(&f, "PAN export"), None);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = exposure_warning(dir.path(), "data directory").unwrap();
        assert!(w.contains("chmod 700"), "{w}");
    }
}
