//! [`Client`]: the endpoints, one lazily connected channel per node, and the
//! unary reads with fail-over from one node to the next.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use registry_proto::v1;
use tonic::Status;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::auth::{Credentials, NodeChannel};
use crate::config::ClientConfig;
use crate::error::{Error, Result, describe, error_chain, is_retryable};
use crate::tls::endpoint_uri;

pub(crate) type RegistryClient = v1::registry_client::RegistryClient<NodeChannel>;
type ClusterClient = v1::cluster_client::ClusterClient<NodeChannel>;

/// Largest response the library accepts. gRPC's usual 4 MiB is one snapshot
/// of a service with some 20,000 instances; this allows a few hundred
/// thousand.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// The `registry.v1.Registry` client over `channel` (so with the client's
/// credentials), with room for the snapshots of large services.
pub(crate) fn registry_client(channel: NodeChannel) -> RegistryClient {
    RegistryClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A connection to a registry cluster: the entry point of the library.
///
/// Cheap to clone (all clones share the connections). Channels are created on
/// first use, inside the Tokio runtime of the caller.
///
/// ```no_run
/// # async fn demo() -> Result<(), registry_client::Error> {
/// use registry_client::{Client, ClientConfig};
///
/// let client = Client::new(ClientConfig::new(["http://127.0.0.1:7070"]))?;
/// let orders = client.get_service("orders").await?;
/// println!("{} instances", orders.instances.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    /// Sent with every request, on every channel.
    credentials: Credentials,
    nodes: Vec<Node>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Node {
    endpoint: Endpoint,
    channel: OnceLock<Channel>,
}

impl Client {
    /// Checks the endpoints and the token, and reads and checks the TLS
    /// material ([`ClientConfig::tls`]); connects nothing yet.
    ///
    /// ```
    /// use registry_client::{Client, ClientConfig, Error};
    ///
    /// assert!(matches!(Client::new(ClientConfig::new(Vec::<String>::new())), Err(Error::NoEndpoints)));
    /// assert!(Client::new(ClientConfig::new(["127.0.0.1:7070"])).is_ok());
    /// let no_ca = ClientConfig::new(["127.0.0.1:7070"]).ca_file("/nowhere/ca.pem");
    /// assert!(matches!(Client::new(no_ca), Err(Error::InvalidTls { .. })));
    /// ```
    pub fn new(config: ClientConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let credentials = Credentials::new(config.token.as_ref())?;
        let tls = config.tls.load(config.connect_timeout)?;
        let nodes = config
            .endpoints
            .iter()
            .map(|e| Ok(Node { endpoint: endpoint(e, &config, &tls)?, channel: OnceLock::new() }))
            .collect::<Result<Vec<_>>>()?;
        let start = if config.in_order { 0 } else { rand::random_range(0..nodes.len()) };
        Ok(Self { inner: Arc::new(Inner { config, credentials, nodes, next: AtomicUsize::new(start) }) })
    }

    /// The settings this client was built with.
    ///
    /// ```
    /// # use registry_client::{Client, ClientConfig};
    /// let client = Client::new(ClientConfig::new(["127.0.0.1:7070"]).namespace("prod")).unwrap();
    /// assert_eq!(client.config().namespace, "prod");
    /// ```
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The instances of `service` as one node sees them now (no cache).
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// for i in client.get_service("orders").await?.instances {
    ///     println!("{}:{}", i.host, i.port);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_service(&self, service: &str) -> Result<v1::GetServiceResponse> {
        let req = v1::GetServiceRequest { namespace: self.inner.config.namespace.clone(), service: service.into() };
        self.inner
            .call(|c| {
                let req = req.clone();
                async move { registry_client(c).get_service(req).await }
            })
            .await
    }

    /// Every service of the namespace with its instance count.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// for s in client.list_services().await?.services {
    ///     println!("{} {}", s.service, s.instance_count);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_services(&self) -> Result<v1::ListServicesResponse> {
        let req = v1::ListServicesRequest { namespace: self.inner.config.namespace.clone() };
        self.inner
            .call(|c| {
                let req = req.clone();
                async move { registry_client(c).list_services(req).await }
            })
            .await
    }

    /// The consumers watching `service` (the whole namespace when empty).
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let who = client.list_consumers("orders").await?;
    /// println!("{} consumers", who.consumers.len());
    /// # Ok(()) }
    /// ```
    pub async fn list_consumers(&self, service: &str) -> Result<v1::ListConsumersResponse> {
        let req = v1::ListConsumersRequest { namespace: self.inner.config.namespace.clone(), service: service.into() };
        self.inner
            .call(|c| {
                let req = req.clone();
                async move { registry_client(c).list_consumers(req).await }
            })
            .await
    }

    /// The cluster's members as the first node that answers sees them.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let m = client.members().await?;
    /// println!("cluster {} has {} members", m.cluster, m.members.len());
    /// # Ok(()) }
    /// ```
    pub async fn members(&self) -> Result<v1::MembersResponse> {
        self.inner.call(|c| async move { ClusterClient::new(c).members(v1::MembersRequest {}).await }).await
    }

    /// Removes one instance wherever it is registered (unary `Deregister`).
    /// Returns whether it was registered.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let found = client.deregister_instance("orders", "10.0.0.7:8080").await?;
    /// # Ok(()) }
    /// ```
    pub async fn deregister_instance(&self, service: &str, instance_id: &str) -> Result<bool> {
        let key = v1::InstanceKey {
            namespace: self.inner.config.namespace.clone(),
            service: service.into(),
            instance_id: instance_id.into(),
        };
        let req = v1::DeregisterRequest { key: Some(key) };
        Ok(self
            .inner
            .call(|c| {
                let req = req.clone();
                async move { registry_client(c).deregister(req).await }
            })
            .await?
            .found)
    }
}

impl Inner {
    /// The endpoint `i` as configured, for logs.
    /// The endpoint a node's drain hint (its advertised `host:port`) names,
    /// if this client has it.
    pub(crate) fn endpoint_for_hint(&self, hint: &str) -> Option<usize> {
        if hint.is_empty() {
            return None;
        }
        self.nodes.iter().position(|n| n.endpoint.uri().authority().is_some_and(|a| a.as_str() == hint))
    }

    /// [`Self::order`] with `prefer` first (when it is not the one to avoid).
    pub(crate) fn order_preferring(&self, avoid: Option<usize>, prefer: Option<usize>) -> Vec<usize> {
        let mut order = self.order(avoid);
        if let Some(p) = prefer.filter(|p| Some(*p) != avoid)
            && let Some(at) = order.iter().position(|i| *i == p)
        {
            order.remove(at);
            order.insert(0, p);
        }
        order
    }

    pub(crate) fn name(&self, i: usize) -> String {
        self.nodes.get(i).map(|n| n.endpoint.uri().to_string()).unwrap_or_default()
    }

    /// The channel to endpoint `i` (connected on first use, reconnected by
    /// tonic), with the client's credentials.
    pub(crate) fn channel(&self, i: usize) -> NodeChannel {
        let node = &self.nodes[i % self.nodes.len()];
        self.credentials.wrap(node.channel.get_or_init(|| node.endpoint.connect_lazy()).clone())
    }

    /// The channel for a stream that goes to endpoint `i` after losing its node
    /// there (`lost`). Then it gets a new connection of its own: the shared one
    /// may still lead to the draining node, while a new one lets the load
    /// balancer behind a single endpoint pick another node.
    pub(crate) fn stream_channel(&self, i: usize, lost: Option<usize>) -> NodeChannel {
        if lost == Some(i) {
            self.credentials.wrap(self.nodes[i % self.nodes.len()].endpoint.connect_lazy())
        } else {
            self.channel(i)
        }
    }

    /// Endpoint indexes to try, starting with the next in rotation; `avoid` (the
    /// node just lost) goes last, so a single endpoint behind a load balancer is
    /// still retried.
    pub(crate) fn order(&self, avoid: Option<usize>) -> Vec<usize> {
        let n = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).filter(|i| Some(*i) != avoid).collect();
        order.extend(avoid.filter(|a| *a < n));
        order
    }

    /// Runs a unary call on each node in turn until one answers; statuses that
    /// mean "try elsewhere" (unreachable, warming up, draining) move on. Any
    /// other answer ends it: a refusal, and a denial (`UNAUTHENTICATED`,
    /// `PERMISSION_DENIED`), which every node would give as well.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(NodeChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        Ok(self.call_on(self.order(None), call).await?.1)
    }

    /// [`Inner::call`] over the endpoints `order`; returns which one answered.
    pub(crate) async fn call_on<T, F, Fut>(&self, order: Vec<usize>, mut call: F) -> Result<(usize, T)>
    where
        F: FnMut(NodeChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = String::from("no endpoint tried");
        for i in order {
            match tokio::time::timeout(self.config.request_timeout, call(self.channel(i))).await {
                Ok(Ok(response)) => return Ok((i, response.into_inner())),
                Ok(Err(status)) if is_retryable(&status) => last = format!("{}: {}", self.name(i), describe(&status)),
                Ok(Err(status)) => return Err(Error::from_status(&status)),
                Err(_) => last = format!("{}: no answer within {:?}", self.name(i), self.config.request_timeout),
            }
            tracing::debug!(%last, "registry call failed; trying the next node");
        }
        Err(Error::Unavailable { last })
    }
}

/// Parses one endpoint, with `tls` when it uses TLS: `https://` does,
/// `http://` does not, and a bare `host:port` does when TLS is configured (see
/// [`crate::tls`]).
fn endpoint(raw: &str, config: &ClientConfig, tls: &ClientTlsConfig) -> Result<Endpoint> {
    let invalid = |reason: String| Error::InvalidEndpoint { endpoint: raw.to_string(), reason };
    let mut endpoint = Endpoint::from_shared(endpoint_uri(raw, &config.tls)).map_err(|e| invalid(e.to_string()))?;
    if endpoint.uri().host().is_none() {
        return Err(invalid("no host".into()));
    }
    match endpoint.uri().scheme_str() {
        Some("https") => {
            if config.tls.domain.is_none() && !tls_checks_name(endpoint.uri().host().unwrap_or_default()) {
                return Err(invalid("TLS cannot check a certificate against this host; set the TLS domain".into()));
            }
            // `TlsConfig::load` checked everything else: what can still fail
            // is reading the system's roots (no CA configured).
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| Error::InvalidTls {
                what: "roots".into(),
                origin: "the system's certificate store".into(),
                reason: format!("{}; give the nodes' CA certificate", error_chain(&e)),
            })?;
        }
        Some("http") if config.tls.is_configured() => {
            tracing::warn!(
                endpoint = raw,
                "plaintext endpoint although TLS is configured: write https:// or host:port"
            );
        }
        _ => {}
    }
    // The connect timeout covers the TLS handshake too: a node that never
    // finishes one is given up on like an unreachable one.
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        // Finds a dead peer under a stream that is otherwise quiet.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// Whether `host` (of a URI: an IPv6 address in brackets) is a DNS name or
/// an IP address, which TLS can check a certificate against.
fn tls_checks_name(host: &str) -> bool {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    rustls::pki_types::ServerName::try_from(host).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avoided_endpoint_goes_last() {
        let client = Client::new(ClientConfig::new(["a:1", "b:1", "c:1"]).in_order(true)).expect("valid");
        assert_eq!(client.inner.order(None), [0, 1, 2]);
        assert_eq!(client.inner.order(Some(2)), [1, 0, 2]);
        let one = Client::new(ClientConfig::new(["lb:1"])).expect("valid");
        assert_eq!(one.inner.order(Some(0)), [0]);
    }

    #[test]
    fn tls_checks_names_and_addresses() {
        for ok in ["registry.internal", "localhost", "10.0.0.1", "[::1]", "[2001:db8::1]"] {
            assert!(tls_checks_name(ok), "{ok}");
        }
        assert!(!tls_checks_name("bad..name"));
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(matches!(Client::new(ClientConfig::new(["http://"])), Err(Error::InvalidEndpoint { .. })));
        assert!(matches!(Client::new(ClientConfig::new(["bad host:1"])), Err(Error::InvalidEndpoint { .. })));
    }
}
