//! The Eureka-compatible REST API under `/eureka/` (and `/eureka/v2/`) on
//! the HTTP port: Eureka clients (Spring Cloud Netflix, py-eureka-client,
//! eureka-js-client) register, renew, cancel and discover unchanged.
//!
//! A Eureka registration is a unary lease ([`NodeApi::register_instance`])
//! of `leaseInfo.durationInSecs`; a renewal renews it. This node remembers
//! which lease holds which instance; a renewal for an instance it holds no
//! lease for, but that the registry has (its client failed over from
//! another node), takes it over under a new lease here, with the same
//! record, so it never flaps; the old node's copy expires behind it.
//! Renewals are never replicated one by one (a lease is local).
//!
//! Applications map to lower-case service names in `eureka.namespace`.
//! Answers are XML unless the client accepts JSON, as Eureka's are.
//! `/apps/delta` is read from the views' change log of the namespace
//! (Eureka's 3 minutes), with the hash code of the whole namespace.

pub mod codec;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use dashmap::DashMap;
use registry_proto::v1;

use self::codec::Node;
use crate::api::{NodeApi, OverrideFrom, RegistryError};
use crate::auth::Caller;
use crate::listen::Peer;
use crate::metrics::Metrics;
use crate::views::{ChangeAction, ChangeLog};

/// The largest body a Eureka client sends (an instance is about 2 KiB).
const MAX_BODY: usize = 256 * 1024;

#[derive(Clone)]
struct Eureka {
    api: NodeApi,
    namespace: Arc<str>,
    /// (service, instance id) → the lease this node holds it under.
    leases: Arc<DashMap<(String, String), Held>>,
    changes: Arc<ChangeLog>,
    /// The last full answer of `/apps` for callers that read the whole
    /// namespace, by the views' revision: renewals change nothing, so
    /// clients polling every 30 s share one rendering (Eureka caches too).
    full: Arc<tokio::sync::Mutex<FullCache>>,
}

/// A lease this node holds for a Eureka instance, and the client's
/// `lastDirtyTimestamp` when it registered.
#[derive(Clone, Debug)]
struct Held {
    lease: String,
    last_dirty: u64,
}

#[derive(Debug, Default)]
struct FullCache {
    revision: u64,
    json: Option<Bytes>,
    xml: Option<Bytes>,
}

/// The routes under `/eureka/` and `/eureka/v2/`, or none when
/// `eureka.enabled` is false.
pub fn router(api: NodeApi) -> Router {
    let settings = api.registry().config().eureka.clone();
    if !settings.enabled {
        return Router::new();
    }
    let changes = api.registry().views().keep_changes(&settings.namespace, settings.delta_retention_ms);
    let state = Eureka {
        api,
        namespace: settings.namespace.as_str().into(),
        leases: Arc::default(),
        changes,
        full: Arc::default(),
    };
    let routes = || {
        Router::new()
            .route("/apps", get(all_apps))
            .route("/apps/", get(all_apps))
            .route("/apps/delta", get(delta))
            .route("/apps/{app}", post(register).get(one_app))
            .route("/apps/{app}/{id}", put(renew).delete(cancel).get(app_instance))
            .route("/apps/{app}/{id}/status", put(set_status).delete(clear_status))
            .route("/apps/{app}/{id}/metadata", put(update_metadata))
            .route("/instances/{id}", get(any_instance))
            .route("/vips/{vip}", get(vip))
            .route("/svips/{svip}", get(svip))
            .fallback(|| async { (StatusCode::NOT_FOUND, "no such Eureka endpoint\n") })
    };
    Router::new()
        .nest("/eureka", routes())
        .nest("/eureka/v2", routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

// ------------------------------------------------------------------ plumbing

/// An answer in the format the client accepts: JSON if it says so, else XML.
fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"))
}

fn answer(headers: &HeaderMap, node: &Node) -> Response {
    if wants_json(headers) {
        ([(CONTENT_TYPE, "application/json")], codec::to_json(node).to_string()).into_response()
    } else {
        ([(CONTENT_TYPE, "application/xml")], codec::to_xml(node)).into_response()
    }
}

/// An error answer: Eureka clients read the status; the text says why.
fn refusal(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let mut r = (status, format!("{message}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"registry\""));
    }
    r
}

fn registry_error(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
        RegistryError::TooManyInstances { .. } => StatusCode::TOO_MANY_REQUESTS,
        RegistryError::NotOwned(_) | RegistryError::LeaseNotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Draining | RegistryError::WarmingUp => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        RegistryError::PermissionDenied(_) => StatusCode::FORBIDDEN,
    };
    refusal(status, e)
}

impl Eureka {
    fn metrics(&self) -> &Metrics {
        &self.api.registry().metrics
    }

    fn bad(&self, e: impl std::fmt::Display) -> Response {
        Metrics::inc(&self.metrics().eureka_bad_requests);
        refusal(StatusCode::BAD_REQUEST, e)
    }

    /// The caller: a bearer token, or HTTP basic auth with the token as the
    /// password (and its principal's name as the user), as Spring sends
    /// `http://user:token@host/eureka/`; or a client certificate.
    fn caller(&self, headers: &HeaderMap, peer: &Peer) -> Result<Caller, Box<Response>> {
        let header = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
        let basic = header.and_then(|h| h.strip_prefix(b"Basic ")).map(|b64| {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':')?;
            Some((user.to_string(), password.to_string()))
        });
        let caller = match basic {
            None => self.api.authenticate(header, peer),
            Some(None) => return Err(Box::new(refusal(StatusCode::UNAUTHORIZED, "malformed basic credentials"))),
            Some(Some((user, token))) => {
                let bearer = format!("Bearer {token}");
                let caller =
                    self.api.authenticate(Some(bearer.as_bytes()), peer).map_err(|e| Box::new(registry_error(&e)))?;
                if let Some(name) = caller.name()
                    && !user.is_empty()
                    && name != user
                {
                    return Err(Box::new(refusal(
                        StatusCode::UNAUTHORIZED,
                        "the user does not match the token's principal",
                    )));
                }
                Ok(caller)
            }
        };
        caller.map_err(|e| Box::new(registry_error(&e)))
    }

    /// A Eureka lease of `duration_secs` as a lease TTL within the node's limits.
    fn ttl_ms(&self, duration_secs: u64) -> u32 {
        let limits = &self.api.registry().config().sessions;
        (duration_secs.saturating_mul(1_000)).clamp(limits.min_lease_ttl_ms, limits.max_lease_ttl_ms) as u32
    }

    fn key(&self, app: &str, id: &str) -> v1::InstanceKey {
        v1::InstanceKey {
            namespace: self.namespace.to_string(),
            service: app.to_ascii_lowercase(),
            instance_id: id.into(),
        }
    }

    /// Every instance of the namespace the caller may read, by service.
    fn read_all(&self, caller: &Caller) -> Result<BTreeMap<String, Vec<v1::Instance>>, RegistryError> {
        let list = self.api.list_services(caller, &self.namespace)?;
        let mut out = BTreeMap::new();
        for s in list.services {
            let (_, instances) = self.api.get_service(caller, &self.namespace, &s.service)?;
            if !instances.is_empty() {
                out.insert(s.service, instances);
            }
        }
        Ok(out)
    }

    fn applications(
        &self,
        apps: BTreeMap<String, Vec<v1::Instance>>,
        all: &BTreeMap<String, Vec<v1::Instance>>,
    ) -> Node {
        let hash = codec::hashcode(all.values().flatten().map(|i| codec::status_name(i.status())));
        let version = self.api.registry().views().revision();
        let apps = apps
            .into_iter()
            .map(|(service, instances)| {
                let nodes = instances.iter().map(|i| codec::instance_node(i, "ADDED", 0)).collect();
                (service.to_ascii_uppercase(), nodes)
            })
            .collect();
        codec::applications(version, &hash, apps)
    }
}

type Caught = (State<Eureka>, ConnectInfo<Peer>, HeaderMap);

/// An instance as the registry shows it, turned back into what its provider
/// registered, to register it again (taken over, or with new metadata): the
/// provider's own status under any override, no principal (the caller's).
fn provider_record(mut shown: v1::Instance) -> v1::Instance {
    if let Some(o) = shown.status_override.take() {
        shown.status = o.provider_status;
    }
    shown.principal.clear();
    shown
}

// ------------------------------------------------------------------ writes

/// `POST /eureka/apps/{APP}`: register (or update) under a lease of
/// `leaseInfo.durationInSecs`; 204.
async fn register(
    State(e): State<Eureka>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(app): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return e.bad(format!("body: {} (at most {MAX_BODY} bytes)", rejection.body_text())),
    };
    let reg = match codec::parse(&body).and_then(|doc| codec::registration(&doc, &e.namespace, &app)) {
        Ok(r) => r,
        Err(bad) => return e.bad(bad),
    };
    let ttl_ms = e.ttl_ms(reg.duration_secs);
    let key = (reg.instance.service.clone(), reg.instance.instance_id.clone());
    let held = e.leases.get(&key).map(|l| l.lease.clone()).unwrap_or_default();
    let last_dirty: u64 = reg.instance.metadata.get(codec::keys::LAST_DIRTY).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut result = e.api.register_instance(&caller, &held, ttl_ms, Some(reg.instance.clone()));
    if matches!(result, Err(RegistryError::LeaseNotFound(_))) && !held.is_empty() {
        // The lease expired: a new one.
        result = e.api.register_instance(&caller, "", ttl_ms, Some(reg.instance));
    }
    match result {
        Ok(r) => {
            e.leases.insert(key, Held { lease: r.lease_id, last_dirty });
            StatusCode::NO_CONTENT.into_response()
        }
        Err(RegistryError::Invalid(msg)) => e.bad(msg),
        Err(err) => registry_error(&err),
    }
}

#[derive(Debug, serde::Deserialize)]
struct RenewQuery {
    status: Option<String>,
    #[serde(rename = "lastDirtyTimestamp")]
    last_dirty_timestamp: Option<u64>,
    #[serde(rename = "overriddenstatus")]
    _overridden: Option<String>,
}

/// `PUT /eureka/apps/{APP}/{id}`: renew; 404 makes the client register again.
async fn renew(
    (State(e), ConnectInfo(peer), headers): Caught,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<RenewQuery>,
) -> Response {
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Some(status) = &q.status
        && codec::parse_status(status).is_none()
    {
        return e.bad(format!("status: {status:?} is not UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN"));
    }
    let key = e.key(&app, &id);
    let map_key = (key.service.clone(), id.clone());
    // The client's record is newer than the one registered (it changed
    // while we did not hear): 404 makes it register again, as Eureka's
    // server does.
    let newer = |ours: u64| q.last_dirty_timestamp.is_some_and(|theirs| theirs > ours);
    // The common case, kept cheap: a lease this node holds.
    if let Some(held) = e.leases.get(&map_key).map(|h| h.clone()) {
        if newer(held.last_dirty) {
            return refusal(StatusCode::NOT_FOUND, "the client's record is newer: register again");
        }
        match e.api.renew(&caller, &held.lease) {
            Ok(_) => return StatusCode::OK.into_response(),
            Err(RegistryError::LeaseNotFound(_)) => {
                e.leases.remove(&map_key);
            }
            Err(err) => return registry_error(&err),
        }
    }
    let (_, instances) = match e.api.get_service(&caller, &key.namespace, &key.service) {
        Ok(r) => r,
        Err(err) => return registry_error(&err),
    };
    let Some(current) = instances.into_iter().find(|i| i.instance_id == id) else {
        return refusal(StatusCode::NOT_FOUND, "not registered: register again");
    };
    let ours: u64 = current.metadata.get(codec::keys::LAST_DIRTY).and_then(|v| v.parse().ok()).unwrap_or(0);
    if newer(ours) {
        return refusal(StatusCode::NOT_FOUND, "the client's record is newer: register again");
    }
    // Registered through another node (its client failed over here), or
    // its lease here ended: take it over with the same record, so it
    // never disappears; the other copy expires behind it.
    let duration: u64 = current
        .metadata
        .get(codec::keys::DURATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(codec::DEFAULT_DURATION_SECS);
    match e.api.register_instance(&caller, "", e.ttl_ms(duration), Some(provider_record(current))) {
        Ok(r) => {
            e.leases.insert(map_key, Held { lease: r.lease_id, last_dirty: ours });
            Metrics::inc(&e.metrics().eureka_adoptions);
            StatusCode::OK.into_response()
        }
        Err(err) => registry_error(&err),
    }
}

/// `DELETE /eureka/apps/{APP}/{id}`: cancel; 404 when it was not registered.
async fn cancel((State(e), ConnectInfo(peer), headers): Caught, Path((app, id)): Path<(String, String)>) -> Response {
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let key = e.key(&app, &id);
    e.leases.remove(&(key.service.clone(), id));
    match e.api.deregister(&caller, Some(key)) {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => refusal(StatusCode::NOT_FOUND, "not registered"),
        Err(RegistryError::Invalid(msg)) => e.bad(msg),
        Err(err) => registry_error(&err),
    }
}

#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    value: Option<String>,
}

/// `PUT /eureka/apps/{APP}/{id}/status?value=OUT_OF_SERVICE`: the status
/// override (an admin's, on every node).
async fn set_status(
    (State(e), ConnectInfo(peer), headers): Caught,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<StatusQuery>,
) -> Response {
    let Some(status) = q.value.as_deref().and_then(codec::parse_status) else {
        return e.bad(format!("value: {:?} is not UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN", q.value));
    };
    override_status(&e, &headers, &peer, &app, &id, Some(status))
}

/// `DELETE /eureka/apps/{APP}/{id}/status`: clears the override.
async fn clear_status(
    (State(e), ConnectInfo(peer), headers): Caught,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    override_status(&e, &headers, &peer, &app, &id, None)
}

fn override_status(
    e: &Eureka,
    headers: &HeaderMap,
    peer: &Peer,
    app: &str,
    id: &str,
    status: Option<v1::Status>,
) -> Response {
    let caller = match e.caller(headers, peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let key = e.key(app, id);
    match e.api.get_service(&caller, &key.namespace, &key.service) {
        Ok((_, instances)) if instances.iter().any(|i| i.instance_id == id) => {}
        Ok(_) => return refusal(StatusCode::NOT_FOUND, "not registered"),
        Err(err) => return registry_error(&err),
    }
    match e.api.set_status_override(&caller, Some(key), status, OverrideFrom::Provider) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(RegistryError::Invalid(msg)) => e.bad(msg),
        Err(err) => registry_error(&err),
    }
}

/// `PUT /eureka/apps/{APP}/{id}/metadata?k=v`: adds metadata to an instance
/// this node holds the lease of.
async fn update_metadata(
    (State(e), ConnectInfo(peer), headers): Caught,
    Path((app, id)): Path<(String, String)>,
    Query(pairs): Query<BTreeMap<String, String>>,
) -> Response {
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Some(k) = pairs.keys().find(|k| k.starts_with("eureka.")) {
        return e.bad(format!("metadata key {k:?}: the eureka. prefix is reserved"));
    }
    let key = e.key(&app, &id);
    let Some(lease) = e.leases.get(&(key.service.clone(), id.clone())).map(|l| l.lease.clone()) else {
        return refusal(StatusCode::NOT_FOUND, "not registered through this node");
    };
    let (_, instances) = match e.api.get_service(&caller, &key.namespace, &key.service) {
        Ok(r) => r,
        Err(err) => return registry_error(&err),
    };
    let Some(current) = instances.into_iter().find(|i| i.instance_id == id) else {
        return refusal(StatusCode::NOT_FOUND, "not registered");
    };
    let mut record = provider_record(current);
    record.metadata.extend(pairs);
    match e.api.register_instance(&caller, &lease, 0, Some(record)) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(RegistryError::Invalid(msg)) => e.bad(msg),
        Err(err) => registry_error(&err),
    }
}

// ------------------------------------------------------------------ reads

/// `GET /eureka/apps`: every application, with the hash code.
async fn all_apps((State(e), ConnectInfo(peer), headers): Caught) -> Response {
    Metrics::inc(&e.metrics().eureka_full_fetches);
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let json = wants_json(&headers);
    if !e.api.auth().sees(&caller, &e.namespace, "*") {
        // Part of the namespace: rendered for this caller alone.
        return match e.read_all(&caller) {
            Ok(all) => answer(&headers, &e.applications(all.clone(), &all)),
            Err(err) => registry_error(&err),
        };
    }
    // One rendering per revision of the views, shared; whoever finds it
    // stale renders it (off the async workers) while the others wait.
    let mut cache = e.full.lock().await;
    let revision = e.api.registry().views().revision();
    if cache.revision != revision {
        *cache = FullCache { revision, json: None, xml: None };
    }
    let cached = if json { cache.json.clone() } else { cache.xml.clone() };
    let body = match cached {
        Some(body) => body,
        None => {
            let (e2, caller) = (e.clone(), caller.clone());
            let rendered = tokio::task::spawn_blocking(move || {
                let all = e2.read_all(&caller)?;
                let node = e2.applications(all.clone(), &all);
                Ok::<_, RegistryError>(Bytes::from(if json {
                    codec::to_json(&node).to_string()
                } else {
                    codec::to_xml(&node)
                }))
            })
            .await;
            let body = match rendered {
                Ok(Ok(body)) => body,
                Ok(Err(err)) => return registry_error(&err),
                Err(_) => return refusal(StatusCode::INTERNAL_SERVER_ERROR, "rendering the registry failed"),
            };
            *(if json { &mut cache.json } else { &mut cache.xml }) = Some(body.clone());
            body
        }
    };
    drop(cache);
    ([(CONTENT_TYPE, if json { "application/json" } else { "application/xml" })], body).into_response()
}

/// `GET /eureka/apps/delta`: what changed in the last `delta_retention_ms`
/// (the latest action per instance), and the hash code of everything, so
/// a client that applies it can check it is in step.
async fn delta((State(e), ConnectInfo(peer), headers): Caught) -> Response {
    Metrics::inc(&e.metrics().eureka_delta_fetches);
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let all = match e.read_all(&caller) {
        Ok(all) => all,
        Err(err) => return registry_error(&err),
    };
    // The latest change of each instance: one still there is shown as it
    // is now (so the delta ends where the hash code is), one gone by name.
    let mut apps: BTreeMap<String, Vec<Node>> = BTreeMap::new();
    for c in e.changes.recent() {
        if !e.api.auth().sees(&caller, &e.namespace, &c.service) {
            continue;
        }
        let now = all.get(&*c.service).and_then(|is| is.iter().find(|i| *i.instance_id == *c.instance_id));
        let node = match (now, c.action) {
            (Some(i), ChangeAction::Added) => codec::instance_node(i, "ADDED", c.at_unix_ms),
            (Some(i), _) => codec::instance_node(i, "MODIFIED", c.at_unix_ms),
            (None, _) => {
                let gone = v1::Instance {
                    namespace: e.namespace.to_string(),
                    service: c.service.to_string(),
                    instance_id: c.instance_id.to_string(),
                    status: v1::Status::Down as i32,
                    ..Default::default()
                };
                codec::instance_node(&gone, "DELETED", c.at_unix_ms)
            }
        };
        apps.entry(c.service.to_ascii_uppercase()).or_default().push(node);
    }
    let hash = codec::hashcode(all.values().flatten().map(|i| codec::status_name(i.status())));
    let version = e.api.registry().views().revision();
    answer(&headers, &codec::applications(version, &hash, apps.into_iter().collect()))
}

/// `GET /eureka/apps/{APP}`.
async fn one_app((State(e), ConnectInfo(peer), headers): Caught, Path(app): Path<String>) -> Response {
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let service = app.to_ascii_lowercase();
    match e.api.get_service(&caller, &e.namespace, &service) {
        Ok((_, instances)) if !instances.is_empty() => {
            let nodes = instances.iter().map(|i| codec::instance_node(i, "ADDED", 0)).collect();
            answer(
                &headers,
                &Node::Map(vec![("application".into(), codec::application(app.to_ascii_uppercase(), nodes))]),
            )
        }
        Ok(_) => refusal(StatusCode::NOT_FOUND, "no such application"),
        Err(RegistryError::Invalid(msg)) => e.bad(msg),
        Err(err) => registry_error(&err),
    }
}

/// `GET /eureka/apps/{APP}/{id}`.
async fn app_instance(
    (State(e), ConnectInfo(peer), headers): Caught,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match e.api.get_service(&caller, &e.namespace, &app.to_ascii_lowercase()) {
        Ok((_, instances)) => match instances.iter().find(|i| i.instance_id == id) {
            Some(i) => answer(&headers, &Node::Map(vec![("instance".into(), codec::instance_node(i, "ADDED", 0))])),
            None => refusal(StatusCode::NOT_FOUND, "no such instance"),
        },
        Err(RegistryError::Invalid(msg)) => e.bad(msg),
        Err(err) => registry_error(&err),
    }
}

/// `GET /eureka/instances/{id}`: the instance with that id, in any application.
async fn any_instance((State(e), ConnectInfo(peer), headers): Caught, Path(id): Path<String>) -> Response {
    let caller = match e.caller(&headers, &peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match e.read_all(&caller) {
        Ok(all) => match all.values().flatten().find(|i| i.instance_id == id) {
            Some(i) => answer(&headers, &Node::Map(vec![("instance".into(), codec::instance_node(i, "ADDED", 0))])),
            None => refusal(StatusCode::NOT_FOUND, "no such instance"),
        },
        Err(err) => registry_error(&err),
    }
}

/// `GET /eureka/vips/{vip}`: the instances whose VIP address is `vip`
/// (instances without one: their service name).
async fn vip((State(e), ConnectInfo(peer), headers): Caught, Path(vip): Path<String>) -> Response {
    by_vip(&e, &headers, &peer, &vip, codec::keys::VIP)
}

/// `GET /eureka/svips/{svip}`: the same by secure VIP address.
async fn svip((State(e), ConnectInfo(peer), headers): Caught, Path(svip): Path<String>) -> Response {
    by_vip(&e, &headers, &peer, &svip, codec::keys::SECURE_VIP)
}

fn by_vip(e: &Eureka, headers: &HeaderMap, peer: &Peer, vip: &str, key: &str) -> Response {
    let caller = match e.caller(headers, peer) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let all = match e.read_all(&caller) {
        Ok(all) => all,
        Err(err) => return registry_error(&err),
    };
    let matching: BTreeMap<String, Vec<v1::Instance>> = all
        .iter()
        .filter_map(|(service, instances)| {
            let hit: Vec<v1::Instance> = instances
                .iter()
                .filter(|i| i.metadata.get(key).map_or(service.as_str(), String::as_str).eq_ignore_ascii_case(vip))
                .cloned()
                .collect();
            (!hit.is_empty()).then(|| (service.clone(), hit))
        })
        .collect();
    answer(headers, &e.applications(matching, &all))
}
