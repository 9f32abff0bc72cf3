//! Validation of API input. Everything a client sends passes through here before
//! it can reach the store; a refusal names the field and the limit it broke.
//!
//! Validation also normalizes: defaults are filled in (namespace, instance id,
//! weight, status), so the store only ever holds complete records.

use std::collections::HashMap;

use registry_proto::v1;
use registry_store::InstanceKey;

use crate::config::Limits;

/// The namespace used when a request leaves it empty.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The weight of an instance that does not set one.
pub const DEFAULT_WEIGHT: u32 = 100;

/// A refused input: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), reason: reason.into() }
}

type Result<T> = std::result::Result<T, ValidationError>;

/// Namespace, service and zone names: `[A-Za-z0-9._-]`, starting with a letter
/// or digit.
pub fn name(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(refuse(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(refuse(field, format!("{} bytes is over the limit of {max}", value.len())));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(refuse(field, "must start with a letter or digit"));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(refuse(field, format!("character {c:?} not allowed (use A-Z a-z 0-9 . _ -)")));
    }
    Ok(())
}

/// Visible ASCII without spaces, e.g. `10.0.0.7:8080` or `[::1]:80`.
fn printable(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(refuse(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(refuse(field, format!("{} bytes is over the limit of {max}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(refuse(field, format!("character {c:?} not allowed (visible ASCII only)")));
    }
    Ok(())
}

fn host(field: &str, value: &str, max: usize) -> Result<()> {
    printable(field, value, max)?;
    if let Some(c) =
        value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%')))
    {
        return Err(refuse(field, format!("character {c:?} not allowed in a host name or address")));
    }
    Ok(())
}

fn namespace_or_default(field: &str, value: &str, limits: &Limits) -> Result<String> {
    if value.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_string());
    }
    name(field, value, limits.max_name_len)?;
    Ok(value.to_string())
}

fn metadata(field: &str, map: &HashMap<String, String>, limits: &Limits) -> Result<()> {
    if map.len() > limits.max_metadata_entries {
        return Err(refuse(
            field,
            format!("{} entries is over the limit of {}", map.len(), limits.max_metadata_entries),
        ));
    }
    let mut total = 0usize;
    for (k, v) in map {
        let kf = format!("{field}[{k:?}]");
        if k.is_empty() {
            return Err(refuse(field, "keys must not be empty"));
        }
        if k.len() > limits.max_metadata_key_len {
            return Err(refuse(
                kf,
                format!("key of {} bytes is over the limit of {}", k.len(), limits.max_metadata_key_len),
            ));
        }
        if let Some(c) = k.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))) {
            return Err(refuse(kf, format!("character {c:?} not allowed in a key (use A-Z a-z 0-9 . _ - /)")));
        }
        if v.len() > limits.max_metadata_value_len {
            return Err(refuse(
                kf,
                format!("value of {} bytes is over the limit of {}", v.len(), limits.max_metadata_value_len),
            ));
        }
        total += k.len() + v.len();
    }
    if total > limits.max_metadata_bytes {
        return Err(refuse(field, format!("{total} bytes in all is over the limit of {}", limits.max_metadata_bytes)));
    }
    Ok(())
}

/// Checks an instance and fills in its defaults.
pub fn instance(mut i: v1::Instance, limits: &Limits) -> Result<v1::Instance> {
    i.namespace = namespace_or_default("instance.namespace", &i.namespace, limits)?;
    name("instance.service", &i.service, limits.max_name_len)?;
    host("instance.host", &i.host, limits.max_host_len)?;
    if i.port == 0 || i.port > 65_535 {
        return Err(refuse("instance.port", format!("{} is outside 1..=65535", i.port)));
    }
    if i.instance_id.is_empty() {
        i.instance_id = format!("{}:{}", i.host, i.port);
    }
    printable("instance.instance_id", &i.instance_id, limits.max_instance_id_len)?;
    metadata("instance.metadata", &i.metadata, limits)?;
    let weight = i.weight.unwrap_or(DEFAULT_WEIGHT);
    if weight > limits.max_weight {
        return Err(refuse("instance.weight", format!("{weight} is over the limit of {}", limits.max_weight)));
    }
    i.weight = Some(weight);
    if !i.zone.is_empty() {
        name("instance.zone", &i.zone, limits.max_name_len)?;
    }
    let status = v1::Status::try_from(i.status)
        .map_err(|_| refuse("instance.status", format!("{} is not a known status", i.status)))?;
    i.status = status.effective() as i32;
    // Set by the node (from the caller's credential; from an admin's
    // override), never by the caller.
    i.principal.clear();
    i.status_override = None;
    Ok(i)
}

/// Checks an instance key, filling in the default namespace.
pub fn instance_key(field: &str, k: &v1::InstanceKey, limits: &Limits) -> Result<InstanceKey> {
    let ns = namespace_or_default(&format!("{field}.namespace"), &k.namespace, limits)?;
    name(&format!("{field}.service"), &k.service, limits.max_name_len)?;
    printable(&format!("{field}.instance_id"), &k.instance_id, limits.max_instance_id_len)?;
    Ok(InstanceKey::new(&ns, &k.service, &k.instance_id))
}

/// The key of a validated instance.
pub fn key_of(i: &v1::Instance) -> InstanceKey {
    InstanceKey::new(&i.namespace, &i.service, &i.instance_id)
}

/// A validated Subscribe request.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    pub namespace: String,
    /// Sorted and deduplicated; empty watches the whole namespace.
    pub services: Vec<String>,
    pub consumer: v1::ConsumerInfo,
}

pub fn subscribe(req: v1::SubscribeRequest, limits: &Limits) -> Result<Subscription> {
    let namespace = namespace_or_default("namespace", &req.namespace, limits)?;
    if req.services.len() > limits.max_services_per_subscribe {
        return Err(refuse(
            "services",
            format!("{} services is over the limit of {}", req.services.len(), limits.max_services_per_subscribe),
        ));
    }
    for (i, s) in req.services.iter().enumerate() {
        name(&format!("services[{i}]"), s, limits.max_name_len)?;
    }
    let mut services = req.services;
    services.sort();
    services.dedup();
    let consumer = req.consumer.unwrap_or_default();
    if !consumer.consumer_id.is_empty() {
        printable("consumer.consumer_id", &consumer.consumer_id, limits.max_instance_id_len)?;
    }
    if !consumer.host.is_empty() {
        host("consumer.host", &consumer.host, limits.max_host_len)?;
    }
    metadata("consumer.metadata", &consumer.metadata, limits)?;
    Ok(Subscription { namespace, services, consumer })
}

/// Checks a namespace and service pair of a read request.
pub fn service_ref(namespace: &str, service: &str, limits: &Limits) -> Result<(String, String)> {
    let ns = namespace_or_default("namespace", namespace, limits)?;
    name("service", service, limits.max_name_len)?;
    Ok((ns, service.to_string()))
}

pub fn namespace(namespace: &str, limits: &Limits) -> Result<String> {
    namespace_or_default("namespace", namespace, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> v1::Instance {
        v1::Instance { service: "orders".into(), host: "10.0.0.1".into(), port: 8080, ..Default::default() }
    }

    #[test]
    fn defaults_are_filled_in() {
        let i = instance(base(), &Limits::default()).expect("valid");
        assert_eq!(i.namespace, "default");
        assert_eq!(i.instance_id, "10.0.0.1:8080");
        assert_eq!(i.weight, Some(100));
        assert_eq!(i.status, v1::Status::Up as i32);
    }

    #[test]
    fn each_limit_names_its_field() {
        let l = Limits::default();
        let cases: Vec<(v1::Instance, &str)> = vec![
            (v1::Instance { service: "".into(), ..base() }, "instance.service"),
            (v1::Instance { service: "a b".into(), ..base() }, "instance.service"),
            (v1::Instance { service: "x".repeat(129), ..base() }, "instance.service"),
            (v1::Instance { namespace: "-ns".into(), ..base() }, "instance.namespace"),
            (v1::Instance { port: 0, ..base() }, "instance.port"),
            (v1::Instance { port: 70_000, ..base() }, "instance.port"),
            (v1::Instance { host: "".into(), ..base() }, "instance.host"),
            (v1::Instance { host: "a/b".into(), ..base() }, "instance.host"),
            (v1::Instance { instance_id: "a b".into(), ..base() }, "instance.instance_id"),
            (v1::Instance { weight: Some(10_001), ..base() }, "instance.weight"),
            (v1::Instance { zone: "z z".into(), ..base() }, "instance.zone"),
            (v1::Instance { status: 42, ..base() }, "instance.status"),
            (
                v1::Instance { metadata: (0..65).map(|i| (format!("k{i}"), String::new())).collect(), ..base() },
                "instance.metadata",
            ),
            (
                v1::Instance { metadata: [("k".to_string(), "v".repeat(1_025))].into(), ..base() },
                "instance.metadata[\"k\"]",
            ),
        ];
        for (i, field) in cases {
            let err = instance(i.clone(), &l).expect_err(&format!("{i:?} must be refused"));
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn subscribe_sorts_and_dedups_services() {
        let req = v1::SubscribeRequest { services: vec!["b".into(), "a".into(), "b".into()], ..Default::default() };
        let s = subscribe(req, &Limits::default()).expect("valid");
        assert_eq!(s.services, vec!["a", "b"]);
        assert_eq!(s.namespace, "default");
    }
}
