//! A registry node whose answers a test scripts: it implements only what a
//! [`Script`] gives it, and answers everything else UNIMPLEMENTED. For what
//! no real node can be made to do on cue (answer `opened` and then stall,
//! push two streams exactly out of step, check credentials before the node
//! can).

use std::net::SocketAddr;
use std::sync::Arc;

use registry_proto::v1::cluster_server::{Cluster, ClusterServer};
use registry_proto::v1::registry_server::{Registry, RegistryServer};
use registry_proto::v1::{self};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

pub(crate) type RegisterStream = ReceiverStream<Result<v1::RegisterResponse, Status>>;
pub(crate) type SubscribeStream = ReceiverStream<Result<v1::SubscribeResponse, Status>>;

/// What a scripted node does with the calls a test cares about.
#[tonic::async_trait]
pub(crate) trait Script: Send + Sync + 'static {
    /// Sees the metadata of every call first (`rpc`: the method's name); an
    /// error answers the call with it.
    fn metadata(&self, _rpc: &'static str, _metadata: &MetadataMap) -> Result<(), Status> {
        Ok(())
    }

    async fn register(&self, _inbound: Streaming<v1::RegisterRequest>) -> Result<RegisterStream, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn subscribe(&self, _request: v1::SubscribeRequest) -> Result<SubscribeStream, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn get_service(&self, _request: v1::GetServiceRequest) -> Result<v1::GetServiceResponse, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn members(&self) -> Result<v1::MembersResponse, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

struct Node<S>(S);

#[tonic::async_trait]
impl<S: Script> Cluster for Node<S> {
    async fn members(&self, request: Request<v1::MembersRequest>) -> Result<Response<v1::MembersResponse>, Status> {
        self.0.metadata("members", request.metadata())?;
        self.0.members().await.map(Response::new)
    }
}

#[tonic::async_trait]
impl<S: Script> Registry for Node<S> {
    type RegisterStream = RegisterStream;
    type SubscribeStream = SubscribeStream;

    async fn register(
        &self,
        request: Request<Streaming<v1::RegisterRequest>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        self.0.metadata("register", request.metadata())?;
        self.0.register(request.into_inner()).await.map(Response::new)
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.0.metadata("subscribe", request.metadata())?;
        self.0.subscribe(request.into_inner()).await.map(Response::new)
    }

    async fn register_instance(
        &self,
        _: Request<v1::RegisterInstanceRequest>,
    ) -> Result<Response<v1::RegisterInstanceResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn renew(&self, _: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn deregister(&self, _: Request<v1::DeregisterRequest>) -> Result<Response<v1::DeregisterResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn get_service(
        &self,
        request: Request<v1::GetServiceRequest>,
    ) -> Result<Response<v1::GetServiceResponse>, Status> {
        self.0.metadata("get_service", request.metadata())?;
        self.0.get_service(request.into_inner()).await.map(Response::new)
    }

    async fn list_services(
        &self,
        _: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn list_consumers(
        &self,
        _: Request<v1::ListConsumersRequest>,
    ) -> Result<Response<v1::ListConsumersResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

/// Serves `script` on a free loopback port.
pub(crate) async fn serve(script: impl Script) -> SocketAddr {
    serve_with(script, tonic::transport::Server::builder()).await
}

/// [`serve`] with a server set up by the test (TLS, say).
pub(crate) async fn serve_with(script: impl Script, mut server: tonic::transport::Server) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node = Arc::new(Node(script));
    tokio::spawn(
        server
            .add_service(RegistryServer::from_arc(node.clone()))
            .add_service(ClusterServer::from_arc(node))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}
