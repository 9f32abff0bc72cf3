//! One service as xDS resources: pure functions from a service's name and
//! instances to the four resources a gRPC client (or Envoy) asks for, each
//! encoded once as a `google.protobuf.Any`.
//!
//! For a service `orders`:
//! - Listener `orders`: an `api_listener` HttpConnectionManager with its
//!   route configuration inline (one round trip less than RDS) and the
//!   router as its only, so last, HTTP filter.
//! - RouteConfiguration `orders` (also served on its own, for clients that
//!   ask for it by RDS): one virtual host for every domain, one route with
//!   prefix "" to cluster `orders`.
//! - Cluster `orders`: type EDS over ADS, ROUND_ROBIN. Envoy weighs round
//!   robin by the endpoint weights when they differ; gRPC clients weigh the
//!   localities and pick round robin within one.
//! - ClusterLoadAssignment `orders`: one locality per zone (the empty zone
//!   is a locality too), each weighted by the summed weights of its healthy
//!   instances; each instance an endpoint with its weight and health.
//!
//! What an xDS client cannot use is left out rather than sent: an instance
//! whose host is not an IP literal (EDS endpoints are addresses; resolving
//! names in the node would put DNS on the path of every push, so the
//! provider should register its address) and an instance of weight 0 (it
//! asked for no traffic). Hosts left out are counted, once per revision.
//! Instances that are not UP go out as UNHEALTHY: clients send them no
//! traffic, and operators still see them in the client's view.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::{Message, Name};
use registry_proto::v1;

/// The resource types served, in the order a response for several is sent:
/// clusters before their endpoints, listeners before their routes (the
/// order xDS asks of a server so that nothing refers to what is not there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoints,
    Listener,
    Route,
}

impl ResourceType {
    pub const ALL: [Self; 4] = [Self::Cluster, Self::Endpoints, Self::Listener, Self::Route];

    /// The type URL of the resources, as `DiscoveryRequest.type_url` names it.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::Endpoints => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The short name operators know it by (the `type` label of metrics).
    pub fn label(self) -> &'static str {
        match self {
            Self::Listener => "lds",
            Self::Route => "rds",
            Self::Cluster => "cds",
            Self::Endpoints => "eds",
        }
    }

    /// Whether a client may ask for every resource of the type (xDS allows
    /// it for listeners and clusters only).
    pub fn may_be_wildcard(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }

    /// Whether every state-of-the-world response of the type holds every
    /// subscribed resource (listeners and clusters: one left out is
    /// removed). Responses of the other types hold the resources that
    /// changed, as in the incremental variant, and one left out is kept by
    /// the client (the xDS protocol's "grouping resources into responses";
    /// gRPC's `AllResourcesRequiredInSotW`).
    pub fn whole_in_sotw(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }

    /// Whether the resource changes with the service's instances. The
    /// others depend on its name alone, so they are sent again only when
    /// the service comes or goes.
    pub fn follows_instances(self) -> bool {
        self == Self::Endpoints
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A service's four resources at one revision, each an encoded `Any`,
/// shared by every stream that sends them.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceResources {
    pub revision: u64,
    /// Indexed by [`ResourceType::index`].
    encoded: [Bytes; 4],
    /// Each one's version for incremental xDS, by the same index.
    versions: [String; 4],
    /// Instances left out because their host is not an IP literal.
    pub hosts_left_out: usize,
}

impl ServiceResources {
    pub fn get(&self, t: ResourceType) -> &Bytes {
        &self.encoded[t.index()]
    }

    /// The version of resource `t` for incremental xDS: a hash of its
    /// bytes, the same on every node (revisions start again with a node,
    /// and a client reconnecting elsewhere must not be told it is current
    /// when it is not).
    pub fn version(&self, t: ResourceType) -> &str {
        &self.versions[t.index()]
    }
}

/// A hash of `bytes`, as text: the first 64 bits of their SHA-256, in hex.
/// A standard hash, so nodes built by different toolchains (a rolling
/// upgrade) give the same resource the same version; the standard library's
/// hasher may change between Rust releases, and a client reconnecting to an
/// upgraded node would be sent again everything it holds.
fn version_of(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The resources of a service at `revision`, all named `service` (the name
/// the client asked for), or `None` when it has no instances: a resource
/// that does not exist is left out of responses.
pub fn build(service: &str, revision: u64, instances: &[v1::Instance]) -> Option<ServiceResources> {
    if instances.is_empty() {
        return None;
    }
    let (cla, hosts_left_out) = load_assignment(service, instances);
    let mut encoded: [Bytes; 4] = Default::default();
    encoded[ResourceType::Listener.index()] = any(&listener(service));
    encoded[ResourceType::Route.index()] = any(&route_configuration(service));
    encoded[ResourceType::Cluster.index()] = any(&cluster(service));
    encoded[ResourceType::Endpoints.index()] = any(&cla);
    // Once per revision, not at every response of every delta stream.
    let versions = encoded.each_ref().map(|b| version_of(b));
    Some(ServiceResources { revision, encoded, versions, hosts_left_out })
}

/// `msg` wrapped in an `Any` and encoded.
fn any<M: Message + Name>(msg: &M) -> Bytes {
    Bytes::from(to_any(msg).encode_to_vec())
}

fn to_any<M: Message + Name>(msg: &M) -> Any {
    Any { type_url: M::type_url(), value: msg.encode_to_vec() }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn listener(service: &str) -> Listener {
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(&Router::default()))),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: service.into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(route_configuration(service))),
        http_filters: vec![router],
        ..Default::default()
    };
    Listener {
        name: service.into(),
        api_listener: Some(ApiListener { api_listener: Some(to_any(&hcm)) }),
        ..Default::default()
    }
}

pub fn route_configuration(service: &str) -> RouteConfiguration {
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(service.into())),
            ..Default::default()
        })),
        ..Default::default()
    };
    RouteConfiguration {
        name: service.into(),
        virtual_hosts: vec![VirtualHost {
            name: service.into(),
            // The client's authority is the target's name ("orders" for
            // xds:///orders) or, in Envoy, whatever Host it was sent; the
            // listener is already the service's, so every domain matches.
            domains: vec!["*".into()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn cluster(service: &str) -> Cluster {
    Cluster {
        name: service.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: service.into() }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        connect_timeout: Some(Duration { seconds: 5, nanos: 0 }),
        ..Default::default()
    }
}

/// An instance's host as an IP address, if it is one (`[v6]` too).
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

fn health(instance: &v1::Instance) -> HealthStatus {
    // `status` is already the effective one: an admin's override replaces
    // the provider's in the record the views hold.
    match instance.status().effective() {
        v1::Status::Up => HealthStatus::Healthy,
        _ => HealthStatus::Unhealthy,
    }
}

/// The assignment of `service`'s instances, and how many were left out for
/// a host that is not an IP literal.
pub fn load_assignment(service: &str, instances: &[v1::Instance]) -> (ClusterLoadAssignment, usize) {
    let mut hosts_left_out = 0;
    // Sorted by zone, then instance id: the same instances always encode to
    // the same bytes.
    let mut zones: BTreeMap<&str, Vec<&v1::Instance>> = BTreeMap::new();
    for i in instances {
        if ip_literal(&i.host).is_none() {
            hosts_left_out += 1;
            continue;
        }
        if i.weight == Some(0) {
            continue;
        }
        zones.entry(i.zone.as_str()).or_default().push(i);
    }
    let endpoints = zones
        .into_iter()
        .map(|(zone, mut members)| {
            members.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            let mut healthy_weight: u64 = 0;
            let lb_endpoints = members
                .into_iter()
                .map(|i| {
                    let weight = i.weight.unwrap_or(crate::validate::DEFAULT_WEIGHT).max(1);
                    let status = health(i);
                    if status == HealthStatus::Healthy {
                        healthy_weight += u64::from(weight);
                    }
                    LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket(i)),
                            ..Default::default()
                        })),
                        health_status: status as i32,
                        load_balancing_weight: Some(UInt32Value { value: weight }),
                        ..Default::default()
                    }
                })
                .collect();
            LocalityLbEndpoints {
                locality: Some(Locality { zone: zone.into(), ..Default::default() }),
                lb_endpoints,
                // At least 1 (0 is invalid, and gRPC would drop the
                // locality); at most a share that keeps the sum over a
                // thousand localities within a u32, as gRPC requires of it.
                load_balancing_weight: Some(UInt32Value { value: healthy_weight.clamp(1, MAX_LOCALITY_WEIGHT) as u32 }),
                ..Default::default()
            }
        })
        .collect();
    (ClusterLoadAssignment { cluster_name: service.into(), endpoints, ..Default::default() }, hosts_left_out)
}

/// A locality's weight at most: the sum over 1,024 zones stays within a u32.
const MAX_LOCALITY_WEIGHT: u64 = (u32::MAX / 1_024) as u64;

fn socket(i: &v1::Instance) -> Address {
    let host = i.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&i.host);
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: host.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(i.port)),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, host: &str, zone: &str, weight: u32, status: v1::Status) -> v1::Instance {
        v1::Instance {
            namespace: "default".into(),
            service: "orders".into(),
            instance_id: id.into(),
            host: host.into(),
            port: 8000,
            weight: Some(weight),
            zone: zone.into(),
            status: status as i32,
            ..Default::default()
        }
    }

    fn endpoint_of(e: &LbEndpoint) -> (String, u32, u32, HealthStatus) {
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!("no endpoint") };
        let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.clone()) else {
            panic!("no socket address")
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else { panic!("no port") };
        let weight = e.load_balancing_weight.as_ref().map_or(0, |w| w.value);
        (sa.address, port, weight, e.health_status())
    }

    #[test]
    fn one_locality_per_zone_weighted_by_its_healthy_instances() {
        let instances = [
            inst("a1", "10.0.0.1", "a", 100, v1::Status::Up),
            inst("a2", "10.0.0.2", "a", 50, v1::Status::Unspecified),
            inst("b1", "10.0.1.1", "b", 300, v1::Status::Up),
            inst("b2", "10.0.1.2", "b", 100, v1::Status::Down),
            inst("c1", "10.0.2.1", "c", 100, v1::Status::OutOfService),
        ];
        let (cla, left_out) = load_assignment("orders", &instances);
        assert_eq!(left_out, 0);
        assert_eq!(cla.cluster_name, "orders");
        let zones: Vec<(String, u32, usize)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().map(|l| l.zone.clone()).unwrap_or_default(),
                    l.load_balancing_weight.as_ref().map_or(0, |w| w.value),
                    l.lb_endpoints.len(),
                )
            })
            .collect();
        assert_eq!(
            zones,
            [("a".into(), 150, 2), ("b".into(), 300, 2), ("c".into(), 1, 1)],
            "a zone with no healthy instance still weighs 1 (0 is invalid)"
        );
        let b: Vec<_> = cla.endpoints[1].lb_endpoints.iter().map(endpoint_of).collect();
        assert_eq!(
            b,
            [
                ("10.0.1.1".into(), 8000, 300, HealthStatus::Healthy),
                ("10.0.1.2".into(), 8000, 100, HealthStatus::Unhealthy)
            ]
        );
    }

    #[test]
    fn health_follows_the_effective_status() {
        let cases = [
            (v1::Status::Unspecified, HealthStatus::Healthy),
            (v1::Status::Up, HealthStatus::Healthy),
            (v1::Status::Down, HealthStatus::Unhealthy),
            (v1::Status::Starting, HealthStatus::Unhealthy),
            (v1::Status::OutOfService, HealthStatus::Unhealthy),
        ];
        for (status, want) in cases {
            let (cla, _) = load_assignment("orders", &[inst("i", "10.0.0.1", "", 100, status)]);
            assert_eq!(endpoint_of(&cla.endpoints[0].lb_endpoints[0]).3, want, "{status:?}");
        }
        // An override is applied to the record before it reaches a view:
        // the record's status is the override's, the provider's is kept
        // beside it. xDS follows the status shown.
        let mut overridden = inst("i", "10.0.0.1", "", 100, v1::Status::OutOfService);
        overridden.status_override = Some(v1::StatusOverride {
            status: v1::Status::OutOfService as i32,
            provider_status: v1::Status::Up as i32,
            ..Default::default()
        });
        let (cla, _) = load_assignment("orders", &[overridden]);
        assert_eq!(endpoint_of(&cla.endpoints[0].lb_endpoints[0]).3, HealthStatus::Unhealthy);
    }

    #[test]
    fn hosts_that_are_not_ip_literals_are_left_out_and_counted() {
        let instances = [
            inst("n", "orders-1.internal", "", 100, v1::Status::Up),
            inst("v4", "10.0.0.1", "", 100, v1::Status::Up),
            inst("v6", "[::1]", "", 100, v1::Status::Up),
            inst("v6bare", "fd00::2", "", 100, v1::Status::Up),
        ];
        let (cla, left_out) = load_assignment("orders", &instances);
        assert_eq!(left_out, 1);
        let hosts: Vec<String> = cla.endpoints[0].lb_endpoints.iter().map(|e| endpoint_of(e).0).collect();
        assert_eq!(hosts, ["10.0.0.1", "::1", "fd00::2"], "IPv6 literals are sent without brackets");
        let r = build("orders", 7, &instances).expect("has instances");
        assert_eq!((r.revision, r.hosts_left_out), (7, 1));
    }

    #[test]
    fn weight_zero_asks_for_no_traffic() {
        let (cla, _) = load_assignment(
            "orders",
            &[inst("z", "10.0.0.1", "", 0, v1::Status::Up), inst("o", "10.0.0.2", "", 10, v1::Status::Up)],
        );
        let hosts: Vec<String> = cla.endpoints[0].lb_endpoints.iter().map(|e| endpoint_of(e).0).collect();
        assert_eq!(hosts, ["10.0.0.2"]);
    }

    #[test]
    fn a_service_without_instances_does_not_exist() {
        assert!(build("orders", 3, &[]).is_none());
    }

    #[test]
    fn listener_routes_everything_to_the_cluster_of_the_same_name() {
        let r = build("orders", 1, &[inst("a", "10.0.0.1", "", 100, v1::Status::Up)]).expect("exists");
        let any = Any::decode(r.get(ResourceType::Listener).clone()).expect("an Any");
        assert_eq!(any.type_url, ResourceType::Listener.type_url());
        let l = Listener::decode(any.value.as_slice()).expect("a Listener");
        assert_eq!(l.name, "orders");
        let api = l.api_listener.and_then(|a| a.api_listener).expect("api_listener");
        assert_eq!(api.type_url, HttpConnectionManager::type_url());
        let hcm = HttpConnectionManager::decode(api.value.as_slice()).expect("an HCM");
        let last = hcm.http_filters.last().expect("filters");
        assert_eq!(last.name, "envoy.filters.http.router");
        let Some(http_filter::ConfigType::TypedConfig(router)) = &last.config_type else { panic!("typed config") };
        assert_eq!(router.type_url, Router::type_url());
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
            panic!("inline route config")
        };
        assert_eq!(rc, route_configuration("orders"));
        let route = &rc.virtual_hosts[0].routes[0];
        assert_eq!(
            route.r#match.as_ref().and_then(|m| m.path_specifier.clone()),
            Some(route_match::PathSpecifier::Prefix(String::new()))
        );
        let Some(route::Action::Route(action)) = &route.action else { panic!("route action") };
        assert_eq!(action.cluster_specifier, Some(route_action::ClusterSpecifier::Cluster("orders".into())));

        let any = Any::decode(r.get(ResourceType::Cluster).clone()).expect("an Any");
        let c = Cluster::decode(any.value.as_slice()).expect("a Cluster");
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32))
        );
        assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        let eds = c.eds_cluster_config.expect("eds config");
        assert_eq!(eds.service_name, "orders");
        assert!(matches!(
            eds.eds_config.and_then(|s| s.config_source_specifier),
            Some(config_source::ConfigSourceSpecifier::Ads(_))
        ));
    }

    #[test]
    fn versions_are_a_standard_hash_of_the_bytes() {
        // SHA-256("abc") begins ba7816bf 8f01cfea (FIPS 180-2, appendix B.1):
        // the version does not depend on the build that computed it.
        assert_eq!(version_of(b"abc"), "ba7816bf8f01cfea");
        let up =
            build("orders", 1, &[inst("a", "10.0.0.1", "z1", 1, v1::Status::Up)]).expect("instances, so resources");
        let same =
            build("orders", 2, &[inst("a", "10.0.0.1", "z1", 1, v1::Status::Up)]).expect("instances, so resources");
        let down =
            build("orders", 3, &[inst("a", "10.0.0.1", "z1", 1, v1::Status::Down)]).expect("instances, so resources");
        let e = ResourceType::Endpoints;
        assert_eq!(up.version(e), same.version(e), "same bytes, same version, whatever the revision");
        assert_ne!(up.version(e), down.version(e));
        assert_eq!(up.version(ResourceType::Cluster), down.version(ResourceType::Cluster));
    }

    #[test]
    fn type_urls_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/envoy.config.listener.v3.Nope"), None);
        for t in ResourceType::ALL {
            assert_eq!(crate::metrics::XDS_TYPE_LABELS[t.index()], t.label(), "metrics label order");
        }
        assert_eq!(ResourceType::Listener.type_url(), Listener::type_url());
        assert_eq!(ResourceType::Route.type_url(), RouteConfiguration::type_url());
        assert_eq!(ResourceType::Cluster.type_url(), Cluster::type_url());
        assert_eq!(ResourceType::Endpoints.type_url(), ClusterLoadAssignment::type_url());
    }
}
