//! Serves the greeter and registers it in the registry until Ctrl-C.

use clap::Parser;
use registry_client::{Client, ClientConfig};

#[derive(Debug, Parser)]
struct Args {
    /// Registry endpoints (repeat, or comma-separate).
    #[arg(
        long = "registry",
        env = "REGISTRY_ENDPOINT",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    registry: Vec<String>,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Instance id (defaults to the listen address).
    #[arg(long)]
    id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let args = Args::parse();
    let registry = Client::new(ClientConfig::new(args.registry).client_name("greeter-server"))?;
    let id = args.id.unwrap_or_else(|| args.listen.to_string());
    let server = greeter_example::GreeterServer::start(&registry, args.listen, &id).await?;
    println!("greeter {id} serving on {} and registered; Ctrl-C to stop", server.addr);
    tokio::signal::ctrl_c().await?;
    server.stop().await;
    Ok(())
}
