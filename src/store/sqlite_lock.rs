//! The single-process lock of a SQLite store.

use std::path::Path;

use super::StoreError;

/// An exclusive lock beside the SQLite file, held while a process serves from it: one process
/// per file is what makes releasing leftover leases at startup safe, so a second `serve` on
/// the same file is refused instead of racing the first. Released when dropped (or the
/// process dies).
#[derive(Debug)]
pub struct ServingLock(#[allow(dead_code)] std::fs::File);

impl ServingLock {
    /// Takes the lock on `<db>.lock`, or says which process-level conflict stops it.
    pub fn take(db: &Path) -> Result<Self, StoreError> {
        lock_sqlite_file(db).map(Self)
    }
}

fn lock_sqlite_file(db: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Invalid(format!(
                "DATABASE_URL: cannot open {}: {e}",
                Path::new(&lock_path).display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Invalid(format!(
            "DATABASE_URL: another process is already serving from {} (SQLite allows one \
             replica; use PostgreSQL for several)",
            db.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Invalid(format!(
            "DATABASE_URL: cannot lock {}: {e}",
            Path::new(&lock_path).display()
        ))),
    }
}
