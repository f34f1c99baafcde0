//! Runs the RevDesk simulator on an address, for load runs before `dialer simulate`
//! is wired (same code: `dialer::simulator::serve`).
//!
//! ```text
//! cargo run --release --example simulator -- --listen 127.0.0.1:8081 [--scenario FILE.toml]
//! cargo run --release --example simulator -- --listen 127.0.0.1:8082 --bare
//! ```
//!
//! `--bare` serves a bare axum JSON handler on the same route instead: the baseline
//! that `scripts/bench-simulator` measures beside the simulator.

use axum::routing::post;
use dialer::simulator::{Scenario, serve};
use tokio_util::sync::CancellationToken;

async fn bare_dial(
    _body: axum::body::Bytes,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    (
        axum::http::StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"data": {"id": "call_bare", "status": "queued"}})),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:8081".to_owned();
    let mut scenario = Scenario::default();
    let mut bare = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen ADDR"))?
            }
            "--scenario" => {
                let path = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--scenario FILE"))?;
                scenario = Scenario::load(path)?;
            }
            "--bare" => bare = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!(
        "listening on {} ({})",
        listener.local_addr()?,
        if bare { "bare axum" } else { "simulator" }
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    if bare {
        let app = axum::Router::new().route("/v1/calls/dial", post(bare_dial));
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await?;
        Ok(())
    } else {
        serve(listener, scenario, cancel).await
    }
}
