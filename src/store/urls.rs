//! `DATABASE_URL`: made ready for a SQLite file, and redacted for logs.

use std::path::Path;

use super::StoreError;

/// Creates the SQLite file's folder and asks sqlx to create the file (`mode=rwc`).
pub(super) fn prepare_sqlite_url(url: &str) -> Result<(String, std::path::PathBuf), StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path.contains(":memory:") || query.is_some_and(|q| q.contains("memory")) {
        return Err(StoreError::Invalid(
            "DATABASE_URL: an in-memory SQLite store would lose accepted events; give a file path"
                .into(),
        ));
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Invalid(format!(
                "DATABASE_URL: cannot create folder {}: {e}",
                parent.display()
            ))
        })?;
    }
    let url = match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    };
    Ok((url, std::path::PathBuf::from(path)))
}

/// `DATABASE_URL` fit for logs and errors: the password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
                return "<DATABASE_URL with a password>".to_owned();
            }
            // Query parameters may carry a password too (`?password=…`).
            if parsed
                .query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"))
            {
                let kept: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        if k.eq_ignore_ascii_case("password") {
                            (k.into_owned(), "***".to_owned())
                        } else {
                            (k.into_owned(), v.into_owned())
                        }
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(kept);
            }
            parsed.to_string()
        }
        Err(_) => "<DATABASE_URL (not a valid URL)>".to_owned(),
    }
}
