//! `otlp-sink`: count the spans exported to it, print the counts on SIGTERM/SIGINT.
//!
//! `otlp-sink --grpc 127.0.0.1:4317 --http 127.0.0.1:4318`; `curl http://<http>/stats` reads the
//! counts while it runs.

use std::net::SocketAddr;

use clap::Parser;

/// Counting OTLP trace receiver for benchmarks (decodes every export, stores nothing).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// OTLP/gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:4317")]
    grpc: SocketAddr,
    /// OTLP/HTTP (protobuf) listen address; also serves `GET /stats`.
    #[arg(long, default_value = "127.0.0.1:4318")]
    http: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the sink shares a core with the load generator in bench/gateway.sh.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sink = otlp_sink::Sink::bind(args.grpc, args.http).await?;
        eprintln!(
            "otlp-sink: OTLP/gRPC on {}, OTLP/HTTP and /stats on {}",
            sink.grpc_addr()?,
            sink.http_addr()?
        );
        let counts = sink.counts();
        sink.serve(shutdown_signal()).await?;
        println!("{}", counts.get().to_json());
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
