//! Consumers: [`ServiceWatch`], a live, cached view of one service kept current
//! by a `Subscribe` stream that follows the cluster from node to node.
//!
//! The task behind a watch owns the stream. It applies the snapshot and the
//! deltas to a [`ServiceView`], resubscribes on a revision gap, and when its node
//! goes away it marks the view stale (never empties it), moves to another node
//! with jittered backoff, and on the new snapshot emits only what really changed.
//! A node that asks the stream to move (it is shutting down, or holds more than
//! its share) gets make-before-break: the new stream is open before the old one
//! closes, and the view never turns stale.

use std::sync::Arc;

use registry_proto::v1::{self, subscribe_response::Kind as Push};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::{Duration, Instant, sleep, sleep_until, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Streaming;
use tracing::{debug, info, warn};

use crate::auth::NodeChannel;
use crate::client::{Client, Inner, registry_client};
use crate::error::{Error, Result, describe};
use crate::view::{InstanceChange, ServiceView};

/// What happened to a watched service, in order.
///
/// ```no_run
/// # async fn demo(watch: registry_client::ServiceWatch) {
/// use registry_client::{InstanceChange, WatchEvent};
/// let mut events = watch.events();
/// while let Ok(event) = events.recv().await {
///     match event {
///         WatchEvent::Changed(InstanceChange::Removed(i)) => println!("{} left", i.instance_id),
///         WatchEvent::Changed(change) => println!("{} came or changed", change.instance().instance_id),
///         WatchEvent::Disconnected { reason } => println!("serving the last good view: {reason}"),
///         WatchEvent::Synced { endpoint } => println!("live again from {endpoint}"),
///     }
/// }
/// # }
/// ```
// Events are few and short-lived (a broadcast ring of them per watch); boxing
// the change would cost every receiver an allocation to save ~200 bytes a slot.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// An instance came, changed or went.
    Changed(InstanceChange),
    /// The stream to the serving node broke; the view is kept and marked stale.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// A node streams the view again (after a snapshot that was merged in).
    Synced {
        /// The endpoint now serving the view.
        endpoint: String,
    },
}

/// A live view of one service. Cheap to clone; the stream behind it stops when
/// the last clone is dropped.
///
/// ```no_run
/// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
/// use registry_client::{InstanceFilter, WatchEvent};
///
/// let orders = client.watch("orders").await?;
/// let view = orders.current();
/// println!("{} instances, stale: {}", view.instances.len(), view.stale);
/// let mut events = orders.events();
/// loop {
///     match events.recv().await {
///         Ok(event) => println!("{event:?}"),
///         // Fell more than `ClientConfig::event_buffer` behind: the events
///         // are gone, the view is not.
///         Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
///             println!("{n} events missed; now {} instances", orders.current().instances.len());
///         }
///         Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ServiceWatch {
    view: watch::Receiver<Arc<ServiceView>>,
    events: broadcast::Sender<WatchEvent>,
    _stop: Arc<DropGuard>,
}

impl ServiceWatch {
    /// The view now.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let n = client.watch("orders").await?.current().instances.len();
    /// # Ok(()) }
    /// ```
    pub fn current(&self) -> Arc<ServiceView> {
        self.view.borrow().clone()
    }

    /// A receiver of every new view (`tokio::sync::watch`): intermediate views
    /// may be skipped, the latest never is.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let mut views = client.watch("orders").await?.views();
    /// while views.changed().await.is_ok() {
    ///     println!("{} instances", views.borrow().instances.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn views(&self) -> watch::Receiver<Arc<ServiceView>> {
        self.view.clone()
    }

    /// A receiver of every event from now on (`tokio::sync::broadcast`). Events
    /// are sent just before the view that includes them is published, so none
    /// is both in [`ServiceWatch::current`] and still to come. A receiver more
    /// than [`ClientConfig::event_buffer`](crate::ClientConfig::event_buffer)
    /// events behind gets `RecvError::Lagged(n)`: those `n` events are lost
    /// to it (the view never is), so a receiver that must see every event
    /// has to treat a lag as a failure, not as the end of the stream.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let mut events = client.watch("orders").await?.events();
    /// let first = events.recv().await;
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    /// Waits until the view satisfies `cond` and returns it.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let orders = client.watch("orders").await?;
    /// let view = orders.wait_for(|v| !v.instances.is_empty()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for(&self, mut cond: impl FnMut(&ServiceView) -> bool) -> Result<Arc<ServiceView>> {
        let mut rx = self.view.clone();
        let view = rx.wait_for(|v| cond(v)).await.map_err(|_| Error::Closed)?;
        Ok(view.clone())
    }
}

impl Client {
    /// Watches `service`: returns once a node has sent its first snapshot (nodes
    /// still warming up are skipped), or [`Error::Unavailable`] after the
    /// request timeout. A node that denies the watch ([`Error::Unauthenticated`],
    /// [`Error::PermissionDenied`]) fails it at once: the others would too.
    ///
    /// A watch denied later, when it reconnects (a token revoked meanwhile),
    /// keeps its last view, marked stale, and tries again with backoff.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// let orders = client.watch("orders").await?;
    /// for i in orders.current().instances.values() {
    ///     println!("{}:{}", i.host, i.port);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self, service: &str) -> Result<ServiceWatch> {
        let config = &self.inner.config;
        let view = ServiceView::new(&config.namespace, service);
        let (tx, rx) = watch::channel(Arc::new(view.clone()));
        let (events, _) = broadcast::channel(config.event_buffer.max(1));
        let stop = CancellationToken::new();
        let request = v1::SubscribeRequest {
            namespace: config.namespace.clone(),
            services: vec![service.to_string()],
            consumer: Some(v1::ConsumerInfo {
                consumer_id: config.client_name.clone(),
                host: String::new(),
                metadata: Default::default(),
            }),
        };
        let (denied_tx, denied) = oneshot::channel();
        let task = WatchTask {
            client: self.inner.clone(),
            request,
            view,
            tx,
            events: events.clone(),
            stop: stop.clone(),
            denied: Some(denied_tx),
        };
        tokio::spawn(task.run());
        let watch = ServiceWatch { view: rx, events, _stop: Arc::new(stop.drop_guard()) };
        let first = async {
            tokio::select! {
                view = watch.wait_for(|v| !v.stale) => view.map(drop),
                Ok(e) = denied => Err(e),
            }
        };
        match timeout(config.request_timeout, first).await {
            Ok(Ok(())) => Ok(watch),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Unavailable {
                last: format!("no node sent a view of {service} within {:?}", config.request_timeout),
            }),
        }
    }
}

/// Most messages a watch applies before it publishes its view, however fast
/// they come.
const PUBLISH_EVERY: usize = 256;

/// Longest a moving watch follows both its streams before it switches to the
/// new one even though their views still differ.
const SETTLE: Duration = Duration::from_secs(1);

/// A stream open on endpoint `.0`, with the channel it must outlive.
type Opened = (usize, NodeChannel, Streaming<v1::SubscribeResponse>);

/// How following one stream ended.
enum End {
    Stop,
    Gap,
    Broken(String),
    /// The node denied the stream (token unknown or revoked, no read grant).
    Denied(Error),
    /// The node asked the stream to move, and this one is open elsewhere:
    /// with the view it has built so far (its snapshot and deltas), if any.
    Moved(Box<Opened>, Option<ServiceView>),
}

/// A watch moving to a new stream while it still follows the old one.
///
/// The new node's snapshot can be behind the old stream: a change the old
/// node pushed a moment ago may not have reached the new node when it took
/// its snapshot. Switching at once would show that change undone, then
/// done again (a registration seen removed and re-added). So the new
/// stream builds a view of its own beside the one consumers see, and the
/// watch switches once that one holds everything shown (see
/// [`Overlap::caught_up`]), or at the latest after [`SETTLE`], with only
/// the differences left then.
struct Overlap {
    next: Opened,
    /// The new stream's view; stale until its snapshot came.
    view: ServiceView,
    /// Where the node pointed, to try again if the new stream fails.
    hint: String,
    /// When to switch even if the views still differ (set by the snapshot).
    until: Option<Instant>,
}

impl Overlap {
    /// The new stream has its snapshot and holds everything the view shows,
    /// as the view shows it: switching now shows no removal and no older
    /// record (what the new stream holds beyond that is newer, and shows as
    /// added).
    fn caught_up(&self, shown: &ServiceView) -> bool {
        self.until.is_some() && shown.instances.iter().all(|(id, i)| self.view.instances.get(id) == Some(i))
    }

    /// Time to switch: caught up, or the settle time is over.
    fn due(&self, shown: &ServiceView) -> bool {
        self.caught_up(shown) || self.until.is_some_and(|t| Instant::now() >= t)
    }

    /// The next message of the new stream (never, without an overlap).
    async fn message(overlap: &mut Option<Overlap>) -> Result<Option<v1::SubscribeResponse>, tonic::Status> {
        match overlap {
            Some(o) => o.next.2.message().await,
            None => std::future::pending().await,
        }
    }
}

struct WatchTask {
    client: Arc<Inner>,
    request: v1::SubscribeRequest,
    view: ServiceView,
    tx: watch::Sender<Arc<ServiceView>>,
    events: broadcast::Sender<WatchEvent>,
    stop: CancellationToken,
    /// Told of the first denial, so that [`Client::watch`] fails with it
    /// rather than waiting for a view that no node will send.
    denied: Option<oneshot::Sender<Error>>,
}

impl WatchTask {
    async fn run(mut self) {
        let mut avoid = None;
        let mut failures = 0u32;
        let mut moved: Option<Opened> = None;
        // Whether the next stream's snapshot is already in the view.
        let mut synced = false;
        loop {
            if failures > 0 {
                let delay = self.client.config.backoff.random_delay(failures - 1);
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = sleep(delay) => {}
                }
            }
            let opened = match moved.take() {
                Some(next) => Some(next),
                None => self.open_any(self.client.order(avoid), avoid).await,
            };
            let Some((i, _channel, stream)) = opened else {
                if self.stop.is_cancelled() {
                    return;
                }
                failures += 1;
                continue;
            };
            let end = self.follow(i, stream, synced).await;
            synced = false;
            // Whatever the stream applied is in the view others see.
            self.publish();
            match end {
                End::Stop => return,
                End::Gap => {
                    avoid = None;
                    failures = 0;
                }
                End::Moved(next, built) => {
                    debug!(service = %self.view.service, from = %self.client.name(i), to = %self.client.name(next.0), "watch moved");
                    if let Some(built) = built {
                        // Only the differences left between the two streams' views.
                        let changes = self.view.apply_snapshot(built.to_snapshot());
                        self.view.endpoint = self.client.name(next.0);
                        self.emit(changes);
                        self.publish();
                        synced = true;
                        let _ = self.events.send(WatchEvent::Synced { endpoint: self.view.endpoint.clone() });
                    }
                    moved = Some(*next);
                    avoid = None;
                    failures = 0;
                }
                End::Denied(e) => {
                    self.deny(e, i);
                    self.view.stale = true;
                    self.publish();
                    avoid = None;
                    // Growing delays: a denial is not a lost node.
                    failures += 1;
                }
                End::Broken(reason) => {
                    info!(service = %self.view.service, endpoint = %self.client.name(i), %reason, "watch lost its node; keeping the view and reconnecting");
                    self.view.stale = true;
                    let _ = self.events.send(WatchEvent::Disconnected { reason });
                    self.publish();
                    avoid = Some(i);
                    failures = 1;
                }
            }
        }
    }

    /// Opens a Subscribe stream on the first node of `order` that accepts it
    /// (`lost`: the endpoint whose node is going away, reached over a new
    /// connection). The channel comes back with it: a stream's own connection
    /// must outlive it.
    ///
    /// A denial ends it at once (every node would deny it too), as does
    /// `stop`: `None`.
    async fn open_any(&mut self, order: Vec<usize>, lost: Option<usize>) -> Option<Opened> {
        for i in order {
            let channel = self.client.stream_channel(i, lost);
            let mut c = registry_client(channel.clone());
            let opened = tokio::select! {
                _ = self.stop.cancelled() => return None,
                r = timeout(self.client.config.request_timeout, c.subscribe(self.request.clone())) => r,
            };
            match opened {
                Ok(Ok(stream)) => return Some((i, channel, stream.into_inner())),
                Ok(Err(status)) if Error::from_status(&status).is_denied() => {
                    self.deny(Error::from_status(&status), i);
                    return None;
                }
                // Warming up, draining or unreachable: the next node may serve.
                Ok(Err(status)) => {
                    debug!(endpoint = %self.client.name(i), status = %describe(&status), "subscribe refused")
                }
                Err(_) => debug!(endpoint = %self.client.name(i), "subscribe timed out"),
            }
        }
        None
    }

    /// Follows stream `i`; `synced`: its snapshot is in the view already (it
    /// was taken over from a move).
    async fn follow(&mut self, i: usize, mut stream: Streaming<v1::SubscribeResponse>, mut synced: bool) -> End {
        // Set when the node asked this stream to move: when, and where to.
        let mut move_at: Option<(Instant, String)> = None;
        let mut overlap: Option<Overlap> = None;
        // Messages applied since the view was last published. A burst of
        // deltas is applied as a whole before the view is published once:
        // publishing copies the view, and a copy per delta of a large service
        // is quadratic work in a burst. A stream that never pauses still gets
        // its view published every `PUBLISH_EVERY` messages.
        let mut unpublished = 0usize;
        loop {
            if unpublished >= PUBLISH_EVERY {
                self.publish();
                unpublished = 0;
            }
            if let Some(o) = overlap.take_if(|o| o.due(&self.view)) {
                return Self::switch(o);
            }
            let at = move_at.as_ref().map(|(t, _)| *t);
            let switch_at = overlap.as_ref().and_then(|o| o.until);
            let msg = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return End::Stop,
                _ = sleep_until(at.unwrap_or_else(Instant::now)), if at.is_some() => {
                    let hint = move_at.take().map(|(_, h)| h).unwrap_or_default();
                    let order = self.client.order_preferring(Some(i), self.client.endpoint_for_hint(&hint));
                    // Nowhere to go yet: keep following this stream, which
                    // its node ends if it must.
                    if let Some(next) = self.open_any(order, Some(i)).await {
                        let view = ServiceView::new(&self.view.namespace, &self.view.service);
                        overlap = Some(Overlap { next, view, hint, until: None });
                    }
                    continue;
                }
                // Switched at the top of the loop.
                _ = sleep_until(switch_at.unwrap_or_else(Instant::now)), if switch_at.is_some() => continue,
                m = Overlap::message(&mut overlap) => {
                    if let Err(why) = self.follow_new(&mut overlap, m) {
                        debug!(service = %self.view.service, reason = %why, "the stream to move to failed; trying again");
                        let hint = overlap.take().map(|o| o.hint).unwrap_or_default();
                        move_at = Some((Instant::now() + SETTLE, hint));
                    }
                    continue;
                }
                m = stream.message() => m,
                // Nothing more is waiting: publish what was applied.
                _ = std::future::ready(()), if unpublished > 0 => {
                    self.publish();
                    unpublished = 0;
                    continue;
                }
            };
            // The old node ended the stream: switch to the new one now.
            if matches!(msg, Ok(None) | Err(_))
                && let Some(o) = overlap.take()
            {
                return Self::switch(o);
            }
            let kind = match msg {
                Ok(Some(v1::SubscribeResponse { kind: Some(kind) })) => kind,
                Ok(Some(_)) => continue,
                Ok(None) => return End::Broken("stream ended".into()),
                Err(status) => {
                    let e = Error::from_status(&status);
                    return if e.is_denied() { End::Denied(e) } else { End::Broken(describe(&status)) };
                }
            };
            match kind {
                Push::Snapshot(s) if s.service == self.view.service => {
                    let changes = self.view.apply_snapshot(s);
                    self.view.endpoint = self.client.name(i);
                    self.emit(changes);
                    if !synced {
                        synced = true;
                        let _ = self.events.send(WatchEvent::Synced { endpoint: self.view.endpoint.clone() });
                    }
                    unpublished += 1;
                }
                Push::Delta(d) if d.service == self.view.service => {
                    if !synced {
                        return End::Gap;
                    }
                    match self.view.apply_delta(d) {
                        Ok(changes) => {
                            self.emit(changes);
                            unpublished += 1;
                        }
                        Err(gap) => {
                            warn!(service = %self.view.service, %gap, "revision gap; resubscribing");
                            return End::Gap;
                        }
                    }
                }
                Push::Progress(p) => {
                    if self.view.set_freshness(p.freshness) {
                        unpublished += 1;
                    }
                }
                Push::Drain(d) if overlap.is_none() => {
                    debug!(service = %self.view.service, endpoint = %self.client.name(i), reason = %d.reason, "asked to move");
                    move_at = Some((Instant::now() + Duration::from_millis(u64::from(d.delay_ms)), d.hint));
                }
                // Another service on the same stream: not ours; or a second
                // drain while moving.
                Push::Snapshot(_) | Push::Delta(_) | Push::Drain(_) => {}
            }
        }
    }

    /// Ends following the old stream for the new one, with the new stream's
    /// view if its snapshot came.
    fn switch(o: Overlap) -> End {
        let built = o.until.is_some().then_some(o.view);
        End::Moved(Box::new(o.next), built)
    }

    /// Applies a message of the stream being moved to into its own view.
    fn follow_new(
        &self,
        overlap: &mut Option<Overlap>,
        msg: Result<Option<v1::SubscribeResponse>, tonic::Status>,
    ) -> Result<(), String> {
        let Some(o) = overlap.as_mut() else { return Ok(()) };
        let kind = match msg {
            Ok(Some(v1::SubscribeResponse { kind: Some(kind) })) => kind,
            Ok(Some(_)) => return Ok(()),
            Ok(None) => return Err("stream ended".into()),
            Err(status) => return Err(describe(&status)),
        };
        match kind {
            Push::Snapshot(s) if s.service == self.view.service => {
                o.view.apply_snapshot(s);
                o.until.get_or_insert_with(|| Instant::now() + SETTLE);
            }
            Push::Delta(d) if d.service == self.view.service => {
                if o.until.is_none() {
                    return Err("a delta before the snapshot".into());
                }
                o.view.apply_delta(d).map_err(|gap| gap.to_string())?;
            }
            Push::Progress(p) => {
                o.view.set_freshness(p.freshness);
            }
            Push::Snapshot(_) | Push::Delta(_) | Push::Drain(_) => {}
        }
        Ok(())
    }

    /// A node (endpoint `i`) denied this watch. Before the first view, the
    /// caller of [`Client::watch`] gets the denial; later, a live view turns
    /// stale with a `Disconnected` event saying why, and the watch tries
    /// again with backoff.
    fn deny(&mut self, e: Error, i: usize) {
        warn!(service = %self.view.service, endpoint = %self.client.name(i), error = %e, "the registry denies this watch");
        match self.denied.take() {
            Some(caller) if !caller.is_closed() => {
                let _ = caller.send(e);
            }
            _ if !self.view.stale => {
                let _ = self.events.send(WatchEvent::Disconnected { reason: e.to_string() });
            }
            _ => {}
        }
    }

    /// Publishes the view. Always after the events it includes: whoever sees a
    /// view and then subscribes to events gets no event the view already holds.
    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.view.clone()));
    }

    fn emit(&self, changes: Vec<InstanceChange>) {
        for c in changes {
            // No receiver is fine: events are optional.
            let _ = self.events.send(WatchEvent::Changed(c));
        }
    }
}
