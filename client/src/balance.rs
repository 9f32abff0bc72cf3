//! Choosing instances: [`InstanceFilter`] (status, zone, metadata), a weighted
//! pick, and a tonic [`Channel`] that balances over a watched service's live
//! instances and follows every change.

use std::collections::HashMap;

use registry_proto::v1;
use tokio::sync::mpsc;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::consumer::ServiceWatch;
use crate::view::ServiceView;

/// Which instances a consumer wants: by status (UP only by default), zone and
/// metadata. Every condition set must hold.
///
/// ```
/// use registry_client::InstanceFilter;
/// use registry_client::v1::{Instance, Status};
///
/// let filter = InstanceFilter::up().zone("eu-1").metadata("version", "2");
/// let mut i = Instance { zone: "eu-1".into(), ..Default::default() };
/// i.metadata.insert("version".into(), "2".into());
/// assert!(filter.matches(&i)); // an unset status reads as UP
/// i.set_status(Status::OutOfService);
/// assert!(!filter.matches(&i));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceFilter {
    statuses: Vec<v1::Status>,
    zone: Option<String>,
    metadata: Vec<(String, String)>,
}

impl Default for InstanceFilter {
    fn default() -> Self {
        Self::up()
    }
}

impl InstanceFilter {
    /// Instances whose status is UP (or unset).
    ///
    /// ```
    /// use registry_client::InstanceFilter;
    /// assert_eq!(InstanceFilter::up(), InstanceFilter::default());
    /// ```
    pub fn up() -> Self {
        Self { statuses: vec![v1::Status::Up], zone: None, metadata: Vec::new() }
    }

    /// Instances in any status.
    ///
    /// ```
    /// use registry_client::InstanceFilter;
    /// use registry_client::v1::{Instance, Status};
    /// let mut i = Instance::default();
    /// i.set_status(Status::Down);
    /// assert!(InstanceFilter::any_status().matches(&i));
    /// ```
    pub fn any_status() -> Self {
        Self { statuses: Vec::new(), zone: None, metadata: Vec::new() }
    }

    /// Also accepts `status`.
    ///
    /// ```
    /// use registry_client::InstanceFilter;
    /// use registry_client::v1::{Instance, Status};
    /// let mut i = Instance::default();
    /// i.set_status(Status::Starting);
    /// assert!(InstanceFilter::up().or_status(Status::Starting).matches(&i));
    /// ```
    pub fn or_status(mut self, status: v1::Status) -> Self {
        self.statuses.push(status);
        self
    }

    /// Only instances in `zone`.
    ///
    /// ```
    /// use registry_client::InstanceFilter;
    /// use registry_client::v1::Instance;
    /// assert!(!InstanceFilter::up().zone("eu-1").matches(&Instance::default()));
    /// ```
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Only instances whose metadata has `key` = `value`.
    ///
    /// ```
    /// use registry_client::InstanceFilter;
    /// use registry_client::v1::Instance;
    /// assert!(!InstanceFilter::up().metadata("canary", "true").matches(&Instance::default()));
    /// ```
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Whether `instance` passes.
    ///
    /// ```
    /// use registry_client::InstanceFilter;
    /// use registry_client::v1::Instance;
    /// assert!(InstanceFilter::up().matches(&Instance::default()));
    /// ```
    pub fn matches(&self, instance: &v1::Instance) -> bool {
        let status = instance.status().effective();
        (self.statuses.is_empty() || self.statuses.contains(&status))
            && self.zone.as_ref().is_none_or(|z| *z == instance.zone)
            && self.metadata.iter().all(|(k, v)| instance.metadata.get(k) == Some(v))
    }
}

/// The weight the registry gives an instance: its own, or 100 when unset.
///
/// ```
/// use registry_client::weight_of;
/// use registry_client::v1::Instance;
/// assert_eq!(weight_of(&Instance::default()), 100);
/// assert_eq!(weight_of(&Instance { weight: Some(5), ..Default::default() }), 5);
/// ```
pub fn weight_of(instance: &v1::Instance) -> u64 {
    u64::from(instance.weight.unwrap_or(100))
}

/// Picks one instance with probability proportional to its weight, given a
/// uniform `roll` (any `u64`; pass a random one). Weight 0 is never picked.
///
/// tonic's balancing channel ignores weights (it sends to the less loaded of two
/// random instances); use this where weights must count.
///
/// ```
/// use registry_client::choose_weighted;
/// use registry_client::v1::Instance;
///
/// let a = Instance { instance_id: "a".into(), weight: Some(1), ..Default::default() };
/// let b = Instance { instance_id: "b".into(), weight: Some(3), ..Default::default() };
/// let off = Instance { instance_id: "off".into(), weight: Some(0), ..Default::default() };
/// let all = [a, off, b];
/// assert_eq!(choose_weighted(&all, 0).map(|i| i.instance_id.as_str()), Some("a"));
/// assert_eq!(choose_weighted(&all, 1).map(|i| i.instance_id.as_str()), Some("b"));
/// assert_eq!(choose_weighted(&all, 3).map(|i| i.instance_id.as_str()), Some("b"));
/// assert_eq!(choose_weighted(&all, 4).map(|i| i.instance_id.as_str()), Some("a"));
/// ```
pub fn choose_weighted<'a>(
    instances: impl IntoIterator<Item = &'a v1::Instance>,
    roll: u64,
) -> Option<&'a v1::Instance> {
    let candidates: Vec<&v1::Instance> = instances.into_iter().filter(|i| weight_of(i) > 0).collect();
    let total: u64 = candidates.iter().map(|i| weight_of(i)).sum();
    if total == 0 {
        return None;
    }
    let mut point = roll % total;
    for i in candidates {
        let w = weight_of(i);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

impl ServiceView {
    /// A weighted random pick among the instances that pass `filter`.
    ///
    /// ```
    /// use registry_client::{InstanceFilter, ServiceView};
    /// assert!(ServiceView::new("default", "s").pick(&InstanceFilter::up()).is_none());
    /// ```
    pub fn pick(&self, filter: &InstanceFilter) -> Option<&v1::Instance> {
        choose_weighted(self.instances.values().filter(|i| filter.matches(i)), rand::random())
    }
}

/// `http://host:port`, the endpoint of a plaintext gRPC instance.
///
/// ```
/// use registry_client::plaintext_endpoint;
/// use registry_client::v1::Instance;
/// let i = Instance { host: "10.0.0.7".into(), port: 50051, ..Default::default() };
/// assert_eq!(plaintext_endpoint(&i).unwrap().uri().to_string(), "http://10.0.0.7:50051/");
/// ```
pub fn plaintext_endpoint(instance: &v1::Instance) -> Option<Endpoint> {
    let host = if instance.host.contains(':') { format!("[{}]", instance.host) } else { instance.host.clone() };
    Endpoint::from_shared(format!("http://{host}:{}", instance.port)).ok()
}

/// A tonic channel that load-balances over the instances of `watch` that pass
/// `filter`, as plaintext `http://host:port` endpoints.
///
/// The channel follows the view: instances that come, leave or stop passing the
/// filter (e.g. OUT_OF_SERVICE) are added to or taken out of the balancer. A
/// stale view keeps its last endpoints. The channel keeps the watch alive; its
/// background task ends when every clone of the channel is dropped.
///
/// ```no_run
/// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
/// use registry_client::{InstanceFilter, balance_channel};
///
/// let greeters = client.watch("greeter").await?;
/// let channel = balance_channel(&greeters, InstanceFilter::up().zone("eu-1"));
/// // let mut client = GreeterClient::new(channel);
/// # Ok(()) }
/// ```
pub fn balance_channel(watch: &ServiceWatch, filter: InstanceFilter) -> Channel {
    balance_channel_with(watch, filter, plaintext_endpoint)
}

/// Like [`balance_channel`], with the endpoint of each instance built by
/// `endpoint` (TLS, timeouts, a port from metadata...). Instances for which it
/// returns `None` are skipped.
///
/// ```no_run
/// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
/// use std::time::Duration;
/// use registry_client::{InstanceFilter, balance_channel_with, plaintext_endpoint};
///
/// let greeters = client.watch("greeter").await?;
/// let channel = balance_channel_with(&greeters, InstanceFilter::up(), |i| {
///     Some(plaintext_endpoint(i)?.timeout(Duration::from_secs(2)))
/// });
/// # Ok(()) }
/// ```
pub fn balance_channel_with<F>(watch: &ServiceWatch, filter: InstanceFilter, endpoint: F) -> Channel
where
    F: Fn(&v1::Instance) -> Option<Endpoint> + Send + 'static,
{
    let (channel, tx) = Channel::balance_channel::<String>(64);
    tokio::spawn(follow(watch.clone(), filter, endpoint, tx));
    channel
}

/// What turns the balancer's set (`current`: id -> address) into `wanted`:
/// removals for instances gone, inserts for new ones and for those whose
/// address changed. Other changes (weight, metadata) keep the connection.
fn balancer_changes<E>(
    current: &mut HashMap<String, String>,
    wanted: HashMap<String, (String, E)>,
) -> Vec<Change<String, E>> {
    let mut changes: Vec<Change<String, E>> = Vec::new();
    current.retain(|id, _| {
        let keep = wanted.contains_key(id);
        if !keep {
            changes.push(Change::Remove(id.clone()));
        }
        keep
    });
    for (id, (addr, ep)) in wanted {
        if current.get(&id) != Some(&addr) {
            current.insert(id.clone(), addr);
            changes.push(Change::Insert(id, ep));
        }
    }
    changes
}

/// Keeps the balancer's endpoint set equal to the filtered view.
async fn follow<F>(watch: ServiceWatch, filter: InstanceFilter, endpoint: F, tx: mpsc::Sender<Change<String, Endpoint>>)
where
    F: Fn(&v1::Instance) -> Option<Endpoint>,
{
    // Holding the watch keeps the view alive as long as the channel is.
    let mut views = watch.views();
    // instance id -> address it was inserted with
    let mut current: HashMap<String, String> = HashMap::new();
    loop {
        let wanted: HashMap<String, (String, Endpoint)> = {
            let view = views.borrow_and_update();
            view.matching(&filter)
                .filter_map(|i| Some((i.instance_id.clone(), (format!("{}:{}", i.host, i.port), endpoint(i)?))))
                .collect()
        };
        for change in balancer_changes(&mut current, wanted) {
            if tx.send(change).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(entries: &[(&str, &str)]) -> HashMap<String, (String, ())> {
        entries.iter().map(|(id, addr)| (id.to_string(), (addr.to_string(), ()))).collect()
    }

    fn summary(changes: Vec<Change<String, ()>>) -> Vec<String> {
        let mut s: Vec<String> = changes
            .into_iter()
            .map(|c| match c {
                Change::Insert(id, ()) => format!("+{id}"),
                Change::Remove(id) => format!("-{id}"),
            })
            .collect();
        s.sort();
        s
    }

    #[test]
    fn the_balancer_gets_only_what_changed() {
        let mut current = HashMap::new();
        let first = balancer_changes(&mut current, wanted(&[("a", "h:1"), ("b", "h:2")]));
        assert_eq!(summary(first), ["+a", "+b"]);
        assert!(balancer_changes(&mut current, wanted(&[("a", "h:1"), ("b", "h:2")])).is_empty());
        let moved = balancer_changes(&mut current, wanted(&[("a", "h:1"), ("b", "h:9"), ("c", "h:3")]));
        assert_eq!(summary(moved), ["+b", "+c"]);
        let gone = balancer_changes(&mut current, wanted(&[("c", "h:3")]));
        assert_eq!(summary(gone), ["-a", "-b"]);
        assert_eq!(current.len(), 1);
    }
}
