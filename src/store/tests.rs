#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn run_time_sql_numbers_its_parameters_in_order() {
    assert_eq!(placeholders('$', 4, 3), "$4, $5, $6");
    assert_eq!(placeholders('?', 1, 1), "?");
    assert_eq!(value_rows('?', 4, 2, 2), "(?, ?), (?, ?)");
    assert_eq!(value_rows('$', 1, 1, 3), "($1, $2, $3)");
}

#[test]
fn redacted_urls_never_show_a_password() {
    assert_eq!(
        redact_url("postgres://approver:s3cret@db.internal:5432/approver?sslmode=require"),
        "postgres://approver:***@db.internal:5432/approver?sslmode=require"
    );
    let query = redact_url("postgres://db/approver?user=a&password=s3cret");
    assert!(!query.contains("s3cret"), "{query}");
    assert!(query.contains("password=***"), "{query}");
    assert_eq!(
        redact_url("postgres://approver@db/approver"),
        "postgres://approver@db/approver"
    );
    assert_eq!(
        redact_url("sqlite://data/approver.db"),
        "sqlite://data/approver.db"
    );
    assert!(!redact_url("postgres://a:s3cret@[bad").contains("s3cret"));
}

#[test]
fn only_outages_are_worth_waiting_for() {
    let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert!(StoreError::from(refused).is_transient());
    assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_transient());
    assert!(StoreError::TimedOut(Duration::from_secs(1)).is_transient());
    assert!(!StoreError::Invalid("bad".into()).is_transient());
    assert!(!StoreError::from(sqlx::Error::Configuration("bad url".into())).is_transient());
}

#[test]
fn the_backend_comes_from_the_url_scheme() {
    assert_eq!(
        Backend::for_url("sqlite://data/a.db").unwrap(),
        Backend::Sqlite
    );
    assert_eq!(Backend::for_url("sqlite:a.db").unwrap(), Backend::Sqlite);
    assert_eq!(
        Backend::for_url("postgres://db/a").unwrap(),
        Backend::Postgres
    );
    assert_eq!(
        Backend::for_url("postgresql://db/a").unwrap(),
        Backend::Postgres
    );
    assert!(Backend::for_url("mysql://db/a").is_err());
}

#[test]
fn a_connection_is_opened_again_only_after_failures_that_may_have_broken_it() {
    let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert!(StoreError::from(io).may_break_connection());
    assert!(StoreError::from(sqlx::Error::WorkerCrashed).may_break_connection());
    assert!(!StoreError::TimedOut(Duration::from_secs(1)).may_break_connection());
    assert!(!StoreError::from(sqlx::Error::RowNotFound).may_break_connection());
    assert!(!StoreError::Invalid("bad".into()).may_break_connection());
}

async fn sqlite_store(dir: &tempfile::TempDir, max_connections: Option<u32>) -> Store {
    let url = format!("sqlite://{}", dir.path().join("approver.db").display());
    let options = StoreOptions {
        max_connections,
        ..StoreOptions::default()
    };
    Store::connect(&SecretString::from(url), &options)
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_writes_and_reads_go_on_after_their_connections_are_suspected() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir, None).await;
    assert!(
        !store.sqlite_read_pool,
        "one connection: reads share the synced one"
    );
    store.release_stale_leases().await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Complete);

    // What `bounded` does after an I/O error: both connections are closed and opened again at
    // their next use, with their settings.
    store.write_turn.as_ref().unwrap().suspect();
    assert_eq!(store.release_stale_leases().await.unwrap(), 0);
    assert_eq!(store.next_due_at().await.unwrap(), None);
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Complete);
    let (synchronous, journal): (i64, String) = {
        let mut conn = store.writer().await.unwrap();
        let synchronous = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let journal = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        (synchronous, journal)
    };
    assert_eq!((synchronous, journal.as_str()), (2, "wal"), "FULL, WAL");

    // Closed is closed: no connection is opened again behind it.
    store.close().await;
    assert!(store.release_stale_leases().await.is_err());
    assert!(store.next_due_at().await.is_err());
}

#[tokio::test]
async fn sqlite_reads_get_a_pool_of_their_own_when_more_connections_are_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir, Some(3)).await;
    assert!(store.sqlite_read_pool);
    store.release_stale_leases().await.unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), None);
    assert_eq!(store.pending_summary().await.unwrap(), (0, None));
    store.close().await;
}

#[tokio::test]
async fn a_sqlite_connection_that_cannot_be_opened_again_is_an_error_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir, None).await;
    store.release_stale_leases().await.unwrap();

    // After an I/O error both connections are opened again at their next use; meanwhile the
    // file's name has become a folder, so that fails (an error, no panic, nothing written)…
    store.write_turn.as_ref().unwrap().suspect();
    let file = dir.path().join("approver.db");
    let moved = dir.path().join("moved.db");
    std::fs::rename(&file, &moved).unwrap();
    std::fs::create_dir(&file).unwrap();
    assert!(matches!(
        store.release_stale_leases().await,
        Err(StoreError::Database(_))
    ));
    assert!(store.next_due_at().await.is_err());

    // …and once the file is back, the next use opens it and goes on.
    std::fs::remove_dir(&file).unwrap();
    std::fs::rename(&moved, &file).unwrap();
    assert_eq!(store.release_stale_leases().await.unwrap(), 0);
    assert_eq!(store.next_due_at().await.unwrap(), None);
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Complete);
    store.close().await;
}
