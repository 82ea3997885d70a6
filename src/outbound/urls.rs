//! Where a token may be sent: https, or plain http to a loopback host (a test, a sidecar), or
//! plain http anywhere only when the operator says so.

use std::net::IpAddr;

use reqwest::Url;

/// A base URL that a token will be sent to: https, or http to a loopback host, or http
/// anywhere when `allow_insecure_http`. The refusal says why; `{override}` in it stands for
/// the setting that allows plain http (the caller names it).
pub fn secure_base_url(raw: &str, allow_insecure_http: bool) -> Result<Url, String> {
    let url = Url::parse(raw.trim().trim_end_matches('/'))
        .map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
        return Err("must be a base URL like https://host/path".into());
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure_http || is_loopback_host(&url) => Ok(url),
        "http" => Err(
            "plain http is only allowed for loopback hosts (the token would travel in clear \
             text); use https, or set {override}=true for a trusted network"
                .into(),
        ),
        other => Err(format!("unsupported scheme {other:?}; use https")),
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
