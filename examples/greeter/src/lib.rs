//! The greeter example: a gRPC service that registers itself in the registry,
//! and a client that finds its instances there and load-balances over them.
//!
//! Layout:
//! - [`pb`]: the generated `helloworld` code (`proto/helloworld.proto`).
//! - [`GreeterServer`]: serves the greeter on a port and registers it through a
//!   [`Provider`]; stopping it deregisters first, then stops serving.
//! - [`greeter_client`]: a `GreeterClient` over a channel that follows the
//!   service's live instances.
//! - `src/bin/greeter-server.rs`, `src/bin/greeter-client.rs`: the two sides as
//!   programs (see the README).

use std::net::SocketAddr;
use std::time::Duration;

use registry_client::{Client, InstanceFilter, Provider, balance_channel, v1};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Generated from `proto/helloworld.proto`.
#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod pb {
    tonic::include_proto!("helloworld");
}

/// The name the greeter registers under.
pub const SERVICE: &str = "greeter";

/// Answers `Hello <name>` and says which instance answered.
#[derive(Debug, Clone)]
struct Greeter {
    server: String,
}

#[tonic::async_trait]
impl pb::greeter_server::Greeter for Greeter {
    async fn say_hello(&self, request: Request<pb::HelloRequest>) -> Result<Response<pb::HelloReply>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(pb::HelloReply { message: format!("Hello {name}"), server: self.server.clone() }))
    }
}

/// A running greeter instance, registered in the registry.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use registry_client::{Client, ClientConfig};
/// let registry = Client::new(ClientConfig::new(["http://127.0.0.1:7070"]))?;
/// let server = greeter_example::GreeterServer::start(&registry, "127.0.0.1:0".parse()?, "g1").await?;
/// println!("serving on {}", server.addr);
/// server.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GreeterServer {
    /// The address it serves on.
    pub addr: SocketAddr,
    provider: Provider,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GreeterServer {
    /// Binds `listen`, serves, then registers `host:port` as instance `id`.
    pub async fn start(registry: &Client, listen: SocketAddr, id: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let service = pb::greeter_server::GreeterServer::new(Greeter { server: id.to_string() });
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.clone().cancelled_owned());
        let task = tokio::spawn(server);
        // Serving first, registering second: consumers never get an address
        // that does not answer yet.
        let instance = v1::Instance {
            service: SERVICE.into(),
            instance_id: id.into(),
            host: addr.ip().to_string(),
            port: u32::from(addr.port()),
            ..Default::default()
        };
        let provider = registry.register([instance]).await?;
        Ok(Self { addr, provider, stop, task })
    }

    /// The registration, for updates (status, weight, metadata).
    ///
    /// ```no_run
    /// # async fn demo(server: greeter_example::GreeterServer) -> anyhow::Result<()> {
    /// use registry_client::v1::Status;
    /// server.provider().set_status(greeter_example::SERVICE, "g1", Status::OutOfService).await?;
    /// # Ok(()) }
    /// ```
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// Deregisters, gives consumers `drain` to stop sending here, then stops
    /// serving (the reverse order of [`GreeterServer::start`]).
    pub async fn stop_after(self, drain: Duration) {
        self.provider.shutdown().await;
        tokio::time::sleep(drain).await;
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// [`GreeterServer::stop_after`] with half a second of drain.
    pub async fn stop(self) {
        self.stop_after(Duration::from_millis(500)).await;
    }
}

/// A greeter client that balances over the live (UP) greeter instances the
/// registry knows, following every change.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use registry_client::{Client, ClientConfig};
/// let registry = Client::new(ClientConfig::new(["http://127.0.0.1:7070"]))?;
/// let mut greeter = greeter_example::greeter_client(&registry).await?;
/// let reply = greeter.say_hello(greeter_example::pb::HelloRequest { name: "you".into() }).await?;
/// println!("{} (from {})", reply.get_ref().message, reply.get_ref().server);
/// # Ok(()) }
/// ```
pub async fn greeter_client(registry: &Client) -> anyhow::Result<pb::greeter_client::GreeterClient<Channel>> {
    let instances = registry.watch(SERVICE).await?;
    Ok(pb::greeter_client::GreeterClient::new(balance_channel(&instances, InstanceFilter::up())))
}
