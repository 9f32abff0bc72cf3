//! A registry node whose answers a test scripts: it implements only what a
//! [`Script`] gives it, and answers everything else UNIMPLEMENTED. For what
//! no real node can be made to do on cue (answer `opened` and then stall,
//! push two streams exactly out of step).

use std::net::SocketAddr;

use registry_proto::v1::registry_server::{Registry, RegistryServer};
use registry_proto::v1::{self};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

pub(crate) type RegisterStream = ReceiverStream<Result<v1::RegisterResponse, Status>>;
pub(crate) type SubscribeStream = ReceiverStream<Result<v1::SubscribeResponse, Status>>;

/// What a scripted node does with the calls a test cares about.
#[tonic::async_trait]
pub(crate) trait Script: Send + Sync + 'static {
    async fn register(&self, _inbound: Streaming<v1::RegisterRequest>) -> Result<RegisterStream, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn subscribe(&self, _request: v1::SubscribeRequest) -> Result<SubscribeStream, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

struct Node<S>(S);

#[tonic::async_trait]
impl<S: Script> Registry for Node<S> {
    type RegisterStream = RegisterStream;
    type SubscribeStream = SubscribeStream;

    async fn register(
        &self,
        request: Request<Streaming<v1::RegisterRequest>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        self.0.register(request.into_inner()).await.map(Response::new)
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
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

    async fn get_service(&self, _: Request<v1::GetServiceRequest>) -> Result<Response<v1::GetServiceResponse>, Status> {
        Err(Status::unimplemented("scripted"))
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistryServer::new(Node(script)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}
