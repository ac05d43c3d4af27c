//! The node's key file: created on first run with mode 0600, loaded afterwards.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::keys::Identity;

/// The first bytes of a key file, so a wrong file is recognised as such.
const MAGIC: &[u8] = b"fleetmesh-ed25519-v1\n";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not a fleetmesh key file.
    #[error("{path} is not a fleetmesh key file (expected {} bytes starting with {:?}); move it away or point --data-dir elsewhere", MAGIC.len() + 32, String::from_utf8_lossy(MAGIC).trim())]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// Other users can read the secret key.
    #[error("key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its current mode bits.
        mode: u32,
    },
    /// The random source failed while creating a key.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// Loads the identity at `path`, creating it (mode 0600) if the file does not exist.
/// Returns the identity and whether it was created now.
pub fn load_or_create_identity(path: &Path) -> Result<(Identity, bool), KeystoreError> {
    let io = |source| KeystoreError::Io { path: path.to_owned(), source };
    match read_no_follow(path) {
        Ok(bytes) => {
            check_permissions(path)?;
            let seed: [u8; 32] = bytes
                .strip_prefix(MAGIC)
                .and_then(|rest| rest.try_into().ok())
                .ok_or_else(|| KeystoreError::Malformed { path: path.to_owned() })?;
            let seed = zeroize::Zeroizing::new(seed);
            Ok((Identity::from_secret_bytes(&seed), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::generate()?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io)?;
            }
            // Write to a new temporary file, then rename: a crash never leaves half a key.
            // The temporary file is created fresh (a leftover, or a link someone planted
            // there, is removed first and never followed), and the directory is synced after
            // the rename, so a power cut cannot bring back the old state with a new identity
            // already announced to the mesh.
            let tmp = path.with_extension("tmp");
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
            let mut f = open_private(&tmp).map_err(io)?;
            let mut contents = zeroize::Zeroizing::new(MAGIC.to_vec());
            contents.extend_from_slice(identity.secret_bytes().as_ref());
            f.write_all(&contents).and_then(|()| f.sync_all()).map_err(io)?;
            fs::rename(&tmp, path).map_err(io)?;
            sync_dir(path).map_err(io)?;
            Ok((identity, true))
        }
        Err(e) => Err(io(e)),
    }
}

/// Linux's `O_NOFOLLOW`: opening a symbolic link fails instead of following it.
#[cfg(target_os = "linux")]
const O_NOFOLLOW: i32 = 0o400_000;

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true).mode(0o600);
    #[cfg(target_os = "linux")]
    o.custom_flags(O_NOFOLLOW);
    o.open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// Reads the key file, refusing to follow a symbolic link to somewhere else.
fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut o = fs::OpenOptions::new();
    o.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(O_NOFOLLOW);
    }
    let mut bytes = Vec::new();
    o.open(path)?.take(1024).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Syncs the directory holding `path`, so a rename into it is durable.
#[cfg(unix)]
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn sync_dir(_: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), KeystoreError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| KeystoreError::Io { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::Permissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> Result<(), KeystoreError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_key_file_that_is_a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.key");
        load_or_create_identity(&real).unwrap();
        let link = dir.path().join("node.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(load_or_create_identity(&link), Err(KeystoreError::Io { .. })));
        // A link planted where the temporary file goes is removed, never written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let fresh = dir.path().join("fresh.key");
        std::os::unix::fs::symlink(&victim, fresh.with_extension("tmp")).unwrap();
        load_or_create_identity(&fresh).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    }

    #[test]
    fn creates_once_then_loads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/node.key");
        let (a, created) = load_or_create_identity(&path).unwrap();
        assert!(created);
        let (b, created) = load_or_create_identity(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn malformed_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::write(&path, b"not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(load_or_create_identity(&path), Err(KeystoreError::Malformed { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        load_or_create_identity(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_identity(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
