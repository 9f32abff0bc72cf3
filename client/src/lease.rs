//! Leases: one instance registered with the unary `RegisterInstance` under a
//! TTL and kept alive by `Renew`, for processes that cannot hold a stream.
//!
//! A lease lives on the node that granted it. Renewals go to that node's
//! endpoint; when it is unreachable, or answers NOT_FOUND (a load balancer sent
//! the renewal to another node, or the node restarted and forgot the lease), the
//! instance is registered again wherever a node answers. The new copy is newer,
//! so it takes over on every node, and the old lease expires unseen.

use std::sync::Arc;
use std::time::Duration;

use registry_proto::v1;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{Client, Inner, registry_client};
use crate::error::{Error, Result};
use crate::provider::normalize;

/// Where a lease is held.
///
/// ```no_run
/// # async fn demo(lease: registry_client::Lease) {
/// let state = lease.state().borrow().clone();
/// println!("lease {} on {}, TTL {:?}", state.lease_id, state.node_id, state.ttl);
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id the granting node gave.
    pub lease_id: String,
    /// The node that granted it.
    pub node_id: String,
    /// Its TTL as the node granted it.
    pub ttl: Duration,
    /// Registrations so far (1 after `register_lease`; each re-registration adds one).
    pub registrations: u64,
}

/// One instance under a renewed TTL lease. Dropping it stops the renewals and
/// deregisters the instance; [`Lease::deregister`] does the same and waits.
///
/// ```no_run
/// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
/// use std::time::Duration;
/// use registry_client::v1::Instance;
///
/// let me = Instance { service: "batch".into(), host: "10.0.0.9".into(), port: 9000, ..Default::default() };
/// let lease = client.register_lease(me, Duration::from_secs(30)).await?;
/// println!("lease {} on {}", lease.state().borrow().lease_id, lease.state().borrow().node_id);
/// lease.deregister().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lease {
    state: watch::Receiver<LeaseState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Client {
    /// Registers `instance` under a lease of `ttl` (zero: the node's default)
    /// and renews it in the background, three times per TTL.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// use std::time::Duration;
    /// let me = registry_client::v1::Instance { service: "batch".into(), host: "10.0.0.9".into(), port: 9000, ..Default::default() };
    /// let lease = client.register_lease(me, Duration::ZERO).await?;
    /// # Ok(()) }
    /// ```
    pub async fn register_lease(&self, instance: v1::Instance, ttl: Duration) -> Result<Lease> {
        let instance = normalize(instance, &self.inner.config.namespace);
        let ttl_ms = ttl.as_millis().min(u128::from(u32::MAX)) as u32;
        let mut task =
            LeaseTask { client: self.inner.clone(), instance, ttl_ms, endpoint: 0, state: LeaseState::default() };
        task.register(None).await?;
        let (tx, state) = watch::channel(task.state.clone());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(task.run(tx, stop.clone()));
        Ok(Lease { state, stop, task: Some(handle) })
    }
}

impl Lease {
    /// Where the lease is now.
    ///
    /// ```no_run
    /// # fn demo(lease: registry_client::Lease) {
    /// println!("held by {}", lease.state().borrow().node_id);
    /// # }
    /// ```
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Stops renewing and deregisters the instance; waits until it is done.
    ///
    /// ```no_run
    /// # async fn demo(lease: registry_client::Lease) {
    /// lease.deregister().await;
    /// # }
    /// ```
    pub async fn deregister(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct LeaseTask {
    client: Arc<Inner>,
    instance: v1::Instance,
    ttl_ms: u32,
    /// The endpoint of the node holding the lease.
    endpoint: usize,
    state: LeaseState,
}

impl LeaseTask {
    /// Registers the instance on the first node that answers (`avoid` last).
    async fn register(&mut self, avoid: Option<usize>) -> Result<()> {
        let req = v1::RegisterInstanceRequest {
            instance: Some(self.instance.clone()),
            ttl_ms: self.ttl_ms,
            lease_id: String::new(),
        };
        let (i, r) = self
            .client
            .call_on(self.client.order(avoid), |c| {
                let req = req.clone();
                async move { registry_client(c).register_instance(req).await }
            })
            .await?;
        self.endpoint = i;
        self.state = LeaseState {
            lease_id: r.lease_id,
            node_id: r.node_id,
            ttl: Duration::from_millis(u64::from(r.ttl_ms)),
            registrations: self.state.registrations + 1,
        };
        Ok(())
    }

    async fn run(mut self, tx: watch::Sender<LeaseState>, stop: CancellationToken) {
        loop {
            let every = (self.state.ttl / 3).max(Duration::from_millis(10));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sleep(every) => {}
            }
            let req = v1::RenewRequest { lease_id: self.state.lease_id.clone() };
            let renewed = self
                .client
                .call_on(vec![self.endpoint], |c| {
                    let req = req.clone();
                    async move { registry_client(c).renew(req).await }
                })
                .await;
            let avoid = match renewed {
                Ok(_) => continue,
                // Another node, or a restarted one: the lease is unknown there.
                Err(Error::NotFound(_)) => None,
                Err(Error::Unavailable { .. }) => Some(self.endpoint),
                Err(e) => {
                    warn!(lease = %self.state.lease_id, error = %e, "lease renewal refused");
                    continue;
                }
            };
            match self.register(avoid).await {
                Ok(()) => {
                    info!(node = %self.state.node_id, lease = %self.state.lease_id, "lease lost; instance registered again");
                    tx.send_replace(self.state.clone());
                }
                Err(e) => warn!(error = %e, "lease lost and no node takes the instance yet; retrying"),
            }
        }
        let key = v1::InstanceKey {
            namespace: self.instance.namespace.clone(),
            service: self.instance.service.clone(),
            instance_id: self.instance.instance_id.clone(),
        };
        let req = v1::DeregisterRequest { key: Some(key) };
        let done = self
            .client
            .call(|c| {
                let req = req.clone();
                async move { registry_client(c).deregister(req).await }
            })
            .await;
        if let Err(e) = done {
            warn!(error = %e, "could not deregister the leased instance; it expires with its lease");
        }
    }
}
