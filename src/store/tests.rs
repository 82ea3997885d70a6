#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn run_time_sql_numbers_its_parameters_in_order() {
    assert_eq!(placeholders('$', 4, 3), "$4, $5, $6");
    assert_eq!(placeholders('?', 1, 1), "?1");
    assert_eq!(value_rows('?', 4, 2, 2), "(?4, ?5), (?6, ?7)");
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
