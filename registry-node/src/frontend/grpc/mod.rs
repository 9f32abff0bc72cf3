//! The gRPC front-end: `registry.v1.Registry` and `registry.v1.Cluster` over
//! [`NodeApi`], and the one place where registry errors become gRPC statuses.
//! - [`session`]: the task behind each `Register` stream (a provider session).

pub mod session;

use std::net::SocketAddr;
use std::pin::Pin;

use registry_proto::frames::registry_server;
use registry_proto::{GetServiceFrame, SubscribeFrame, v1};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::api::{NodeApi, WatchEnd};
use crate::auth::Caller;
use crate::listen::Peer;
use crate::registry::RegistryError;
use session::run_session;

/// Maps a registry error to the status a client sees.
pub fn status_of(e: &RegistryError) -> Status {
    match e {
        RegistryError::Invalid(v) => Status::invalid_argument(v.to_string()),
        RegistryError::TooManyInstances { .. } => Status::resource_exhausted(e.to_string()),
        RegistryError::NotOwned(_) | RegistryError::LeaseNotFound(_) => Status::not_found(e.to_string()),
        RegistryError::Draining | RegistryError::WarmingUp => Status::unavailable(e.to_string()),
        RegistryError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
        RegistryError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
    }
}

/// The other end of a request's connection (the node's listeners put it in
/// every request; see `crate::listen`).
pub(crate) fn peer<T>(request: &Request<T>) -> Peer {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or_else(|| Peer::plain(request.remote_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))))
}

/// The caller of a request, from its `authorization` metadata or its
/// connection's client certificate.
pub(crate) fn caller<T>(api: &NodeApi, request: &Request<T>) -> Result<Caller, Status> {
    let header = request.metadata().get("authorization").map(|v| v.as_bytes());
    Ok(api.authenticate(header, &peer(request))?)
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        status_of(&e)
    }
}

/// Why the node ended a watch, as the status the Subscribe stream ends with.
fn end_status(end: WatchEnd) -> Status {
    Status::unavailable(end.to_string())
}

/// `registry.v1.Registry`.
#[derive(Clone, Debug)]
pub struct RegistryService {
    pub api: NodeApi,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    type RegisterStream = BoxStream<v1::RegisterResponse>;
    type SubscribeStream = BoxStream<SubscribeFrame>;

    async fn register(
        &self,
        request: Request<Streaming<v1::RegisterRequest>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let registry = self.api.registry();
        registry.check_accepting()?;
        let caller = caller(&self.api, &request)?;
        let (tx, rx) = mpsc::channel(64);
        let signals = self.api.signals().clone();
        let session = run_session(self.api.clone(), caller, request.into_inner(), tx, signals.drain, signals.stop);
        signals.tasks.spawn(session);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register_instance(
        &self,
        request: Request<v1::RegisterInstanceRequest>,
    ) -> Result<Response<v1::RegisterInstanceResponse>, Status> {
        let caller = caller(&self.api, &request)?;
        let req = request.into_inner();
        Ok(Response::new(self.api.register_instance(&caller, &req.lease_id, req.ttl_ms, req.instance)?))
    }

    async fn renew(&self, request: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        let caller = caller(&self.api, &request)?;
        let ttl = self.api.renew(&caller, &request.into_inner().lease_id)?;
        Ok(Response::new(v1::RenewResponse { ttl_ms: ttl.as_millis() as u32 }))
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        let caller = caller(&self.api, &request)?;
        let found = self.api.deregister(&caller, request.into_inner().key)?;
        Ok(Response::new(v1::DeregisterResponse { found }))
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller(&self.api, &request)?;
        let peer = peer(&request).addr;
        let rx = self.api.watch(&caller, request.into_inner(), Some(peer))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|item| item.map_err(end_status)))))
    }

    async fn get_service(&self, request: Request<v1::GetServiceRequest>) -> Result<Response<GetServiceFrame>, Status> {
        let caller = caller(&self.api, &request)?;
        let req = request.into_inner();
        Ok(Response::new(self.api.get_service_frame(&caller, &req.namespace, &req.service)?))
    }

    async fn list_services(
        &self,
        request: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let caller = caller(&self.api, &request)?;
        Ok(Response::new(self.api.list_services(&caller, &request.into_inner().namespace)?))
    }

    async fn list_consumers(
        &self,
        request: Request<v1::ListConsumersRequest>,
    ) -> Result<Response<v1::ListConsumersResponse>, Status> {
        let caller = caller(&self.api, &request)?;
        let req = request.into_inner();
        Ok(Response::new(self.api.list_consumers(&caller, &req.namespace, &req.service)?))
    }
}

/// `registry.v1.Cluster`. A standalone node is a cluster of one.
#[derive(Clone, Debug)]
pub struct ClusterService {
    pub api: NodeApi,
}

#[tonic::async_trait]
impl v1::cluster_server::Cluster for ClusterService {
    async fn members(&self, request: Request<v1::MembersRequest>) -> Result<Response<v1::MembersResponse>, Status> {
        let caller = caller(&self.api, &request)?;
        Ok(Response::new(self.api.members(&caller)?))
    }
}
