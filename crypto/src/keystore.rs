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
    match fs::read(path) {
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
            // Write to a temporary file, then rename: a crash never leaves half a key.
            let tmp = path.with_extension("tmp");
            let mut f = open_private(&tmp).map_err(io)?;
            let mut contents = zeroize::Zeroizing::new(MAGIC.to_vec());
            contents.extend_from_slice(identity.secret_bytes().as_ref());
            f.write_all(&contents).and_then(|()| f.sync_all()).map_err(io)?;
            fs::rename(&tmp, path).map_err(io)?;
            Ok((identity, true))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)
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
