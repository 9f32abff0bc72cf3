//! The JSON HTTP API under `/v1/`: the registry for scripts and languages
//! without gRPC. Every handler turns its request into a [`NodeApi`] call,
//! with the same validation, grants, ownership and readiness rules as gRPC,
//! and answers JSON whose field names follow the protobuf JSON mapping
//! (lowerCamelCase, enum values by name, 64-bit integers as strings).
//!
//! - Reads: `GET /v1/namespaces`, `GET /v1/namespaces/{namespace}/services`
//!   (searchable, paginated, counts by status), `GET
//!   /v1/namespaces/{namespace}/services/{service}` (instances with the node
//!   holding each and when it was written, and the consumers), `GET
//!   /v1/members`, `GET /v1/node`.
//! - Live: `GET /v1/watch?namespace=&service=`, server-sent events: a
//!   `snapshot` per service, then `delta`s, `progress` keepalives, a `drain`
//!   when the node wants the watcher elsewhere, and `end` before it closes.
//!   The watcher is a consumer in the directory, like a gRPC Subscribe.
//! - Provider writes under a unary lease: `POST
//!   /v1/namespaces/{namespace}/services/{service}/instances` (register or
//!   update, with `ttlMs` and `leaseId`), `POST /v1/leases/{leaseId}/renew`,
//!   `DELETE /v1/namespaces/{namespace}/services/{service}/instances/{instanceId}`.
//! - Errors: `{"code": "...", "message": "..."}` with the HTTP status that
//!   matches the code (400, 401, 403, 404, 429, 503 while warming up or draining).
//! - `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from these
//!   handlers and types.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use registry_proto::v1;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt as _;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::Http;
use crate::api::{NodeApi, OverrideFrom, RegistryError};
use crate::auth::{Caller, Role};
use crate::listen::Peer;
use crate::views::{StatusCounts, Views};

pub(super) fn routes() -> axum::Router<Http> {
    axum::Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/namespaces", get(namespaces))
        .route("/v1/namespaces/{namespace}/services", get(services))
        .route("/v1/namespaces/{namespace}/services/{service}", get(service))
        .route("/v1/namespaces/{namespace}/services/{service}/instances", post(register))
        .route("/v1/namespaces/{namespace}/services/{service}/instances/{instance_id}", delete(deregister))
        .route(
            "/v1/namespaces/{namespace}/services/{service}/instances/{instance_id}/status",
            axum::routing::put(set_override).delete(clear_override),
        )
        .route("/v1/leases/{lease_id}/renew", post(renew))
        .route("/v1/members", get(members))
        .route("/v1/node", get(node))
        .route("/v1/node/drain", post(drain))
        .route("/v1/watch", get(watch))
        .route("/v1/events", get(events))
        .route("/v1/session", get(session))
        .route("/v1/{*rest}", axum::routing::any(not_found))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "registry JSON API",
        description = "Service registry: reads, live watches (server-sent events), provider leases. \
                       Send `authorization: Bearer <token>` when the node enforces auth.",
        version = "1"
    ),
    paths(
        namespaces, services, service, register, deregister, set_override, clear_override, renew, members, node, drain,
        watch, events, session
    ),
    components(schemas(
        ApiError, NamespaceJson, NamespacesJson, ServicesPage, ServiceSummaryJson, ServiceJson, InstanceJson,
        ConsumerJson, RegisterBody, RegisteredJson, InstanceKeyJson, RenewedJson, DeregisteredJson, MembersJson,
        MemberJson, NodeJson, StatusJson, SnapshotEvent, DeltaEvent, EndEvent, StatusOverrideJson, OverrideBody,
        OverriddenJson, DrainingJson, SessionJson, ServicesChangedEvent
    )),
    tags((name = "registry", description = "The registry's JSON API"))
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Response {
    match openapi_document().to_pretty_json() {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()).into_response(),
    }
}

// ------------------------------------------------------------------ errors

/// An error: a code (the gRPC status name) and a message saying what to fix.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`, `NOT_FOUND`,
    /// `RESOURCE_EXHAUSTED`, `UNAVAILABLE`, ...
    pub code: String,
    pub message: String,
}

/// An error answer: the status and its JSON body.
#[derive(Debug)]
struct Problem(StatusCode, ApiError);

impl Problem {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(status, ApiError { code: code.into(), message: message.into() })
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }
}

impl From<RegistryError> for Problem {
    fn from(e: RegistryError) -> Self {
        let (status, code) = match &e {
            RegistryError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            RegistryError::TooManyInstances { .. } => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
            RegistryError::NotOwned(_) | RegistryError::LeaseNotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            RegistryError::Draining | RegistryError::WarmingUp => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            RegistryError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            RegistryError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for Problem {
    fn from(e: JsonRejection) -> Self {
        Self::invalid(format!("request body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for Problem {
    fn from(e: QueryRejection) -> Self {
        Self::invalid(format!("query: {}", e.body_text()))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let Problem(status, body) = self;
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint; see /v1/openapi.json")
}

type Answer<T> = Result<Json<T>, Problem>;

/// What names a request's caller: its `authorization` header and its
/// connection's peer (address, client certificate). Each handler asks for
/// the caller where its own errors are ordered.
struct Authed {
    authorization: Option<HeaderValue>,
    peer: Peer,
}

impl Authed {
    fn caller(&self, api: &NodeApi) -> Result<Caller, Problem> {
        Ok(api.authenticate(self.authorization.as_ref().map(HeaderValue::as_bytes), &self.peer)?)
    }
}

impl axum::extract::FromRequestParts<Http> for Authed {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &Http) -> Result<Self, Problem> {
        let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<Peer>>().cloned().ok_or_else(|| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "the connection's peer is unknown")
        })?;
        Ok(Self { authorization: parts.headers.get(AUTHORIZATION).cloned(), peer })
    }
}

// ------------------------------------------------------------------ shapes

/// An instance's status, as the protobuf enum names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum StatusJson {
    #[serde(rename = "STATUS_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "STATUS_UP")]
    Up,
    #[serde(rename = "STATUS_DOWN")]
    Down,
    #[serde(rename = "STATUS_STARTING")]
    Starting,
    #[serde(rename = "STATUS_OUT_OF_SERVICE")]
    OutOfService,
}

impl From<v1::Status> for StatusJson {
    fn from(s: v1::Status) -> Self {
        match s {
            v1::Status::Unspecified => Self::Unspecified,
            v1::Status::Up => Self::Up,
            v1::Status::Down => Self::Down,
            v1::Status::Starting => Self::Starting,
            v1::Status::OutOfService => Self::OutOfService,
        }
    }
}

impl From<StatusJson> for v1::Status {
    fn from(s: StatusJson) -> Self {
        match s {
            StatusJson::Unspecified => Self::Unspecified,
            StatusJson::Up => Self::Up,
            StatusJson::Down => Self::Down,
            StatusJson::Starting => Self::Starting,
            StatusJson::OutOfService => Self::OutOfService,
        }
    }
}

/// One instance, every field.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceJson {
    pub namespace: String,
    pub service: String,
    pub instance_id: String,
    pub host: String,
    pub port: u32,
    pub metadata: BTreeMap<String, String>,
    /// Relative load-balancing weight (100 when the provider set none).
    pub weight: u32,
    pub zone: String,
    pub status: StatusJson,
    /// The principal that registered it (empty with auth off).
    pub principal: String,
    /// Set when an admin overrides the status: `status` is then the
    /// override's, and this says who set it and what the provider reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_override: Option<StatusOverrideJson>,
    /// The node holding this copy (the provider's node). Only in a
    /// service's detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_node: Option<String>,
    /// When this copy was written (registered or last updated), Unix ms.
    /// Only in a service's detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_unix_ms: Option<String>,
}

/// An admin's override of an instance's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusOverrideJson {
    pub status: StatusJson,
    /// The principal that set it (empty with auth off).
    pub set_by: String,
    pub set_unix_ms: String,
    /// The status the provider itself reports.
    pub provider_status: StatusJson,
    /// The provider set it on its own instance: it ends when the instance
    /// is deregistered or expires (an admin's outlives restarts).
    pub ends_with_instance: bool,
}

impl From<v1::StatusOverride> for StatusOverrideJson {
    fn from(o: v1::StatusOverride) -> Self {
        Self {
            status: o.status().into(),
            provider_status: o.provider_status().into(),
            set_by: o.set_by,
            set_unix_ms: o.set_unix_ms.to_string(),
            ends_with_instance: o.ends_with_instance,
        }
    }
}

impl From<v1::Instance> for InstanceJson {
    fn from(i: v1::Instance) -> Self {
        let status = i.status().into();
        let status_override = i.status_override.map(StatusOverrideJson::from);
        Self {
            namespace: i.namespace,
            service: i.service,
            instance_id: i.instance_id,
            host: i.host,
            port: i.port,
            metadata: i.metadata.into_iter().collect(),
            weight: i.weight.unwrap_or(100),
            zone: i.zone,
            status,
            principal: i.principal,
            status_override,
            owner_node: None,
            updated_unix_ms: None,
        }
    }
}

/// A consumer: a watcher of services (gRPC Subscribe or SSE).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerJson {
    pub consumer_id: String,
    pub host: String,
    pub metadata: BTreeMap<String, String>,
    /// The node holding its stream.
    pub node_id: String,
    /// Services it watches; empty: the whole namespace.
    pub services: Vec<String>,
    /// When it started watching, Unix ms.
    pub since_unix_ms: String,
    pub principal: String,
}

impl From<v1::Consumer> for ConsumerJson {
    fn from(c: v1::Consumer) -> Self {
        let info = c.info.unwrap_or_default();
        Self {
            consumer_id: info.consumer_id,
            host: info.host,
            metadata: info.metadata.into_iter().collect(),
            node_id: c.node_id,
            services: c.services,
            since_unix_ms: c.since_unix_ms.to_string(),
            principal: c.principal,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceJson {
    pub name: String,
    /// Services with at least one instance.
    pub services: u64,
    pub instances: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NamespacesJson {
    pub namespaces: Vec<NamespaceJson>,
}

/// A service with its instances counted by status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummaryJson {
    pub service: String,
    pub instance_count: u32,
    /// UP, or no status set.
    pub up: u32,
    pub down: u32,
    pub starting: u32,
    pub out_of_service: u32,
    pub revision: String,
}

/// One page of a namespace's services, in the order asked (by name by default).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesPage {
    pub namespace: String,
    pub services: Vec<ServiceSummaryJson>,
    /// Services matching the search, on all pages.
    pub total: u32,
    /// Pass as `pageToken` for the next page; empty on the last.
    pub next_page_token: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ServicesQuery {
    /// Only services whose name contains this (case-insensitive).
    #[serde(default)]
    search: String,
    /// Services per page: 1 to 1,000, default 100.
    page_size: Option<u32>,
    /// The `nextPageToken` of the previous page (with the same search and order).
    #[serde(default)]
    page_token: String,
    /// `name` (default), `instanceCount`, `up`, `down`, `starting` or
    /// `outOfService`, then ` desc` for descending; ties go by name.
    #[serde(default)]
    order_by: String,
}

/// One service: its instances and its consumers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceJson {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub instances: Vec<InstanceJson>,
    pub consumers: Vec<ConsumerJson>,
}

/// An instance to register under a lease (the path names its namespace and service).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterBody {
    /// Default: `host:port`.
    #[serde(default)]
    pub instance_id: String,
    pub host: String,
    pub port: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub weight: Option<u32>,
    #[serde(default)]
    pub zone: String,
    pub status: Option<StatusJson>,
    /// Lease TTL in ms; absent or 0: the node's default.
    #[serde(default)]
    pub ttl_ms: u32,
    /// Add the instance to this existing lease instead of a new one.
    #[serde(default)]
    pub lease_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceKeyJson {
    pub namespace: String,
    pub service: String,
    pub instance_id: String,
}

/// A registration: renew `leaseId` within `ttlMs` to keep it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredJson {
    pub lease_id: String,
    pub key: InstanceKeyJson,
    pub version: String,
    pub ttl_ms: u32,
    pub node_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenewedJson {
    pub ttl_ms: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeregisteredJson {
    /// False when it was not registered (deregistering is idempotent).
    pub found: bool,
}

/// A member of the cluster, as this node sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberJson {
    pub node_id: String,
    pub incarnation: String,
    /// `MEMBER_STATE_LOCAL`, `_LIVE`, `_SUSPECT`, `_ORPHANED`, `_LEAVING`, `_LEFT`.
    pub state: String,
    pub advertise_addr: String,
    pub last_beat_age_ms: String,
    pub origin_seq: String,
    pub applied_seq: String,
    /// Changes it issued that this node has not applied.
    pub lag: String,
    pub record_count: String,
    pub digest_match: bool,
    pub ready: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembersJson {
    pub cluster: String,
    pub node_id: String,
    pub members: Vec<MemberJson>,
}

/// This node at a glance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeJson {
    pub node_id: String,
    pub cluster: String,
    pub version: String,
    pub clustered: bool,
    pub ready: bool,
    pub draining: bool,
    /// Part of the view comes from a silent peer, or this node is cut off.
    pub degraded: bool,
    /// Orphan removal is held: it would remove too much at once.
    pub safety_valve_holding: bool,
    pub instances: String,
    pub services: String,
    /// Instances by status (unset counts as up).
    pub up: u32,
    pub down: u32,
    pub starting: u32,
    pub out_of_service: u32,
    /// Peers this node has not heard from for a while (their instances still served).
    pub suspect_peers: u32,
    /// Peers silent long enough that their instances are being removed.
    pub orphaned_peers: u32,
    /// Members of the cluster, this node included.
    pub members: u32,
    pub sessions: String,
    pub leases: String,
    pub subscribers: String,
}

/// `event: snapshot`: a watched service's instances now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotEvent {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub instances: Vec<InstanceJson>,
    pub degraded: bool,
}

/// `event: delta`: what changed in a watched service, in revision order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeltaEvent {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub prev_revision: String,
    pub upserted: Vec<InstanceJson>,
    /// Instance ids removed.
    pub removed: Vec<String>,
    pub degraded: bool,
}

/// `event: end`: the node ends the stream; watch again (any node).
#[derive(Debug, Serialize, ToSchema)]
pub struct EndEvent {
    pub reason: String,
}

// ------------------------------------------------------------------ reads

/// Namespaces with instances (those the caller may read).
#[utoipa::path(get, path = "/v1/namespaces", tag = "registry",
    responses((status = 200, body = NamespacesJson), (status = 401, body = ApiError), (status = 503, body = ApiError)))]
async fn namespaces(State(h): State<Http>, who: Authed) -> Answer<NamespacesJson> {
    let caller = who.caller(&h.api)?;
    h.api.check_ready()?;
    Ok(Json(namespaces_json(&h, &caller)))
}

/// The namespaces with instances that `caller` may read.
fn namespaces_json(h: &Http, caller: &Caller) -> NamespacesJson {
    let auth = h.api.auth();
    let namespaces = h
        .registry
        .views()
        .namespaces()
        .into_iter()
        .filter(|(ns, _, _)| auth.sees_namespace(caller, ns))
        .map(|(name, services, instances)| NamespaceJson { name, services, instances })
        .collect();
    NamespacesJson { namespaces }
}

/// Counts of a service's instances by status.
fn summarize(views: &Views, namespace: &str, s: v1::ServiceSummary) -> ServiceSummaryJson {
    let c = views.status_counts(Some((namespace, &s.service)));
    ServiceSummaryJson {
        service: s.service,
        instance_count: s.instance_count,
        up: c.up,
        down: c.down,
        starting: c.starting,
        out_of_service: c.out_of_service,
        revision: s.revision.to_string(),
    }
}

/// How a page of services is sorted: `orderBy=<field>[ desc]`, as in
/// Google's API guidelines (AIP-132). Ties go by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Order {
    field: OrderField,
    desc: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrderField {
    Name,
    InstanceCount,
    Up,
    Down,
    Starting,
    OutOfService,
}

impl Order {
    fn parse(text: &str) -> Result<Self, Problem> {
        let mut words = text.split_whitespace();
        let field = match words.next() {
            None | Some("name") => OrderField::Name,
            Some("instanceCount") => OrderField::InstanceCount,
            Some("up") => OrderField::Up,
            Some("down") => OrderField::Down,
            Some("starting") => OrderField::Starting,
            Some("outOfService") => OrderField::OutOfService,
            Some(other) => {
                return Err(Problem::invalid(format!(
                    "orderBy {other:?}: sort by name, instanceCount, up, down, starting or outOfService"
                )));
            }
        };
        let desc = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => return Err(Problem::invalid(format!("orderBy direction {other:?}: asc or desc"))),
        };
        if words.next().is_some() {
            return Err(Problem::invalid("orderBy takes one field and a direction, as \"down desc\""));
        }
        Ok(Self { field, desc })
    }

    /// The number a service sorts by (0 when sorted by name alone).
    fn key(self, s: &ServiceSummaryJson) -> u32 {
        match self.field {
            OrderField::Name => 0,
            OrderField::InstanceCount => s.instance_count,
            OrderField::Up => s.up,
            OrderField::Down => s.down,
            OrderField::Starting => s.starting,
            OrderField::OutOfService => s.out_of_service,
        }
    }

    fn cmp(self, a: (u32, &str), b: (u32, &str)) -> std::cmp::Ordering {
        match (self.field, self.desc) {
            (OrderField::Name, true) => b.1.cmp(a.1),
            (_, true) => b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)),
            (_, false) => a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)),
        }
    }
}

/// The services of a namespace the caller may read, by name, a page at a time.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}/services", tag = "registry",
    params(("namespace" = String, Path), ServicesQuery),
    responses((status = 200, body = ServicesPage), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 503, body = ApiError)))]
async fn services(
    State(h): State<Http>,
    who: Authed,
    Path(namespace): Path<String>,
    query: Result<Query<ServicesQuery>, QueryRejection>,
) -> Answer<ServicesPage> {
    let Query(q) = query?;
    let caller = who.caller(&h.api)?;
    let page_size = q.page_size.unwrap_or(100);
    if !(1..=1_000).contains(&page_size) {
        return Err(Problem::invalid(format!("pageSize {page_size} is outside 1..=1000")));
    }
    let order = Order::parse(&q.order_by)?;
    let list = h.api.list_services(&caller, &namespace)?;
    let search = q.search.to_lowercase();
    let views = h.registry.views();
    // Counting by status reads one field of each instance: sorting 10,000
    // services by a count stays cheap.
    let mut matching: Vec<ServiceSummaryJson> = list
        .services
        .into_iter()
        .filter(|s| search.is_empty() || s.service.to_lowercase().contains(&search))
        .map(|s| summarize(views, &list.namespace, s))
        .collect();
    matching.sort_by(|a, b| order.cmp((order.key(a), &a.service), (order.key(b), &b.service)));
    let total = matching.len() as u32;
    // The token names the last row of the previous page (its sort key and
    // name): pages stay right while services come and go.
    let start = if q.page_token.is_empty() {
        0
    } else {
        let after = decode_token(&q.page_token)
            .and_then(|t| {
                let (key, name) = t.split_once('\n')?;
                Some((key.parse::<u32>().ok()?, name.to_string()))
            })
            .ok_or_else(|| Problem::invalid("pageToken is not one this API gave"))?;
        matching.partition_point(|s| {
            order.cmp((order.key(s), &s.service), (after.0, &after.1)) != std::cmp::Ordering::Greater
        })
    };
    let mut services: Vec<ServiceSummaryJson> = matching.into_iter().skip(start).take(page_size as usize + 1).collect();
    let more = services.len() > page_size as usize;
    services.truncate(page_size as usize);
    let next_page_token = match (more, services.last()) {
        (true, Some(last)) => encode_token(&format!("{}\n{}", order.key(last), last.service)),
        _ => String::new(),
    };
    Ok(Json(ServicesPage { namespace: list.namespace, services, total, next_page_token }))
}

fn encode_token(after: &str) -> String {
    after.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > 2_048 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// One service: every instance (with the node holding it and when it was
/// written) and its consumers.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}/services/{service}", tag = "registry",
    params(("namespace" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = ServiceJson), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError, description = "no instance and no consumer"),
        (status = 503, body = ApiError)))]
async fn service(
    State(h): State<Http>,
    who: Authed,
    Path((namespace, service)): Path<(String, String)>,
) -> Answer<ServiceJson> {
    let caller = who.caller(&h.api)?;
    let (revision, instances) = h.api.get_service(&caller, &namespace, &service)?;
    let consumers = h.api.list_consumers(&caller, &namespace, &service)?.consumers;
    if instances.is_empty() && consumers.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("service {namespace}/{service} has no instance and no consumer"),
        ));
    }
    let ns = instances.first().map_or(namespace, |i| i.namespace.clone());
    let ids: Vec<&str> = instances.iter().map(|i| i.instance_id.as_str()).collect();
    let sources: HashMap<String, (std::sync::Arc<str>, u64)> = h.registry.instance_sources(&ns, &service, &ids);
    let mut instances: Vec<InstanceJson> = instances
        .into_iter()
        .map(|i| {
            let source = sources.get(&i.instance_id).cloned();
            let mut json = InstanceJson::from(i);
            json.owner_node = source.as_ref().map(|(node, _)| node.to_string());
            json.updated_unix_ms = source.map(|(_, ms)| ms.to_string());
            json
        })
        .collect();
    instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(Json(ServiceJson {
        namespace: ns,
        service,
        revision: revision.to_string(),
        instances,
        consumers: consumers.into_iter().map(ConsumerJson::from).collect(),
    }))
}

/// The members of the cluster with their sync state (needs an admin grant).
#[utoipa::path(get, path = "/v1/members", tag = "registry",
    responses((status = 200, body = MembersJson), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn members(State(h): State<Http>, who: Authed) -> Answer<MembersJson> {
    let caller = who.caller(&h.api)?;
    Ok(Json(members_json(&h, h.api.members(&caller)?)))
}

fn members_json(h: &Http, answer: v1::MembersResponse) -> MembersJson {
    let members = answer
        .members
        .into_iter()
        .map(|m| {
            let state = m.state().as_str_name().to_string();
            MemberJson {
                node_id: m.node_id,
                incarnation: m.incarnation.to_string(),
                state,
                advertise_addr: m.advertise_addr,
                last_beat_age_ms: m.last_beat_age_ms.to_string(),
                origin_seq: m.origin_seq.to_string(),
                applied_seq: m.applied_seq.to_string(),
                lag: m.origin_seq.saturating_sub(m.applied_seq).to_string(),
                record_count: m.record_count.to_string(),
                digest_match: m.digest_match,
                ready: m.ready,
            }
        })
        .collect();
    MembersJson { cluster: answer.cluster, node_id: h.registry.node_id().to_string(), members }
}

/// This node at a glance: readiness, degraded view, safety valve, counts.
#[utoipa::path(get, path = "/v1/node", tag = "registry",
    responses((status = 200, body = NodeJson), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn node(State(h): State<Http>, who: Authed) -> Answer<NodeJson> {
    let caller = who.caller(&h.api)?;
    h.api.auth().check_anywhere(&caller, Role::Read).map_err(RegistryError::from)?;
    Ok(Json(node_json(&h, h.registry.views().status_counts(None))))
}

/// This node's overview, with `counts` (by status) taken by the caller: the
/// dashboard feed recounts only when a view changed.
fn node_json(h: &Http, counts: StatusCounts) -> NodeJson {
    let r = &h.registry;
    let gauges = r.gauges(h.readiness.is_ready());
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed).to_string();
    let members = crate::cluster::members(r, gauges.ready).members;
    let in_state = |state: v1::MemberState| members.iter().filter(|m| m.state() == state).count() as u32;
    NodeJson {
        node_id: r.node_id().to_string(),
        cluster: r.config().cluster.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        clustered: r.config().clustered(),
        ready: gauges.ready,
        draining: r.is_draining(),
        degraded: r.freshness().degraded,
        safety_valve_holding: r
            .sync_state()
            .is_some_and(|s| s.metrics.valve_holding.load(std::sync::atomic::Ordering::Relaxed)),
        instances: gauges.instances.to_string(),
        services: gauges.services.to_string(),
        up: counts.up,
        down: counts.down,
        starting: counts.starting,
        out_of_service: counts.out_of_service,
        suspect_peers: in_state(v1::MemberState::Suspect),
        orphaned_peers: in_state(v1::MemberState::Orphaned),
        members: members.len() as u32,
        sessions: get(&r.metrics.sessions_active),
        leases: get(&r.metrics.leases_active),
        subscribers: get(&r.metrics.subscribers_active),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrainingJson {
    pub draining: bool,
}

/// Drains this node and stops it (admin), as SIGTERM does: it turns unready,
/// asks its provider sessions and watchers to move to other nodes, waits up
/// to `shutdown_grace_ms` for them, and exits. Its supervisor (systemd,
/// Kubernetes) decides whether it starts again.
#[utoipa::path(post, path = "/v1/node/drain", tag = "registry",
    responses((status = 202, body = DrainingJson), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn drain(State(h): State<Http>, who: Authed) -> Response {
    let result = who.caller(&h.api).and_then(|c| Ok(h.api.check_admin(&c, "drain node")?));
    match result {
        Ok(()) => {
            tracing::warn!(peer = %who.peer.addr, "drain asked over HTTP: draining, then stopping");
            h.shutdown.cancel();
            (StatusCode::ACCEPTED, Json(DrainingJson { draining: true })).into_response()
        }
        Err(p) => p.into_response(),
    }
}

// ------------------------------------------------------------------ writes

/// Registers (or updates) an instance under a TTL lease; renew the lease
/// (`POST /v1/leases/{leaseId}/renew`) within `ttlMs` to keep it.
#[utoipa::path(post, path = "/v1/namespaces/{namespace}/services/{service}/instances", tag = "registry",
    params(("namespace" = String, Path), ("service" = String, Path)),
    request_body = RegisterBody,
    responses((status = 200, body = RegisteredJson), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError, description = "unknown leaseId"),
        (status = 429, body = ApiError), (status = 503, body = ApiError)))]
async fn register(
    State(h): State<Http>,
    who: Authed,
    Path((namespace, service)): Path<(String, String)>,
    body: Result<Json<RegisterBody>, JsonRejection>,
) -> Answer<RegisteredJson> {
    let caller = who.caller(&h.api)?;
    let Json(b) = body?;
    let instance = v1::Instance {
        namespace,
        service,
        instance_id: b.instance_id,
        host: b.host,
        port: b.port,
        metadata: b.metadata.into_iter().collect(),
        weight: b.weight,
        zone: b.zone,
        status: v1::Status::from(b.status.unwrap_or(StatusJson::Unspecified)) as i32,
        principal: String::new(),
        status_override: None,
    };
    let r = h.api.register_instance(&caller, &b.lease_id, b.ttl_ms, Some(instance))?;
    let key = r.key.unwrap_or_default();
    Ok(Json(RegisteredJson {
        lease_id: r.lease_id,
        key: InstanceKeyJson { namespace: key.namespace, service: key.service, instance_id: key.instance_id },
        version: r.version.to_string(),
        ttl_ms: r.ttl_ms,
        node_id: r.node_id,
    }))
}

/// Extends a lease by its TTL (on the node that granted it).
#[utoipa::path(post, path = "/v1/leases/{lease_id}/renew", tag = "registry",
    params(("lease_id" = String, Path)),
    responses((status = 200, body = RenewedJson), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError, description = "unknown or expired lease: register again")))]
async fn renew(State(h): State<Http>, who: Authed, Path(lease_id): Path<String>) -> Answer<RenewedJson> {
    let caller = who.caller(&h.api)?;
    let ttl = h.api.renew(&caller, &lease_id)?;
    Ok(Json(RenewedJson { ttl_ms: ttl.as_millis() as u32 }))
}

/// Removes an instance: its own principal's, or anyone's with an admin grant.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/services/{service}/instances/{instance_id}",
    tag = "registry",
    params(("namespace" = String, Path), ("service" = String, Path), ("instance_id" = String, Path)),
    responses((status = 200, body = DeregisteredJson), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 503, body = ApiError)))]
async fn deregister(
    State(h): State<Http>,
    who: Authed,
    Path((namespace, service, instance_id)): Path<(String, String, String)>,
) -> Answer<DeregisteredJson> {
    let caller = who.caller(&h.api)?;
    let found = h.api.deregister(&caller, Some(v1::InstanceKey { namespace, service, instance_id }))?;
    Ok(Json(DeregisteredJson { found }))
}

/// The status to show for an instance, whatever its provider reports.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    pub status: StatusJson,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverriddenJson {
    /// False when nothing changed (clearing an override that was not set).
    pub changed: bool,
}

/// Overrides an instance's status on every node: take it out of traffic
/// (`STATUS_OUT_OF_SERVICE`) without touching its provider. An admin of the
/// service overrides any instance; a writer only its own, and never an
/// override someone else set (403). The
/// override stays, across re-registrations, until it is cleared or its
/// instance has not been shown for `sessions.status_override_retention_ms`
/// (1 hour by default).
#[utoipa::path(put, path = "/v1/namespaces/{namespace}/services/{service}/instances/{instance_id}/status",
    tag = "registry",
    params(("namespace" = String, Path), ("service" = String, Path), ("instance_id" = String, Path)),
    request_body = OverrideBody,
    responses((status = 200, body = OverriddenJson), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 503, body = ApiError)))]
async fn set_override(
    State(h): State<Http>,
    who: Authed,
    Path((namespace, service, instance_id)): Path<(String, String, String)>,
    body: Result<Json<OverrideBody>, JsonRejection>,
) -> Answer<OverriddenJson> {
    let caller = who.caller(&h.api)?;
    let Json(b) = body?;
    let key = v1::InstanceKey { namespace, service, instance_id };
    let changed = h.api.set_status_override(&caller, Some(key), Some(b.status.into()), OverrideFrom::Operator)?;
    Ok(Json(OverriddenJson { changed }))
}

/// Clears an instance's status override: it shows its provider's status
/// again. An admin clears any; a writer only its own instance's override
/// that it set itself.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/services/{service}/instances/{instance_id}/status",
    tag = "registry",
    params(("namespace" = String, Path), ("service" = String, Path), ("instance_id" = String, Path)),
    responses((status = 200, body = OverriddenJson), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 503, body = ApiError)))]
async fn clear_override(
    State(h): State<Http>,
    who: Authed,
    Path((namespace, service, instance_id)): Path<(String, String, String)>,
) -> Answer<OverriddenJson> {
    let caller = who.caller(&h.api)?;
    let key = v1::InstanceKey { namespace, service, instance_id };
    let changed = h.api.set_status_override(&caller, Some(key), None, OverrideFrom::Operator)?;
    Ok(Json(OverriddenJson { changed }))
}

// ------------------------------------------------------------------ watch

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    /// Default: `default`.
    #[serde(default)]
    namespace: String,
    /// The service to watch; absent: every service of the namespace.
    #[serde(default)]
    service: String,
    /// Names this watcher in the consumer directory (default: its address).
    #[serde(default)]
    consumer_id: String,
}

/// Server-sent events: a `snapshot` of each watched service, then every
/// change as a `delta`, `progress` keepalives, a `drain` when the node
/// wants the watcher on another node, and `end` before the node closes the
/// stream. The watcher is a consumer in the directory.
#[utoipa::path(get, path = "/v1/watch", tag = "registry", params(WatchQuery),
    responses((status = 200, content_type = "text/event-stream",
        description = "events `snapshot` (SnapshotEvent), `delta` (DeltaEvent), `progress`, `drain`, `end` (EndEvent)"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 503, body = ApiError)))]
async fn watch(
    State(h): State<Http>,
    who: Authed,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query?;
    let caller = who.caller(&h.api)?;
    let request = v1::SubscribeRequest {
        namespace: q.namespace,
        services: if q.service.is_empty() { Vec::new() } else { vec![q.service] },
        consumer: Some(v1::ConsumerInfo { consumer_id: q.consumer_id, ..Default::default() }),
    };
    let rx = h.api.watch(&caller, request, Some(who.peer.addr))?;
    // After an `end` the node drops its side, and the stream ends.
    let renders = h.sse.clone();
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
        Ok::<Event, Infallible>(match item {
            Ok(frame) => renders.event(&frame),
            Err(e) => end_event(e.to_string()),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// The server-sent events of the frames sent lately, shared by every watch
/// stream of the node. A change reaches every watcher of its service as the
/// same frame (one buffer), so the first stream to send it renders its JSON
/// and the others copy the event: a push to a thousand SSE watchers renders
/// once, as a gRPC push encodes once. An entry holds its frame's buffer, so
/// no other frame can be at that address while the entry is here; frames
/// over [`SSE_RENDER_MAX_BYTES`] (large snapshots) are rendered each time.
#[derive(Debug, Default)]
pub(super) struct SseRenders(parking_lot::Mutex<std::collections::VecDeque<(bytes::Bytes, Event)>>);

/// Events kept in [`SseRenders`].
const SSE_RENDERS: usize = 64;
/// Largest frame whose event is kept: deltas and small snapshots.
const SSE_RENDER_MAX_BYTES: usize = 16 * 1024;

impl SseRenders {
    /// `frame` as a server-sent event, rendered now or by another stream.
    pub(super) fn event(&self, frame: &registry_proto::SubscribeFrame) -> Event {
        let bytes = &frame.0;
        if bytes.is_empty() || bytes.len() > SSE_RENDER_MAX_BYTES {
            return sse_event(frame);
        }
        let same = |b: &bytes::Bytes| b.as_ptr() == bytes.as_ptr() && b.len() == bytes.len();
        if let Some((_, event)) = self.0.lock().iter().rev().find(|(b, _)| same(b)) {
            return event.clone();
        }
        let event = sse_event(frame);
        let mut kept = self.0.lock();
        if !kept.iter().any(|(b, _)| same(b)) {
            if kept.len() == SSE_RENDERS {
                kept.pop_front();
            }
            kept.push_back((bytes.clone(), event.clone()));
        }
        event
    }
}

/// One frame as a server-sent event.
fn sse_event(frame: &registry_proto::SubscribeFrame) -> Event {
    use v1::subscribe_response::Kind;
    match frame.decode().ok().and_then(|r| r.kind) {
        Some(Kind::Snapshot(s)) => json_event(
            "snapshot",
            &SnapshotEvent {
                namespace: s.namespace,
                service: s.service,
                revision: s.revision.to_string(),
                instances: s.instances.into_iter().map(InstanceJson::from).collect(),
                degraded: s.freshness.is_some_and(|f| f.degraded),
            },
        ),
        Some(Kind::Delta(d)) => json_event(
            "delta",
            &DeltaEvent {
                namespace: d.namespace,
                service: d.service,
                revision: d.revision.to_string(),
                prev_revision: d.prev_revision.to_string(),
                upserted: d.upserted.into_iter().map(InstanceJson::from).collect(),
                removed: d.removed.into_iter().map(|k| k.instance_id).collect(),
                degraded: d.freshness.is_some_and(|f| f.degraded),
            },
        ),
        Some(Kind::Progress(p)) => json_event(
            "progress",
            &serde_json::json!({
                "nodeId": p.node_id,
                "degraded": p.freshness.is_some_and(|f| f.degraded),
            }),
        ),
        Some(Kind::Drain(d)) => {
            json_event("drain", &serde_json::json!({ "hint": d.hint, "delayMs": d.delay_ms, "reason": d.reason }))
        }
        None => end_event("the node sent a frame this front-end cannot read; watch again".into()),
    }
}

// ------------------------------------------------------------------ dashboards

/// Who the caller is, and what a console should offer it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionJson {
    /// The principal the credential names (empty with auth off).
    pub principal: String,
    /// The node refuses requests without a credential (`auth.mode = enforce`).
    pub auth_required: bool,
    /// The request's credential was accepted (false: none was sent and the
    /// node requires one; a credential it does not know is 401).
    pub signed_in: bool,
    /// Holds an admin grant: may override statuses, deregister any
    /// instance, drain the node and read the members.
    pub admin: bool,
}

/// Who the caller is: a console asks first, to show its login form or its
/// pages (with the admin actions for admins).
#[utoipa::path(get, path = "/v1/session", tag = "registry",
    responses((status = 200, body = SessionJson), (status = 401, body = ApiError)))]
async fn session(State(h): State<Http>, who: Authed) -> Answer<SessionJson> {
    let auth = h.api.auth();
    let auth_required = auth.mode() == crate::auth::AuthMode::Enforce;
    let caller = match who.caller(&h.api) {
        Ok(caller) => caller,
        // No credential at all: not an error here, the answer for a console
        // to show its login form (a wrong one is 401).
        Err(_) if who.authorization.is_none() => {
            return Ok(Json(SessionJson { principal: String::new(), auth_required, signed_in: false, admin: false }));
        }
        Err(e) => return Err(e),
    };
    Ok(Json(SessionJson {
        principal: caller.name().unwrap_or_default().to_string(),
        auth_required,
        signed_in: true,
        admin: auth.may_admin(&caller),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// The namespace whose services to follow (default: `default`).
    #[serde(default)]
    namespace: String,
}

/// `event: services`: the followed namespace's services that changed since
/// the previous event (the first event lists none: it marks the start).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesChangedEvent {
    pub namespace: String,
    /// Services that appeared or whose instances changed (at most 1,000).
    pub changed: Vec<String>,
    /// Services that lost their last instance.
    pub removed: Vec<String>,
    /// More changed than `changed` lists: read the pages again.
    pub truncated: bool,
    /// Services with instances in the namespace now.
    pub total: u32,
}

/// How often the dashboard feed looks for changes.
const FEED_TICK: std::time::Duration = std::time::Duration::from_millis(500);
/// The most service names one `services` event lists.
const FEED_MAX_CHANGED: usize = 1_000;

/// Server-sent events for dashboards, each sent when it changes (looked at
/// twice a second, so within 500 ms): `node` (NodeJson), `namespaces`
/// (NamespacesJson), `services` (ServicesChangedEvent, for the namespace
/// asked) and, for admins, `members` (MembersJson); `end` (EndEvent) when
/// the node drains. Costs nothing while no one listens.
#[utoipa::path(get, path = "/v1/events", tag = "registry", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream",
        description = "events `node`, `namespaces`, `services`, `members` (admins), `end`"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn events(
    State(h): State<Http>,
    who: Authed,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query?;
    let caller = who.caller(&h.api)?;
    h.api.auth().check_anywhere(&caller, Role::Read).map_err(RegistryError::from)?;
    let namespace = if q.namespace.is_empty() { "default".to_string() } else { q.namespace };
    // Refused now rather than silently empty later; warming up is not a
    // refusal (the feed says so through `node`).
    match h.api.list_services(&caller, &namespace) {
        Ok(_) | Err(RegistryError::WarmingUp) => {}
        Err(e) => return Err(e.into()),
    }
    let admin = h.api.auth().may_admin(&caller);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(DashboardFeed { h, caller, namespace, admin, tx }.run());
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Event, Infallible>);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// One dashboard's feed: what it sent last, to send only what changed.
struct DashboardFeed {
    h: Http,
    caller: Caller,
    namespace: String,
    admin: bool,
    tx: tokio::sync::mpsc::Sender<Event>,
}

impl DashboardFeed {
    async fn run(self) {
        let mut tick = tokio::time::interval(FEED_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let views = self.h.registry.views();
        let (mut seen_revision, mut counts) = (None, StatusCounts::default());
        let mut services: Option<HashMap<String, u64>> = None;
        let (mut last_node, mut last_namespaces, mut last_members) = (String::new(), String::new(), String::new());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.tx.closed() => return,
                () = self.h.shutdown.cancelled() => {
                    let end = end_event("the node is draining; connect again (any node)".into());
                    let _ = self.tx.send(end).await;
                    return;
                }
            }
            let revision = views.revision();
            let views_changed = seen_revision != Some(revision);
            if views_changed {
                counts = views.status_counts(None);
            }
            let mut out = Vec::new();
            changed(&mut out, &mut last_node, "node", &node_json(&self.h, counts));
            if views_changed {
                changed(&mut out, &mut last_namespaces, "namespaces", &namespaces_json(&self.h, &self.caller));
                // Warming up: no list yet; the next change of the views retries.
                if let Ok(list) = self.h.api.list_services(&self.caller, &self.namespace) {
                    let now: HashMap<String, u64> =
                        list.services.into_iter().map(|s| (s.service, s.revision)).collect();
                    let event = match &services {
                        None => ServicesChangedEvent {
                            namespace: self.namespace.clone(),
                            changed: Vec::new(),
                            removed: Vec::new(),
                            truncated: false,
                            total: now.len() as u32,
                        },
                        Some(before) => services_changed(&self.namespace, before, &now),
                    };
                    if services.is_none() || !event.changed.is_empty() || !event.removed.is_empty() {
                        out.push(json_event("services", &event));
                    }
                    services = Some(now);
                    seen_revision = Some(revision);
                }
            }
            if self.admin {
                let members =
                    members_json(&self.h, crate::cluster::members(&self.h.registry, self.h.readiness.is_ready()));
                changed(&mut out, &mut last_members, "members", &members);
            }
            for event in out {
                if self.tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Queues `event` with `value` if its JSON differs from `last` (and keeps it).
fn changed(out: &mut Vec<Event>, last: &mut String, event: &str, value: &impl Serialize) {
    let Ok(json) = serde_json::to_string(value) else { return };
    if json != *last {
        out.push(Event::default().event(event).data(json.clone()));
        *last = json;
    }
}

/// What changed between two listings of a namespace (service → revision).
fn services_changed(
    namespace: &str,
    before: &HashMap<String, u64>,
    now: &HashMap<String, u64>,
) -> ServicesChangedEvent {
    let mut changed: Vec<String> =
        now.iter().filter(|(name, rev)| before.get(*name) != Some(rev)).map(|(name, _)| name.clone()).collect();
    let mut removed: Vec<String> = before.keys().filter(|name| !now.contains_key(*name)).cloned().collect();
    changed.sort();
    removed.sort();
    let truncated = changed.len() + removed.len() > FEED_MAX_CHANGED;
    changed.truncate(FEED_MAX_CHANGED);
    removed.truncate(FEED_MAX_CHANGED.saturating_sub(changed.len()));
    ServicesChangedEvent { namespace: namespace.to_string(), changed, removed, truncated, total: now.len() as u32 }
}

/// The `end` event: why the node closes the stream.
fn end_event(reason: String) -> Event {
    json_event("end", &EndEvent { reason })
}

fn json_event(name: &str, data: &impl Serialize) -> Event {
    Event::default().event(name).json_data(data).unwrap_or_else(|_| Event::default().event(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delta of `orders` upserting instance `id`, in a buffer of its own.
    fn delta(id: &str, padding: usize) -> registry_proto::SubscribeFrame {
        let instance = v1::Instance {
            namespace: "default".into(),
            service: "orders".into(),
            instance_id: id.into(),
            host: "10.0.0.1".into(),
            port: 80,
            metadata: [("pad".to_string(), "x".repeat(padding))].into(),
            ..Default::default()
        };
        registry_proto::SubscribeFrame::encode(&v1::SubscribeResponse {
            kind: Some(v1::subscribe_response::Kind::Delta(v1::ServiceDelta {
                namespace: "default".into(),
                service: "orders".into(),
                revision: 2,
                prev_revision: 1,
                upserted: vec![instance],
                ..Default::default()
            })),
        })
    }

    #[test]
    fn a_frame_is_rendered_once_for_every_stream_that_sends_it() {
        let renders = SseRenders::default();
        let kept = || renders.0.lock().len();
        let frame = delta("i1", 0);
        let first = format!("{:?}", renders.event(&frame));
        assert!(first.contains("delta") && first.contains("i1"), "{first}");
        // Another stream's copy of the same frame (the same buffer).
        assert_eq!(format!("{:?}", renders.event(&frame.clone())), first);
        assert_eq!(kept(), 1, "rendered once");
        // Equal bytes in another buffer are another frame: rendered alike.
        assert_eq!(format!("{:?}", renders.event(&delta("i1", 0))), first);
        assert_eq!(kept(), 2);
        // Each frame keeps its own rendering.
        assert!(format!("{:?}", renders.event(&delta("i2", 0))).contains("i2"));
        assert_eq!(format!("{:?}", renders.event(&frame)), first);
        // Large frames are rendered each time, and the oldest renderings go.
        assert!(format!("{:?}", renders.event(&delta("big", SSE_RENDER_MAX_BYTES))).contains("big"));
        assert_eq!(kept(), 3);
        let frames: Vec<_> = (0..SSE_RENDERS).map(|n| delta(&format!("n{n}"), 0)).collect();
        for f in &frames {
            let _ = renders.event(f);
        }
        assert_eq!(kept(), SSE_RENDERS);
        assert!(!renders.0.lock().iter().any(|(b, _)| b.as_ptr() == frame.0.as_ptr()), "the first is gone");
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        for name in ["orders", "a.b-c_d", ""] {
            assert_eq!(decode_token(&encode_token(name)).as_deref(), Some(name));
        }
        for bad in ["zz", "abc", "ff"] {
            assert!(decode_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let doc = openapi_document();
        let json = doc.to_json().expect("serializes");
        for path in [
            "/v1/namespaces",
            "/v1/namespaces/{namespace}/services",
            "/v1/namespaces/{namespace}/services/{service}",
            "/v1/namespaces/{namespace}/services/{service}/instances",
            "/v1/namespaces/{namespace}/services/{service}/instances/{instance_id}",
            "/v1/leases/{lease_id}/renew",
            "/v1/members",
            "/v1/node",
            "/v1/watch",
            "/v1/events",
            "/v1/session",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path} missing from {json}");
        }
    }
}
