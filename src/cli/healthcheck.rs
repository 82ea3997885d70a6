//! `healthcheck`: asks a running service's `/healthz` (for container HEALTHCHECKs).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::EXIT_CONFIG;

#[derive(Args)]
pub struct HealthcheckArgs {
    /// The service's listen address; 0.0.0.0 / [::] are checked on loopback.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
}

pub async fn run(args: &HealthcheckArgs) -> ExitCode {
    let Ok(mut addr) = args.listen_addr.trim().parse::<std::net::SocketAddr>() else {
        eprintln!(
            "configuration error: LISTEN_ADDR: {:?} is not an address",
            args.listen_addr
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    // A wildcard listen address is reached through loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/healthz");
    let result = async {
        // Plain HTTP to this container's own port: reading and parsing the system's TLS
        // roots would be half of each check's CPU time (docs/benchmark.md, round 8).
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(3))
            .build()?;
        client.get(&url).send().await?.error_for_status()
    }
    .await;
    match result {
        Ok(_) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
