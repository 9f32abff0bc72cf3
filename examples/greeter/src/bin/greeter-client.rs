//! Finds the greeters in the registry and greets through them once a second.

use std::time::Duration;

use clap::Parser;
use greeter_example::pb::HelloRequest;
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
    /// Who to greet.
    #[arg(long, default_value = "world")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let args = Args::parse();
    let registry = Client::new(ClientConfig::new(args.registry).client_name("greeter-client"))?;
    let mut greeter = greeter_example::greeter_client(&registry).await?;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        match greeter.say_hello(HelloRequest { name: args.name.clone() }).await {
            Ok(r) => println!("{} (from {})", r.get_ref().message, r.get_ref().server),
            Err(status) => eprintln!("call failed: {status}"),
        }
    }
}
