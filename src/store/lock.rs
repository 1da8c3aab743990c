//! Who may have an SQLite database to themselves: `serve` holds an exclusive lock on a file
//! beside the database for as long as it runs, and `restore` takes the same lock while it
//! replaces the content. A restore under a running server would roll back spent assertions,
//! used codes and locks while the server goes on answering from the old state; a second
//! server on the same file would keep its own in-memory caches. The operating system drops
//! the lock when the process ends, however it ends, so a crash never leaves it stuck.
//!
//! Admin commands that the server is built to run beside (`app`, `user`, `backup`, `keys
//! rotate`, `audit`) do not take it.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// What the lock is taken for, to say who holds it when it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockHolder {
    /// A running `ghostkey serve`.
    Server,
    /// A `ghostkey restore` in progress.
    Restore,
    /// A maintenance command that needs the server stopped (`ghostkey clock reset`).
    Maintenance,
}

/// The exclusive lock on a database; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DatabaseLock {
    _file: File,
}

impl DatabaseLock {
    /// The lock file of a database: `<database>.lock`, beside the file the path leads to
    /// (through symbolic links, so that two paths to one database share one lock). It holds
    /// nothing; only the lock on it matters.
    pub fn path_for(database: &Path) -> PathBuf {
        let real = std::fs::canonicalize(database).unwrap_or_else(|_| database.to_owned());
        let mut name = real.into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the lock for `holder`, or says why not, without waiting.
    pub fn acquire(database: &Path, holder: LockHolder) -> Result<DatabaseLock, String> {
        let path = DatabaseLock::path_for(database);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        // A lock file another user created (a command run as root) can still be locked
        // read-only: the lock is on the open file, not on writing it.
        let file = options
            .open(&path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => File::open(&path),
                _ => Err(e),
            })
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(DatabaseLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(match holder {
                LockHolder::Server => format!(
                    "another process (a running `ghostkey serve`, or a `ghostkey restore`) \
                     already uses the database {}; one server per SQLite database (several \
                     nodes need PostgreSQL)",
                    database.display()
                ),
                LockHolder::Restore => format!(
                    "a server (or another restore) is running on the database {}: stop it \
                     first; restoring under it would roll back spent assertions, used codes \
                     and locks while it goes on serving",
                    database.display()
                ),
                LockHolder::Maintenance => format!(
                    "a server (or a restore) is running on the database {}: stop it first",
                    database.display()
                ),
            }),
            Err(TryLockError::Error(e)) => {
                Err(format!("cannot lock the lock file {}: {e}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("g.db");
        let server = DatabaseLock::acquire(&db, LockHolder::Server).unwrap();
        let refused = DatabaseLock::acquire(&db, LockHolder::Restore).unwrap_err();
        assert!(refused.contains("stop it first"), "{refused}");
        let refused = DatabaseLock::acquire(&db, LockHolder::Server).unwrap_err();
        assert!(refused.contains("already uses the database"), "{refused}");
        drop(server);
        let restore = DatabaseLock::acquire(&db, LockHolder::Restore).unwrap();
        drop(restore);
        // Two paths to one database share one lock.
        #[cfg(unix)]
        {
            std::fs::write(&db, b"").unwrap();
            let link = dir.path().join("link.db");
            std::os::unix::fs::symlink(&db, &link).unwrap();
            let server = DatabaseLock::acquire(&db, LockHolder::Server).unwrap();
            assert!(DatabaseLock::acquire(&link, LockHolder::Server).is_err());
            drop(server);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(DatabaseLock::path_for(&db))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
