//! Eureka's wire shapes, in JSON and XML, and their mapping onto the
//! registry's instances.
//!
//! Both formats are read into one tree ([`Node`]) the way Eureka's own
//! Jackson codecs see XML: an element's attributes are `@name` entries, its
//! text next to attributes is `$` (`"port": {"$": 8080, "@enabled":
//! "true"}` in JSON is `<port enabled="true">8080</port>` in XML). Answers
//! are built as the same tree and written in the format the client asked
//! for.

use std::collections::BTreeMap;

use registry_proto::v1;

/// A JSON or XML value as Eureka's codecs see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Text(String),
    Num(u64),
    /// Fields in order; a name may repeat (`instance` in an application).
    Map(Vec<(String, Node)>),
}

impl Node {
    fn text(s: impl Into<String>) -> Self {
        Self::Text(s.into())
    }

    /// The first field named `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        match self {
            Node::Map(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A field's text, without surrounding whitespace (a number reads as its
    /// digits; `{"$": ..}` as its `$`). Metadata values are read exactly,
    /// from the fields themselves.
    pub fn str(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Node::Text(s) => Some(s.trim().to_string()),
            Node::Num(n) => Some(n.to_string()),
            m @ Node::Map(_) => match m.get("$")? {
                Node::Text(s) => Some(s.trim().to_string()),
                Node::Num(n) => Some(n.to_string()),
                Node::Map(_) => None,
            },
        }
    }
}

/// Bad input: the field it is about and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct BadInput {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn bad(field: &str, reason: impl Into<String>) -> BadInput {
    BadInput { field: field.into(), reason: reason.into() }
}

// ------------------------------------------------------------------ reading

/// Reads a request body: JSON if it starts with `{`, XML if with `<`.
pub fn parse(body: &[u8]) -> Result<Node, BadInput> {
    let text = std::str::from_utf8(body).map_err(|_| bad("body", "not UTF-8"))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| bad("body", format!("malformed JSON: {e}")))?;
        Ok(from_json(&value, 0)?)
    } else if trimmed.starts_with('<') {
        from_xml(trimmed)
    } else if trimmed.is_empty() {
        Err(bad("body", "empty; send an instance as JSON or XML"))
    } else {
        Err(bad("body", "neither JSON nor XML"))
    }
}

/// Deeper than any Eureka document: a bound on hostile nesting.
const MAX_DEPTH: usize = 16;

fn from_json(v: &serde_json::Value, depth: usize) -> Result<Node, BadInput> {
    if depth > MAX_DEPTH {
        return Err(bad("body", "nested too deep"));
    }
    Ok(match v {
        serde_json::Value::Object(m) => {
            let mut fields = Vec::with_capacity(m.len());
            for (k, v) in m {
                if !v.is_null() {
                    fields.push((k.clone(), from_json(v, depth + 1)?));
                }
            }
            Node::Map(fields)
        }
        serde_json::Value::String(s) => Node::Text(s.clone()),
        serde_json::Value::Number(n) => n.as_u64().map_or_else(|| Node::Text(n.to_string()), Node::Num),
        serde_json::Value::Bool(b) => Node::Text(b.to_string()),
        serde_json::Value::Array(items) => {
            // Arrays appear as repeated fields (`application`, `instance`).
            let mut fields = Vec::with_capacity(items.len());
            for item in items {
                fields.push(("item".to_string(), from_json(item, depth + 1)?));
            }
            Node::Map(fields)
        }
        serde_json::Value::Null => Node::Text(String::new()),
    })
}

/// An element being read: its name, its fields so far, its text so far.
type Open = (String, Vec<(String, Node)>, String);

fn from_xml(text: &str) -> Result<Node, BadInput> {
    use quick_xml::events::Event;
    // Text is kept as sent (a metadata value's spaces are its own); the
    // whitespace between child elements is dropped by `finish`.
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Open> = vec![(String::new(), Vec::new(), String::new())];
    let xml_err = |e: &dyn std::fmt::Display| bad("body", format!("malformed XML: {e}"));
    loop {
        match reader.read_event().map_err(|e| xml_err(&e))? {
            Event::Start(e) | Event::Empty(e) if stack.len() > MAX_DEPTH => {
                let _ = e;
                return Err(bad("body", "nested too deep"));
            }
            Event::Start(e) => {
                let (name, attrs) = element(&e)?;
                stack.push((name, attrs, String::new()));
            }
            Event::Empty(e) => {
                let (name, attrs) = element(&e)?;
                let node = finish(attrs, String::new());
                stack.last_mut().ok_or_else(|| bad("body", "malformed XML"))?.1.push((name, node));
            }
            Event::Text(t) => {
                let t = t.unescape().map_err(|e| xml_err(&e))?;
                stack.last_mut().ok_or_else(|| bad("body", "malformed XML"))?.2.push_str(&t);
            }
            Event::CData(t) => {
                let t = String::from_utf8_lossy(&t).into_owned();
                stack.last_mut().ok_or_else(|| bad("body", "malformed XML"))?.2.push_str(&t);
            }
            Event::End(_) => {
                let (name, mut fields, text) = stack.pop().ok_or_else(|| bad("body", "malformed XML"))?;
                if name == "metadata" {
                    // Map keys, coded as XML names by Eureka's XML writers.
                    for (k, _) in fields.iter_mut().filter(|(k, _)| !k.starts_with('@')) {
                        *k = from_xml_name(k);
                    }
                }
                let node = finish(fields, text);
                stack.last_mut().ok_or_else(|| bad("body", "malformed XML: unbalanced"))?.1.push((name, node));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match stack.pop() {
        Some((_, fields, _)) if stack.is_empty() => Ok(Node::Map(fields)),
        _ => Err(bad("body", "malformed XML: an element is not closed")),
    }
}

fn element(e: &quick_xml::events::BytesStart<'_>) -> Result<(String, Vec<(String, Node)>), BadInput> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| bad("body", format!("malformed XML attribute: {e}")))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a.unescape_value().map_err(|e| bad("body", format!("malformed XML attribute: {e}")))?;
        attrs.push((format!("@{key}"), Node::text(value.into_owned())));
    }
    Ok((name, attrs))
}

/// An element's node: its text alone, or a map of attributes, children and
/// `$` (the text, unless it is only the whitespace between children).
fn finish(mut fields: Vec<(String, Node)>, text: String) -> Node {
    if fields.is_empty() {
        return Node::Text(text);
    }
    let has_children = fields.iter().any(|(k, _)| !k.starts_with('@'));
    let between_children = has_children && text.trim().is_empty();
    if !text.is_empty() && !between_children {
        fields.push(("$".into(), Node::Text(text)));
    }
    Node::Map(fields)
}

// ------------------------------------------------------------------ XML names

/// A map key (metadata) as an XML element name, coded as Eureka's XML
/// writer codes it (XStream's name coder with Eureka's defaults): `$` is
/// `_-`, `_` is `__`, and a character an XML name may not hold there is `_.`
/// and its UTF-16 code in four hex digits, so `app.kubernetes.io/name` is
/// `app.kubernetes.io_.002fname` and `1st` is `_.0031st`. Eureka's XML
/// readers decode it back ([`from_xml_name`]); one written as it is would
/// make the whole document malformed.
fn xml_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for (i, c) in key.chars().enumerate() {
        match c {
            '$' => out.push_str("_-"),
            '_' => out.push_str("__"),
            c if (i == 0 && is_name_start(c)) || (i > 0 && is_name_char(c)) => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("_.{unit:04x}"));
                }
            }
        }
    }
    out
}

/// An element name decoded as [`xml_name`] codes it. A `_.` without four
/// hex digits after it is read as it is; an unpaired UTF-16 surrogate
/// becomes U+FFFD.
fn from_xml_name(name: &str) -> String {
    if !name.contains('_') {
        return name.to_string();
    }
    let mut units: Vec<u16> = Vec::with_capacity(name.len());
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        let hex = rest.get(2..6).filter(|h| rest.starts_with("_.") && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if rest.starts_with("_-") {
            units.push(u16::from(b'$'));
            rest = &rest[2..];
        } else if let Some(unit) = hex.and_then(|h| u16::from_str_radix(h, 16).ok()) {
            units.push(unit);
            rest = &rest[6..];
        } else if rest.starts_with("__") {
            units.push(u16::from(b'_'));
            rest = &rest[2..];
        } else {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
            rest = &rest[c.len_utf8()..];
        }
    }
    String::from_utf16_lossy(&units)
}

/// XML 1.0's NameStartChar, less `:`, which XStream leaves as it is but a
/// namespace-aware parser (Python's ElementTree) reads as a prefix it does
/// not know: coded, it still decodes to `:` in Eureka's readers.
fn is_name_start(c: char) -> bool {
    matches!(c as u32,
        0x41..=0x5A | 0x5F | 0x61..=0x7A | 0xC0..=0xD6 | 0xD8..=0xF6 | 0xF8..=0x2FF
        | 0x370..=0x37D | 0x37F..=0x1FFF | 0x200C..=0x200D | 0x2070..=0x218F | 0x2C00..=0x2FEF
        | 0x3001..=0xD7FF | 0xF900..=0xFDCF | 0xFDF0..=0xFFFD)
}

/// XML 1.0's NameChar. Characters beyond the BMP are coded (as XStream,
/// which reads UTF-16 units, does).
fn is_name_char(c: char) -> bool {
    is_name_start(c) || matches!(c as u32, 0x2D | 0x2E | 0x30..=0x39 | 0xB7 | 0x300..=0x36F | 0x203F..=0x2040)
}

// ------------------------------------------------------------------ instances

/// Metadata keys where an instance keeps what Eureka clients send beyond
/// the registry's own fields (read back when it is shown to them).
pub mod keys {
    pub const HOST_NAME: &str = "eureka.hostName";
    /// "true" when the registered port is the secure one.
    pub const SECURE: &str = "eureka.secure";
    /// The other port, enabled or not.
    pub const OTHER_PORT: &str = "eureka.otherPort";
    pub const VIP: &str = "eureka.vipAddress";
    pub const SECURE_VIP: &str = "eureka.secureVipAddress";
    pub const HOME_PAGE: &str = "eureka.homePageUrl";
    pub const STATUS_PAGE: &str = "eureka.statusPageUrl";
    pub const HEALTH_CHECK: &str = "eureka.healthCheckUrl";
    pub const DURATION: &str = "eureka.durationInSecs";
    pub const LAST_DIRTY: &str = "eureka.lastDirtyTimestamp";
}

/// Eureka's lease when the client names none.
pub const DEFAULT_DURATION_SECS: u64 = 90;

/// An instance as a Eureka client registers it.
#[derive(Debug, PartialEq)]
pub struct Registration {
    pub instance: v1::Instance,
    /// `leaseInfo.durationInSecs`.
    pub duration_secs: u64,
}

/// Reads `{"instance": {...}}` / `<instance>...</instance>` for `app`.
pub fn registration(doc: &Node, namespace: &str, app: &str) -> Result<Registration, BadInput> {
    let i = doc.get("instance").ok_or_else(|| bad("instance", "missing: send {\"instance\": {...}}"))?;
    if !matches!(i, Node::Map(_)) {
        return Err(bad("instance", "must be an object"));
    }
    let body_app = i.str("app").unwrap_or_default();
    if !body_app.is_empty() && !body_app.eq_ignore_ascii_case(app) {
        return Err(bad("instance.app", format!("{body_app:?} differs from the application in the path, {app:?}")));
    }
    let host_name = i.str("hostName").unwrap_or_default();
    let ip = i.str("ipAddr").unwrap_or_default();
    let host = if ip.is_empty() { host_name.clone() } else { ip };
    if host.is_empty() {
        return Err(bad("instance.ipAddr", "missing (and no hostName either)"));
    }
    let instance_id = i.str("instanceId").filter(|s| !s.is_empty()).unwrap_or_else(|| host_name.clone());
    if instance_id.is_empty() {
        return Err(bad("instance.instanceId", "missing (and no hostName either)"));
    }
    let plain = port(i, "port")?;
    let secure = port(i, "securePort")?;
    let (chosen, other, is_secure) = match (plain, secure) {
        (Some((p, true)), s) => (p, s.map(|s| s.0), false),
        (p, Some((s, true))) => (s, p.map(|p| p.0), true),
        (Some((p, false)), s) => (p, s.map(|s| s.0), false),
        (None, _) => return Err(bad("instance.port", "missing")),
    };
    let status = match i.str("status").as_deref() {
        None | Some("UP") => v1::Status::Up,
        Some("DOWN") => v1::Status::Down,
        Some("STARTING") | Some("UNKNOWN") => v1::Status::Starting,
        Some("OUT_OF_SERVICE") => v1::Status::OutOfService,
        Some(other) => {
            return Err(bad(
                "instance.status",
                format!("{other:?} is not UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN"),
            ));
        }
    };
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    if let Some(Node::Map(fields)) = i.get("metadata") {
        for (k, v) in fields {
            if k.starts_with('@') || k.starts_with("eureka.") {
                continue; // Jackson's `@class`; our own keys are ours to set
            }
            let value = match v {
                Node::Text(s) => s.clone(),
                Node::Num(n) => n.to_string(),
                Node::Map(_) => return Err(bad(&format!("instance.metadata.{k}"), "must be a string")),
            };
            metadata.insert(k.clone(), value);
        }
    }
    let zone = metadata
        .get("zone")
        .cloned()
        .or_else(|| i.get("dataCenterInfo").and_then(|d| d.get("metadata")).and_then(|m| m.str("availability-zone")))
        .unwrap_or_default();
    let duration_secs = match i.get("leaseInfo").and_then(|l| l.str("durationInSecs")) {
        None => DEFAULT_DURATION_SECS,
        Some(d) => d
            .parse::<u64>()
            .ok()
            .filter(|d| *d > 0)
            .ok_or_else(|| bad("instance.leaseInfo.durationInSecs", format!("{d:?} is not a positive number")))?,
    };
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            metadata.insert(k.to_string(), v);
        }
    };
    put(keys::HOST_NAME, Some(host_name));
    put(keys::SECURE, is_secure.then(|| "true".to_string()));
    put(keys::OTHER_PORT, other.map(|p| p.to_string()));
    put(keys::VIP, i.str("vipAddress"));
    put(keys::SECURE_VIP, i.str("secureVipAddress"));
    put(keys::HOME_PAGE, i.str("homePageUrl"));
    put(keys::STATUS_PAGE, i.str("statusPageUrl"));
    put(keys::HEALTH_CHECK, i.str("healthCheckUrl"));
    put(keys::DURATION, Some(duration_secs.to_string()));
    put(keys::LAST_DIRTY, i.str("lastDirtyTimestamp"));
    Ok(Registration {
        instance: v1::Instance {
            namespace: namespace.into(),
            service: app.to_ascii_lowercase(),
            instance_id,
            host,
            port: chosen,
            metadata: metadata.into_iter().collect(),
            weight: None,
            zone,
            status: status as i32,
            principal: String::new(),
            status_override: None,
        },
        duration_secs,
    })
}

/// A port field: `{"$": 8080, "@enabled": "true"}`, `<port enabled="true">8080</port>`, or a bare number.
fn port(i: &Node, name: &str) -> Result<Option<(u32, bool)>, BadInput> {
    let Some(node) = i.get(name) else { return Ok(None) };
    let field = format!("instance.{name}");
    let (text, enabled) = match node {
        Node::Num(n) => (n.to_string(), true),
        Node::Text(s) => (s.clone(), true),
        Node::Map(_) => (
            node.str("$").ok_or_else(|| bad(&field, "has no number (\"$\")"))?,
            node.str("@enabled").is_none_or(|e| e == "true"),
        ),
    };
    let port = text
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|p| (1..=65_535).contains(p))
        .ok_or_else(|| bad(&field, format!("{text:?} is not a port (1 to 65535)")))?;
    Ok(Some((port, enabled)))
}

/// A status name as Eureka spells it.
pub fn status_name(s: v1::Status) -> &'static str {
    match s.effective() {
        v1::Status::Down => "DOWN",
        v1::Status::Starting => "STARTING",
        v1::Status::OutOfService => "OUT_OF_SERVICE",
        _ => "UP",
    }
}

/// Parses the `value` of a status override.
pub fn parse_status(value: &str) -> Option<v1::Status> {
    Some(match value {
        "UP" => v1::Status::Up,
        "DOWN" => v1::Status::Down,
        "STARTING" | "UNKNOWN" => v1::Status::Starting,
        "OUT_OF_SERVICE" => v1::Status::OutOfService,
        _ => return None,
    })
}

/// An instance as Eureka clients read it. `action` is the delta's
/// `actionType`; `written_ms` when its record was written (unknown: 0).
pub fn instance_node(i: &v1::Instance, action: &str, written_ms: u64) -> Node {
    let md = |k: &str| i.metadata.get(k).cloned().unwrap_or_default();
    let secure = md(keys::SECURE) == "true";
    let other: u32 = md(keys::OTHER_PORT).parse().unwrap_or(if secure { 80 } else { 443 });
    let (port, secure_port) = if secure { ((other, false), (i.port, true)) } else { ((i.port, true), (other, false)) };
    let port_node = |(p, on): (u32, bool)| {
        Node::Map(vec![("$".into(), Node::Num(u64::from(p))), ("@enabled".into(), Node::text(on.to_string()))])
    };
    let host_name = Some(md(keys::HOST_NAME)).filter(|h| !h.is_empty()).unwrap_or_else(|| i.host.clone());
    let vip = Some(md(keys::VIP)).filter(|v| !v.is_empty()).unwrap_or_else(|| i.service.clone());
    let svip = Some(md(keys::SECURE_VIP)).filter(|v| !v.is_empty()).unwrap_or_else(|| i.service.clone());
    let duration: u64 = md(keys::DURATION).parse().unwrap_or(DEFAULT_DURATION_SECS);
    let last_dirty = Some(md(keys::LAST_DIRTY)).filter(|v| !v.is_empty()).unwrap_or_else(|| written_ms.to_string());
    let overridden = i.status_override.as_ref().map_or("UNKNOWN", |o| status_name(o.status()));
    let mut metadata: Vec<(String, Node)> = i
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("eureka."))
        .map(|(k, v)| (k.clone(), Node::text(v.clone())))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    if !i.zone.is_empty() && !i.metadata.contains_key("zone") {
        metadata.push(("zone".into(), Node::text(i.zone.clone())));
    }
    if metadata.is_empty() {
        metadata.push(("@class".into(), Node::text("java.util.Collections$EmptyMap")));
    }
    let mut fields = vec![
        ("instanceId".into(), Node::text(i.instance_id.clone())),
        ("hostName".into(), Node::text(host_name)),
        ("app".into(), Node::text(i.service.to_ascii_uppercase())),
        ("ipAddr".into(), Node::text(i.host.clone())),
        ("status".into(), Node::text(status_name(i.status()))),
        ("overriddenStatus".into(), Node::text(overridden)),
        ("port".into(), port_node(port)),
        ("securePort".into(), port_node(secure_port)),
        ("countryId".into(), Node::Num(1)),
        (
            "dataCenterInfo".into(),
            Node::Map(vec![
                ("@class".into(), Node::text("com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo")),
                ("name".into(), Node::text("MyOwn")),
            ]),
        ),
        (
            "leaseInfo".into(),
            Node::Map(vec![
                ("renewalIntervalInSecs".into(), Node::Num(30)),
                ("durationInSecs".into(), Node::Num(duration)),
                ("registrationTimestamp".into(), Node::Num(written_ms)),
                ("lastRenewalTimestamp".into(), Node::Num(written_ms)),
                ("evictionTimestamp".into(), Node::Num(0)),
                ("serviceUpTimestamp".into(), Node::Num(written_ms)),
            ]),
        ),
        ("metadata".into(), Node::Map(metadata)),
    ];
    for (name, key) in
        [("homePageUrl", keys::HOME_PAGE), ("statusPageUrl", keys::STATUS_PAGE), ("healthCheckUrl", keys::HEALTH_CHECK)]
    {
        let v = md(key);
        if !v.is_empty() {
            fields.push((name.into(), Node::text(v)));
        }
    }
    fields.extend([
        ("vipAddress".into(), Node::text(vip)),
        ("secureVipAddress".into(), Node::text(svip)),
        ("isCoordinatingDiscoveryServer".into(), Node::text("false")),
        ("lastUpdatedTimestamp".into(), Node::text(written_ms.to_string())),
        ("lastDirtyTimestamp".into(), Node::text(last_dirty)),
        ("actionType".into(), Node::text(action)),
    ]);
    Node::Map(fields)
}

/// Eureka's reconcile hash code: `STATUS_count_` for each status, in
/// status-name order (a TreeMap in Eureka), e.g. `DOWN_1_UP_2_`.
pub fn hashcode<'a>(statuses: impl IntoIterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_default() += 1;
    }
    counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
}

/// `applications`: apps (name, instance nodes) with the delta version and hash code.
pub fn applications(version: u64, hashcode: &str, apps: Vec<(String, Vec<Node>)>) -> Node {
    let mut fields = vec![
        ("versions__delta".into(), Node::text(version.to_string())),
        ("apps__hashcode".into(), Node::text(hashcode)),
    ];
    fields.extend(apps.into_iter().map(|(name, instances)| ("application".to_string(), application(name, instances))));
    Node::Map(vec![("applications".into(), Node::Map(fields))])
}

pub fn application(name: String, instances: Vec<Node>) -> Node {
    let mut fields = vec![("name".to_string(), Node::text(name))];
    fields.extend(instances.into_iter().map(|i| ("instance".to_string(), i)));
    Node::Map(fields)
}

// ------------------------------------------------------------------ writing

/// As Eureka's JSON: repeated `application` and `instance` fields become
/// arrays (always arrays, as Spring's client expects).
pub fn to_json(node: &Node) -> serde_json::Value {
    match node {
        Node::Text(s) => serde_json::Value::String(s.clone()),
        Node::Num(n) => serde_json::Value::from(*n),
        Node::Map(fields) => {
            let mut out = serde_json::Map::new();
            for (k, v) in fields {
                if k == "application" || k == "instance" && !is_document(fields) {
                    let entry = out.entry(k.clone()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
                    if let serde_json::Value::Array(items) = entry {
                        items.push(to_json(v));
                    }
                } else {
                    out.insert(k.clone(), to_json(v));
                }
            }
            serde_json::Value::Object(out)
        }
    }
}

/// `{"instance": {...}}` alone: a document with one instance, not a list.
fn is_document(fields: &[(String, Node)]) -> bool {
    fields.len() == 1
}

/// As Eureka's XML: `@name` fields are attributes, `$` the text; the keys
/// of a `metadata` element are coded as XML names ([`xml_name`]).
pub fn to_xml(node: &Node) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n");
    if let Node::Map(fields) = node {
        for (k, v) in fields {
            write_xml(&mut out, k, v);
        }
    }
    out
}

fn write_xml(out: &mut String, name: &str, node: &Node) {
    if name.is_empty() {
        return; // no XML name holds it: a metadata entry with an empty key
    }
    match node {
        Node::Text(s) => {
            out.push_str(&format!("<{name}>{}</{name}>", escape(s)));
        }
        Node::Num(n) => out.push_str(&format!("<{name}>{n}</{name}>")),
        Node::Map(fields) => {
            out.push('<');
            out.push_str(name);
            for (k, v) in fields {
                if let (Some(attr), Node::Text(s)) = (k.strip_prefix('@'), v) {
                    out.push_str(&format!(" {attr}=\"{}\"", escape(s)));
                }
            }
            out.push('>');
            for (k, v) in fields {
                if k.starts_with('@') {
                    continue;
                }
                if k == "$" {
                    match v {
                        Node::Text(s) => out.push_str(&escape(s)),
                        Node::Num(n) => out.push_str(&n.to_string()),
                        Node::Map(_) => {}
                    }
                } else if name == "metadata" {
                    write_xml(out, &xml_name(k), v);
                } else {
                    write_xml(out, k, v);
                }
            }
            out.push_str(&format!("</{name}>"));
        }
    }
}

/// Text as XML character data or an attribute value. Tabs, line feeds and
/// carriage returns are character references, so a parser gives them back
/// as they were (it would turn `\r\n` into `\n`, and in an attribute any
/// of them into a space). A character XML 1.0 cannot carry at all (other
/// controls, U+FFFE, U+FFFF) becomes U+FFFD: one such metadata value would
/// otherwise make the whole document unreadable to a strict parser.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance as Eureka's Java client writes it in JSON (the shape of
    /// Netflix/eureka's codec test data).
    const JAVA_JSON: &str = r#"{"instance":{"instanceId":"host1:orders:8080","hostName":"host1.example.com",
        "app":"ORDERS","ipAddr":"10.0.0.5","status":"UP","overriddenStatus":"UNKNOWN",
        "port":{"$":8080,"@enabled":"true"},"securePort":{"$":8443,"@enabled":"false"},"countryId":1,
        "dataCenterInfo":{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"},
        "leaseInfo":{"renewalIntervalInSecs":30,"durationInSecs":90,"registrationTimestamp":0,
        "lastRenewalTimestamp":0,"evictionTimestamp":0,"serviceUpTimestamp":0},
        "metadata":{"@class":"java.util.Collections$EmptyMap","zone":"eu-1","version":"3"},
        "homePageUrl":"http://host1:8080/","statusPageUrl":"http://host1:8080/info",
        "healthCheckUrl":"http://host1:8080/health","vipAddress":"orders","secureVipAddress":"orders",
        "isCoordinatingDiscoveryServer":"false","lastUpdatedTimestamp":"1700000000000",
        "lastDirtyTimestamp":"1700000000000"}}"#;

    /// The same in XML, as the Java client's XStream codec writes it.
    const JAVA_XML: &str = r#"<instance><instanceId>host1:orders:8080</instanceId>
        <hostName>host1.example.com</hostName><app>ORDERS</app><ipAddr>10.0.0.5</ipAddr>
        <status>UP</status><overriddenstatus>UNKNOWN</overriddenstatus>
        <port enabled="true">8080</port><securePort enabled="false">8443</securePort>
        <countryId>1</countryId>
        <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
        <leaseInfo><renewalIntervalInSecs>30</renewalIntervalInSecs><durationInSecs>90</durationInSecs></leaseInfo>
        <metadata><zone>eu-1</zone><version>3</version></metadata>
        <homePageUrl>http://host1:8080/</homePageUrl><statusPageUrl>http://host1:8080/info</statusPageUrl>
        <healthCheckUrl>http://host1:8080/health</healthCheckUrl><vipAddress>orders</vipAddress>
        <secureVipAddress>orders</secureVipAddress><isCoordinatingDiscoveryServer>false</isCoordinatingDiscoveryServer>
        <lastUpdatedTimestamp>1700000000000</lastUpdatedTimestamp><lastDirtyTimestamp>1700000000000</lastDirtyTimestamp>
        </instance>"#;

    #[test]
    fn the_java_clients_json_and_xml_read_the_same() {
        let json = registration(&parse(JAVA_JSON.as_bytes()).expect("json"), "default", "orders").expect("reg");
        let xml = registration(&parse(JAVA_XML.as_bytes()).expect("xml"), "default", "ORDERS").expect("reg");
        assert_eq!(json, xml);
        let i = &json.instance;
        assert_eq!(
            (i.service.as_str(), i.instance_id.as_str(), i.host.as_str(), i.port),
            ("orders", "host1:orders:8080", "10.0.0.5", 8080)
        );
        assert_eq!((i.zone.as_str(), i.status()), ("eu-1", v1::Status::Up));
        assert_eq!(i.metadata.get("version").map(String::as_str), Some("3"));
        assert_eq!(i.metadata.get(keys::OTHER_PORT).map(String::as_str), Some("8443"));
        assert_eq!(json.duration_secs, 90);
    }

    /// Variations clients write: `$` as a string, `@enabled` as a JSON
    /// boolean, a disabled port with the secure one enabled, no instanceId
    /// (older clients: the host name is the id), STARTING.
    #[test]
    fn the_variations_clients_write_are_read() {
        let doc = r#"{"instance":{"hostName":"neo4j.dev.example","app":"NEO4J","ipAddr":"192.168.123.10",
            "status":"STARTING","overriddenstatus":"UNKNOWN","port":{"@enabled":false,"$":"7474"},
            "securePort":{"@enabled":"true","$":"7473"},"countryId":1,
            "dataCenterInfo":{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn",
            "metadata":{"availability-zone":"us-east-1a"}},
            "leaseInfo":{"renewalIntervalInSecs":30,"durationInSecs":"30"},
            "metadata":{"@class":"java.util.Collections$EmptyMap"},"isCoordinatingDiscoveryServer":false}}"#;
        let reg = registration(&parse(doc.as_bytes()).expect("json"), "default", "neo4j").expect("reg");
        let i = &reg.instance;
        assert_eq!((i.instance_id.as_str(), i.port, i.status()), ("neo4j.dev.example", 7473, v1::Status::Starting));
        assert_eq!(i.zone, "us-east-1a");
        assert_eq!(i.metadata.get(keys::SECURE).map(String::as_str), Some("true"));
        assert_eq!(i.metadata.get(keys::OTHER_PORT).map(String::as_str), Some("7474"));
        assert_eq!(reg.duration_secs, 30);
        // Shown back: the secure port enabled, the plain one not.
        let shown = to_xml(&Node::Map(vec![("instance".into(), instance_node(i, "ADDED", 0))]));
        assert!(shown.contains("<port enabled=\"false\">7474</port>"), "{shown}");
        assert!(shown.contains("<securePort enabled=\"true\">7473</securePort>"), "{shown}");
    }

    #[test]
    fn what_is_written_reads_back() {
        let reg = registration(&parse(JAVA_JSON.as_bytes()).expect("json"), "default", "orders").expect("reg");
        let node = Node::Map(vec![("instance".into(), instance_node(&reg.instance, "ADDED", 5))]);
        for text in [to_json(&node).to_string(), to_xml(&node)] {
            let again = registration(&parse(text.as_bytes()).expect("parses"), "default", "orders").expect("reg");
            assert_eq!(again, reg, "{text}");
        }
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "body"),
            ("nonsense", "body"),
            ("{\"instance\": ", "body"),
            ("<instance><port>1</instance>", "body"),
            ("{}", "instance"),
            ("{\"instance\": {\"app\": \"orders\", \"port\": 80}}", "instance.ipAddr"),
            ("{\"instance\": {\"ipAddr\": \"10.0.0.1\", \"hostName\": \"h\"}}", "instance.port"),
            ("{\"instance\": {\"ipAddr\": \"10.0.0.1\", \"hostName\": \"h\", \"port\": 70000}}", "instance.port"),
            (
                "{\"instance\": {\"ipAddr\": \"1.1.1.1\", \"hostName\": \"h\", \"port\": 1, \"status\": \"SLEEPY\"}}",
                "instance.status",
            ),
            (
                "{\"instance\": {\"ipAddr\": \"1.1.1.1\", \"hostName\": \"h\", \"port\": 1, \"app\": \"other\"}}",
                "instance.app",
            ),
            (
                "{\"instance\": {\"ipAddr\": \"1.1.1.1\", \"hostName\": \"h\", \"port\": 1, \"leaseInfo\": {\"durationInSecs\": -1}}}",
                "instance.leaseInfo.durationInSecs",
            ),
        ];
        for (body, field) in cases {
            let e = parse(body.as_bytes()).and_then(|d| registration(&d, "default", "orders")).expect_err(body);
            assert_eq!(e.field, *field, "{body}: {e}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert_eq!(parse(deep.as_bytes()).expect_err("deep").field, "body");
    }

    /// A strict XML 1.0 parser's verdict, as py-eureka-client's ElementTree
    /// (expat) or a Java client's DOM parser gives it.
    fn well_formed(xml: &str) -> Result<(), String> {
        roxmltree::Document::parse(xml).map(|_| ()).map_err(|e| format!("{e}: {xml}"))
    }

    #[test]
    fn metadata_keys_are_coded_as_eurekas_xml_codes_them() {
        for (key, name) in [
            ("zone", "zone"),
            ("my_key", "my__key"),
            ("a$b", "a_-b"),
            ("app.kubernetes.io/name", "app.kubernetes.io_.002fname"),
            ("1st", "_.0031st"),
            ("-x", "_.002dx"),
            ("x-1.2", "x-1.2"),
            ("a:b", "a_.003ab"),
            ("é", "é"),
            ("\u{1F600}", "_.d83d_.de00"),
        ] {
            assert_eq!(xml_name(key), name, "{key}");
            assert_eq!(from_xml_name(name), key, "{name}");
            well_formed(&format!("<{name}/>")).expect("a name");
        }
        // A code cut short is read as it is; a lone surrogate is U+FFFD.
        for name in ["_.", "_.zz12", "_.12", "_", "a_", "x_.00"] {
            assert_eq!(from_xml_name(name), name, "{name}");
        }
        assert_eq!(from_xml_name("_.d83d"), "\u{FFFD}");
        assert!(
            well_formed("<m><app.kubernetes.io/name>x</app.kubernetes.io/name></m>").is_err(),
            "the check can fail"
        );
    }

    /// An instance as the registry holds it, with `metadata`.
    fn held(metadata: BTreeMap<String, String>) -> v1::Instance {
        v1::Instance {
            namespace: "default".into(),
            service: "orders".into(),
            instance_id: "o-1".into(),
            host: "10.0.0.1".into(),
            port: 8080,
            metadata: metadata.into_iter().collect(),
            status: v1::Status::Up as i32,
            ..Default::default()
        }
    }

    /// What a client reads back of `i`'s own metadata (not the `eureka.` keys).
    fn metadata_read_back(text: &str) -> BTreeMap<String, String> {
        let reg = registration(&parse(text.as_bytes()).expect("parses"), "default", "orders").expect("registers");
        reg.instance.metadata.into_iter().filter(|(k, _)| !k.starts_with("eureka.")).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 256, ..Default::default() })]

        /// Whatever the metadata (the API's keys and any value), the XML
        /// shown to Eureka clients is well formed, and the keys and values
        /// read back are those held; JSON gives everything back exactly.
        #[test]
        fn shown_metadata_reads_back(
            metadata in proptest::collection::btree_map("[A-Za-z0-9._/$-]{1,12}|\\PC{1,6}", proptest::prelude::any::<String>(), 0..6)
        ) {
            let metadata: BTreeMap<String, String> = metadata
                .into_iter()
                .filter(|(k, _)| !k.starts_with('@') && !k.starts_with("eureka.") && k != "$")
                .collect();
            let i = held(metadata.clone());
            let node = Node::Map(vec![("instance".into(), instance_node(&i, "ADDED", 0))]);
            let xml = to_xml(&node);
            if let Err(e) = well_formed(&xml) {
                proptest::prop_assert!(false, "{}", e);
            }
            // XML cannot carry control characters (other than tab, line
            // feed and carriage return), U+FFFE or U+FFFF: they read U+FFFD.
            let in_xml: BTreeMap<String, String> = metadata
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .chars()
                        .map(|c| if (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}' { '\u{FFFD}' } else { c })
                        .collect();
                    (k.clone(), v)
                })
                .collect();
            proptest::prop_assert_eq!(metadata_read_back(&xml), in_xml);
            proptest::prop_assert_eq!(metadata_read_back(&to_json(&node).to_string()), metadata);
        }

        /// Any bytes: a typed error or a registration, never a panic.
        #[test]
        fn any_body_is_read_or_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(doc) = parse(&body) {
                let _ = registration(&doc, "default", "orders");
            }
        }

        /// XML-like text (tags, attributes, references, CDATA in any order)
        /// and JSON documents built of Eureka's field names reach deeper:
        /// still a typed error or a registration whose fields hold.
        #[test]
        fn eureka_shaped_bodies_are_read_or_refused(
            xml in "(<(instance|port|metadata|leaseInfo|a_.002f|_-)( enabled=\"(true|x)\")?/?>|</(instance|port|metadata|leaseInfo|a_.002f|_-)>|[^<&]{0,4}|&(#x?[0-9a-f]{1,6}|amp|lt|bogus);|<!\\[CDATA\\[[^\\]]{0,3}\\]\\]>){0,24}",
            json in json_instance(),
        ) {
            for body in [xml.clone(), format!("<instance>{xml}</instance>"), json.to_string()] {
                let Ok(doc) = parse(body.as_bytes()) else { continue };
                let Ok(reg) = registration(&doc, "default", "orders") else { continue };
                let i = reg.instance;
                proptest::prop_assert!(!i.host.is_empty() && !i.instance_id.is_empty(), "{}", body);
                proptest::prop_assert!((1..=65_535).contains(&i.port), "{}", body);
                proptest::prop_assert!(reg.duration_secs > 0, "{}", body);
            }
        }
    }

    /// `{"instance": {...}}` of Eureka's field names, with values of any shape.
    fn json_instance() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (0u64..70_000).prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
            prop_oneof![Just("UP"), Just("SLEEPY"), Just("10.0.0.1"), Just("8080"), Just("true")]
                .prop_map(serde_json::Value::from),
        ];
        let field = prop_oneof![
            Just("instanceId"),
            Just("hostName"),
            Just("app"),
            Just("ipAddr"),
            Just("status"),
            Just("port"),
            Just("securePort"),
            Just("$"),
            Just("@enabled"),
            Just("metadata"),
            Just("leaseInfo"),
            Just("durationInSecs"),
            Just("dataCenterInfo"),
            Just("availability-zone"),
            Just("zone"),
            Just("eureka.secure"),
        ];
        let value = leaf.prop_recursive(3, 24, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec((field.clone(), inner), 0..6).prop_map(|fields| serde_json::Value::Object(
                    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        });
        value.prop_map(|v| serde_json::json!({ "instance": v }))
    }

    #[test]
    fn the_hashcode_is_eurekas() {
        assert_eq!(hashcode(["UP", "DOWN", "UP"]), "DOWN_1_UP_2_");
        assert_eq!(hashcode([]), "");
    }
}
