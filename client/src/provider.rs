//! Providers: a [`Provider`] holds one `Register` session for any number of
//! instances, heartbeats in the background, follows the cluster when its node
//! drains or dies, and says goodbye when it is shut down or dropped.
//!
//! One task owns the session; the handle sends it commands over a channel. The
//! instances the provider wants registered live in a shared map, so every new
//! session (after a reconnect or a drain) registers all of them again. A drain
//! is make-before-break: the new session has re-registered everything before the
//! old one says goodbye, and the newer registration wins on every node, so
//! consumers never see the instances go.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use registry_proto::v1::{self, register_request::Kind as In, register_response::Kind as Out};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use tracing::{debug, info, warn};

use crate::auth::NodeChannel;
use crate::client::{Client, Inner, registry_client};
use crate::error::{Error, Result, describe};

/// How long a session given up on while registering may take to end at its
/// node before the current session registers everything again anyway.
const ABANDONED_WAIT: Duration = Duration::from_secs(10);

/// Where the provider's session is.
///
/// ```no_run
/// # async fn demo(provider: registry_client::Provider) {
/// let mut state = provider.state();
/// // Follow the session from node to node.
/// while state.changed().await.is_ok() {
///     println!("now on {:?} (session #{})", state.borrow().node_id, state.borrow().sessions);
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderState {
    /// The node holding the session, when connected.
    pub node_id: Option<String>,
    /// The endpoint the session runs on, when connected.
    pub endpoint: Option<String>,
    /// Sessions opened so far (1 after `register`; each move adds one).
    pub sessions: u64,
    /// When the current session had registered everything.
    pub since: Option<Instant>,
    /// When the attempt that opened the current session began, after its
    /// backoff delay: the moment the node saw this provider come.
    pub attempted_at: Option<Instant>,
    /// When the backoff let that attempt begin: the end of its jittered
    /// delay, or the attempt's start when it waited none. A busy machine
    /// starts attempts late and so bunches `attempted_at`; this is what the
    /// backoff itself chose, which is how it spreads the reconnects of a
    /// lost node's providers.
    pub due_at: Option<Instant>,
}

/// (service, instance id): instances of one provider are unique by it.
type Key = (String, String);

/// A registered provider. Dropping it (or [`Provider::shutdown`]) says goodbye,
/// which removes its instances at once.
///
/// ```no_run
/// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
/// use registry_client::v1::{Instance, Status};
///
/// let me = Instance { service: "orders".into(), host: "10.0.0.7".into(), port: 8080, ..Default::default() };
/// let provider = client.register([me]).await?;
/// provider.set_status("orders", "10.0.0.7:8080", Status::OutOfService).await?;
/// provider.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Provider {
    desired: Arc<Mutex<BTreeMap<Key, v1::Instance>>>,
    namespace: String,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ProviderState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

struct Command {
    kind: In,
    reply: oneshot::Sender<Result<()>>,
}

impl Client {
    /// Opens a session, registers `instances` and returns the handle once every
    /// one is accepted. An empty namespace becomes the client's; an empty
    /// instance id becomes `host:port`.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::Client) -> Result<(), registry_client::Error> {
    /// use registry_client::v1::Instance;
    /// let a = Instance { service: "orders".into(), host: "10.0.0.7".into(), port: 8080, ..Default::default() };
    /// let b = Instance { service: "orders-admin".into(), host: "10.0.0.7".into(), port: 9090, ..Default::default() };
    /// let provider = client.register([a, b]).await?;
    /// assert_eq!(provider.instances().len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn register(&self, instances: impl IntoIterator<Item = v1::Instance>) -> Result<Provider> {
        let namespace = self.inner.config.namespace.clone();
        let desired: BTreeMap<Key, v1::Instance> =
            instances.into_iter().map(|i| normalize(i, &namespace)).map(|i| (key(&i), i)).collect();
        let desired = Arc::new(Mutex::new(desired));
        let (commands, rx) = mpsc::channel(64);
        let (state_tx, state) = watch::channel(ProviderState::default());
        let stop = CancellationToken::new();
        let mut task = SessionTask {
            client: self.inner.clone(),
            desired: desired.clone(),
            commands: rx,
            state: state_tx,
            stop: stop.clone(),
            pending: VecDeque::new(),
            retry: Vec::new(),
            retiring: None,
            refresh: mpsc::channel(1),
            due: None,
        };
        let first = task.first_session().await?;
        let task = tokio::spawn(task.run(first));
        Ok(Provider { desired, namespace, commands, state, stop, task: Some(task) })
    }
}

impl Provider {
    /// Registers another instance, or replaces one with the same service and id.
    /// Waits for the node's answer; while the provider is between nodes, that is
    /// the answer of the next session.
    ///
    /// ```no_run
    /// # async fn demo(provider: registry_client::Provider) -> Result<(), registry_client::Error> {
    /// use registry_client::v1::Instance;
    /// let extra = Instance { service: "orders".into(), host: "10.0.0.7".into(), port: 8081, ..Default::default() };
    /// provider.upsert(extra).await?;
    /// # Ok(()) }
    /// ```
    pub async fn upsert(&self, instance: v1::Instance) -> Result<()> {
        let instance = normalize(instance, &self.namespace);
        let k = key(&instance);
        let previous = lock(&self.desired).insert(k.clone(), instance.clone());
        let result = self.send(In::Upsert(instance)).await;
        if result.is_err() {
            // Not accepted: the next session must not register it either.
            let mut desired = lock(&self.desired);
            match previous {
                Some(p) => desired.insert(k, p),
                None => desired.remove(&k),
            };
        }
        result
    }

    /// Changes one registered instance in place (metadata, weight, zone, status...).
    ///
    /// ```no_run
    /// # async fn demo(provider: registry_client::Provider) -> Result<(), registry_client::Error> {
    /// provider.update("orders", "10.0.0.7:8080", |i| {
    ///     i.weight = Some(50);
    ///     i.metadata.insert("version".into(), "1.4.2".into());
    /// }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update(&self, service: &str, instance_id: &str, change: impl FnOnce(&mut v1::Instance)) -> Result<()> {
        let mut instance = lock(&self.desired)
            .get(&(service.to_string(), instance_id.to_string()))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("{service}/{instance_id} is not registered by this provider")))?;
        change(&mut instance);
        instance.service = service.into();
        instance.instance_id = instance_id.into();
        self.upsert(instance).await
    }

    /// Sets the status of one instance, e.g. `OutOfService` before a deploy.
    ///
    /// ```no_run
    /// # async fn demo(provider: registry_client::Provider) -> Result<(), registry_client::Error> {
    /// use registry_client::v1::Status;
    /// provider.set_status("orders", "10.0.0.7:8080", Status::OutOfService).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_status(&self, service: &str, instance_id: &str, status: v1::Status) -> Result<()> {
        self.update(service, instance_id, |i| i.set_status(status)).await
    }

    /// Removes one instance; the session and its other instances stay.
    ///
    /// ```no_run
    /// # async fn demo(provider: registry_client::Provider) -> Result<(), registry_client::Error> {
    /// provider.deregister("orders", "10.0.0.7:8080").await?;
    /// # Ok(()) }
    /// ```
    pub async fn deregister(&self, service: &str, instance_id: &str) -> Result<()> {
        if lock(&self.desired).remove(&(service.to_string(), instance_id.to_string())).is_none() {
            return Err(Error::NotFound(format!("{service}/{instance_id} is not registered by this provider")));
        }
        let k = v1::InstanceKey {
            namespace: self.namespace.clone(),
            service: service.into(),
            instance_id: instance_id.into(),
        };
        self.send(In::Remove(k)).await
    }

    /// The instances this provider keeps registered.
    ///
    /// ```no_run
    /// # fn demo(provider: registry_client::Provider) {
    /// for i in provider.instances() {
    ///     println!("{}/{}", i.service, i.instance_id);
    /// }
    /// # }
    /// ```
    pub fn instances(&self) -> Vec<v1::Instance> {
        lock(&self.desired).values().cloned().collect()
    }

    /// Where the session is now; `changed()` on it follows moves.
    ///
    /// ```no_run
    /// # fn demo(provider: registry_client::Provider) {
    /// println!("on node {:?}", provider.state().borrow().node_id);
    /// # }
    /// ```
    pub fn state(&self) -> watch::Receiver<ProviderState> {
        self.state.clone()
    }

    /// Says goodbye (the instances are removed at once) and waits for the
    /// session task to end.
    ///
    /// ```no_run
    /// # async fn demo(provider: registry_client::Provider) {
    /// provider.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    async fn send(&self, kind: In) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command { kind, reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // The task sends the goodbye on its own; it needs no one to wait for it.
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map half-written (all
    // updates are single inserts/removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fills what the registry would default, so keys are stable client-side: the
/// namespace (the client's) and the instance id (`host:port`).
pub(crate) fn normalize(mut i: v1::Instance, namespace: &str) -> v1::Instance {
    if i.namespace.is_empty() {
        i.namespace = namespace.to_string();
    }
    if i.instance_id.is_empty() {
        i.instance_id = format!("{}:{}", i.host, i.port);
    }
    i
}

fn key(i: &v1::Instance) -> Key {
    (i.service.clone(), i.instance_id.clone())
}

/// One open Register stream.
struct Session {
    endpoint: usize,
    /// Keeps a connection of the session's own alive as long as the session.
    _channel: NodeChannel,
    tx: mpsc::Sender<v1::RegisterRequest>,
    rx: Streaming<v1::RegisterResponse>,
    opened: v1::SessionOpened,
}

impl Session {
    async fn send(&self, kind: In) -> bool {
        self.tx.send(v1::RegisterRequest { kind: Some(kind) }).await.is_ok()
    }

    /// Ends the session. `moved`: this provider's instances are registered
    /// on another node now, so the node keeps them until that node's copies
    /// take them over instead of removing them at once.
    ///
    /// Says goodbye and waits (briefly) for the node to end the stream, so the
    /// goodbye is not lost in a connection torn down right after it.
    async fn goodbye(self, moved: bool) {
        self.goodbye_within(moved, Duration::from_secs(2)).await;
    }

    /// [`Self::goodbye`], waiting up to `wait` for the node to end the
    /// stream: once it has, the node has done everything sent before.
    async fn goodbye_within(mut self, moved: bool, wait: Duration) {
        if self.send(In::Goodbye(v1::Goodbye { moved })).await {
            drop(self.tx);
            let _ = timeout(wait, async { while let Ok(Some(_)) = self.rx.message().await {} }).await;
        }
    }
}

/// What a refused instance does to a new session.
#[derive(Clone, Copy, Debug)]
enum Refusals {
    /// The first registration: the caller gets the refusal and no session.
    Fail,
    /// A re-registration: the others are registered all the same.
    Skip,
}

/// How serving one session ended.
enum End {
    Stop,
    Broken(String),
    /// Asked to move: after this delay, preferably to the node hinted at.
    Drain(Duration, String),
}

/// What the node answers next, in order: the session answers every upsert,
/// remove and heartbeat exactly once, in the order sent.
enum Pending {
    /// Boxed: a command carries an instance, and heartbeats are most of the queue.
    Command(Box<Command>),
    Heartbeat,
}

struct SessionTask {
    client: Arc<Inner>,
    desired: Arc<Mutex<BTreeMap<Key, v1::Instance>>>,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<ProviderState>,
    stop: CancellationToken,
    pending: VecDeque<Pending>,
    /// Commands sent on a session that broke before answering.
    retry: Vec<Command>,
    /// The session a drain moved away from, and when it says goodbye.
    retiring: Option<(Session, Instant)>,
    /// Told when a session given up on while registering has ended at its
    /// node: the current session then registers everything again (see
    /// [`Self::open`]).
    refresh: (mpsc::Sender<()>, mpsc::Receiver<()>),
    /// When the backoff lets the next attempt begin; `None`: at once.
    due: Option<Instant>,
}

impl SessionTask {
    /// The first session: tries the nodes until the request timeout, and fails
    /// on the first refusal (a bad instance is the caller's to fix) or denial
    /// (a token or grant is, and no node will say otherwise).
    async fn first_session(&mut self) -> Result<Session> {
        let deadline = Instant::now() + self.client.config.request_timeout;
        let mut attempt = 0;
        loop {
            match self.connect(None, Refusals::Fail).await {
                Ok(s) => return Ok(s),
                Err(e) if e.is_final() => return Err(e),
                Err(e) => {
                    let delay = self.client.config.backoff.random_delay(attempt);
                    if Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    attempt += 1;
                    self.due = Some(Instant::now() + delay);
                    sleep(delay).await;
                }
            }
        }
    }

    async fn run(mut self, mut session: Session) {
        loop {
            match self.serve(&mut session).await {
                End::Stop => {
                    self.retire_now().await;
                    session.goodbye(false).await;
                    self.state.send_replace(ProviderState::default());
                    return;
                }
                End::Broken(reason) => {
                    self.retire_now().await;
                    info!(endpoint = %self.client.name(session.endpoint), %reason, "provider session lost; reconnecting");
                    self.requeue();
                    self.state.send_modify(|s| {
                        s.node_id = None;
                        s.endpoint = None;
                    });
                    match self.reconnect(session.endpoint, true, None).await {
                        Some(s) => session = s,
                        None => return,
                    }
                }
                End::Drain(delay, hint) => {
                    info!(endpoint = %self.client.name(session.endpoint), ?delay, "node asked the provider to move");
                    tokio::select! {
                        _ = self.stop.cancelled() => {
                            session.goodbye(false).await;
                            return;
                        }
                        _ = sleep(delay) => {}
                    }
                    // Answers still owed by the old session come from the new one.
                    self.requeue();
                    self.retire_now().await;
                    let prefer = self.client.endpoint_for_hint(&hint);
                    let Some(new) = self.reconnect(session.endpoint, false, prefer).await else {
                        session.goodbye(false).await;
                        return;
                    };
                    // The new session registered everything with newer versions.
                    // The old one says goodbye after the handover delay, once the
                    // new copies have reached every node: a goodbye that overtook
                    // them would show consumers a removal and a re-add.
                    let old = std::mem::replace(&mut session, new);
                    self.retiring = Some((old, Instant::now() + self.client.config.handover));
                }
            }
        }
    }

    /// Opens a session on some node (trying `avoid` last) and registers every
    /// desired instance in it.
    async fn connect(&mut self, avoid: Option<usize>, refusals: Refusals) -> Result<Session> {
        self.connect_preferring(avoid, None, refusals).await
    }

    /// [`Self::connect`], trying `prefer` first (the node a drain pointed at).
    /// A refusal or a denial ends it at once: the other nodes would answer the
    /// same.
    async fn connect_preferring(
        &mut self,
        avoid: Option<usize>,
        prefer: Option<usize>,
        refusals: Refusals,
    ) -> Result<Session> {
        let mut last = Error::Unavailable { last: "no endpoint tried".into() };
        for i in self.client.order_preferring(avoid, prefer) {
            match self.open(i, avoid, refusals).await {
                Ok(session) => return Ok(session),
                Err(e) if e.is_final() => return Err(e),
                Err(e) => {
                    debug!(endpoint = %self.client.name(i), error = %e, "cannot open a session");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn open(&mut self, i: usize, lost: Option<usize>, refusals: Refusals) -> Result<Session> {
        let attempted_at = Instant::now();
        let config = &self.client.config;
        let (tx, rx) = mpsc::channel(256);
        let heartbeat_interval_ms = config.heartbeat_interval.map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32);
        let open = In::Open(v1::OpenSession { client_name: config.client_name.clone(), heartbeat_interval_ms });
        let _ = tx.send(v1::RegisterRequest { kind: Some(open) }).await;
        let channel = self.client.stream_channel(i, lost);
        let mut client = registry_client(channel.clone());
        let unavailable = |what: &str| self.unavailable(i, what);
        let mut rx = match timeout(config.request_timeout, client.register(ReceiverStream::new(rx))).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(Error::from_status(&status)),
            Err(_) => return Err(unavailable("no answer to Register in time")),
        };
        let opened = match timeout(config.request_timeout, rx.message()).await {
            Ok(Ok(Some(v1::RegisterResponse { kind: Some(Out::Opened(o)) }))) => o,
            Ok(Ok(other)) => return Err(Error::Protocol(format!("expected `opened`, got {other:?}"))),
            Ok(Err(status)) => return Err(Error::from_status(&status)),
            Err(_) => return Err(unavailable("no `opened` in time")),
        };
        let mut session = Session { endpoint: i, _channel: channel, tx, rx, opened };
        let instances: Vec<v1::Instance> = lock(&self.desired).values().cloned().collect();
        if let Err(e) = self.register_all(&mut session, &instances, refusals).await {
            // A session given up on while it registers ends with a goodbye,
            // never a bare half-close, which removes its instances at once.
            // Refused or denied (a bad instance, a missing grant: the
            // caller's to fix), the provider stops: a plain goodbye, done
            // before the caller hears of it.
            // Otherwise (no answer in time, a drain, the stream ended) it goes
            // on to register elsewhere: "moved" keeps this node's copies
            // until the next session's newer ones take them over, so neither
            // a removal here nor its tombstone hides the copies consumers see
            // meanwhile.
            //
            // A node too slow to answer in time may still apply the
            // registrations after the provider registered them elsewhere,
            // and so with newer versions than those: they would take the
            // instances over from the session that goes on, and be removed
            // when this one's hold ends, leaving the provider registered
            // nowhere. So once this node has ended the stream (it has done
            // everything sent before the goodbye), or after a generous
            // wait, the current session registers everything again, newer.
            if e.is_final() {
                session.goodbye(false).await;
            } else {
                let refresh = self.refresh.0.clone();
                tokio::spawn(async move {
                    session.goodbye_within(true, ABANDONED_WAIT).await;
                    let _ = refresh.try_send(());
                });
            }
            return Err(e);
        }
        let node_id = session.opened.node_id.clone();
        let endpoint = self.client.name(i);
        debug!(node = %node_id, %endpoint, instances = instances.len(), "provider session registered");
        self.state.send_modify(|s| {
            s.node_id = Some(node_id);
            s.endpoint = Some(endpoint);
            s.sessions += 1;
            s.since = Some(Instant::now());
            s.attempted_at = Some(attempted_at);
            s.due_at = Some(self.due.unwrap_or(attempted_at));
        });
        Ok(session)
    }

    /// A session on endpoint `i` that cannot go on.
    fn unavailable(&self, i: usize, what: &str) -> Error {
        Error::Unavailable { last: format!("{}: {what}", self.client.name(i)) }
    }

    /// Registers `instances` in a just opened session and waits for every
    /// answer. A refusal fails the session only with [`Refusals::Fail`],
    /// except a draining node's, which always does (try another node).
    async fn register_all(&self, session: &mut Session, instances: &[v1::Instance], refusals: Refusals) -> Result<()> {
        let config = &self.client.config;
        let endpoint = session.endpoint;
        let unavailable = |what: &str| self.unavailable(endpoint, what);
        for instance in instances {
            if !session.send(In::Upsert(instance.clone())).await {
                return Err(unavailable("session closed while registering"));
            }
        }
        let mut left = instances.len();
        while left > 0 {
            let msg = match timeout(config.request_timeout, session.rx.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return Err(unavailable("session ended while registering")),
                Ok(Err(status)) => return Err(Error::from_status(&status)),
                Err(_) => return Err(unavailable("registration not answered in time")),
            };
            match msg.kind {
                Some(Out::Accepted(_)) => left -= 1,
                Some(Out::Rejected(r)) => {
                    left -= 1;
                    let err = Error::rejected(r.code, r.reason);
                    // A draining node refuses everything: try another one.
                    if r.code == Code::Unavailable as i32 {
                        return Err(unavailable(&err.to_string()));
                    }
                    match refusals {
                        Refusals::Fail => return Err(err),
                        // One refused instance must not keep the others away.
                        Refusals::Skip => warn!(key = ?r.key, error = %err, "re-registration refused"),
                    }
                }
                // A drain while registering: this node is going away.
                Some(Out::Drain(_)) => return Err(unavailable("node is draining")),
                _ => {}
            }
        }
        Ok(())
    }

    /// A new session after the old one ended: jittered, growing delays; the
    /// first wait is jittered too, so providers of a dead node spread out.
    async fn reconnect(&mut self, lost: usize, wait_first: bool, prefer: Option<usize>) -> Option<Session> {
        let mut attempt = 0;
        let mut wait = wait_first;
        loop {
            self.due = None;
            if wait {
                let delay = self.client.config.backoff.random_delay(attempt);
                self.due = Some(Instant::now() + delay);
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    _ = sleep(delay) => {}
                }
                attempt += 1;
            }
            wait = true;
            if self.stop.is_cancelled() {
                return None;
            }
            match self.connect_preferring(Some(lost), prefer, Refusals::Skip).await {
                Ok(s) => return Some(s),
                // Not one attempt per node: the next one waits its backoff.
                Err(e) if e.is_denied() => {
                    warn!(error = %e, attempt, "the registry denies this provider's session; retrying with backoff")
                }
                Err(e) => warn!(error = %e, attempt, "provider cannot re-register yet"),
            }
        }
    }

    async fn retire_now(&mut self) {
        if let Some((old, _)) = self.retiring.take() {
            old.goodbye(true).await;
        }
    }

    /// The old session's goodbye, on a task of its own: it waits (up to
    /// 2 s) for the old node to end the stream, and the new session's
    /// heartbeats must not wait with it. They did, and a lease shorter than
    /// that wait (600 ms in the fault suite) expired on the new node while
    /// the old one was slow to answer: live instances removed, a flap.
    fn retire_in_background(&mut self) {
        if let Some((old, _)) = self.retiring.take() {
            tokio::spawn(old.goodbye(true));
        }
    }

    fn requeue(&mut self) {
        for p in self.pending.drain(..) {
            if let Pending::Command(c) = p {
                self.retry.push(*c);
            }
        }
    }

    async fn serve(&mut self, session: &mut Session) -> End {
        let every = Duration::from_millis(u64::from(session.opened.heartbeat_interval_ms.max(10)));
        let ttl = Duration::from_millis(u64::from(session.opened.lease_ttl_ms.max(30)));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        let mut heard = Instant::now();
        for c in std::mem::take(&mut self.retry) {
            if !session.send(c.kind.clone()).await {
                self.retry.push(c);
                return End::Broken("session closed".into());
            }
            self.pending.push_back(Pending::Command(Box::new(c)));
        }
        loop {
            let retire_at = self.retiring.as_ref().map(|(_, at)| *at);
            tokio::select! {
                _ = self.stop.cancelled() => return End::Stop,
                _ = sleep_until(retire_at.unwrap_or(heard)), if retire_at.is_some() => self.retire_in_background(),
                Some(()) = self.refresh.1.recv() => {
                    let instances: Vec<v1::Instance> = lock(&self.desired).values().cloned().collect();
                    debug!(instances = instances.len(), "registering again after a session given up on");
                    for instance in instances {
                        // Nobody waits for these answers.
                        let cmd = Command { kind: In::Upsert(instance), reply: oneshot::channel().0 };
                        if !session.send(cmd.kind.clone()).await {
                            return End::Broken("session closed".into());
                        }
                        self.pending.push_back(Pending::Command(Box::new(cmd)));
                    }
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return End::Stop };
                    if !session.send(cmd.kind.clone()).await {
                        self.retry.push(cmd);
                        return End::Broken("session closed".into());
                    }
                    self.pending.push_back(Pending::Command(Box::new(cmd)));
                }
                _ = heartbeat.tick() => {
                    if !session.send(In::Heartbeat(v1::Heartbeat { nonce: 0 })).await {
                        return End::Broken("session closed".into());
                    }
                    self.pending.push_back(Pending::Heartbeat);
                }
                // The node answers every heartbeat: a lease of silence means it is gone.
                _ = sleep_until(heard + ttl) => return End::Broken(format!("no answer for {ttl:?}")),
                msg = session.rx.message() => {
                    heard = Instant::now();
                    let kind = match msg {
                        Ok(Some(v1::RegisterResponse { kind: Some(kind) })) => kind,
                        Ok(Some(_)) => continue,
                        Ok(None) => return End::Broken("session ended by the node".into()),
                        Err(status) => return End::Broken(describe(&status)),
                    };
                    match kind {
                        Out::Accepted(_) => self.answer(Ok(())),
                        Out::Rejected(r) => {
                            let kind = self.front_kind();
                            // Removing what the node no longer holds is done.
                            let gone = matches!(kind, Some(In::Remove(_))) && r.code == Code::NotFound as i32;
                            self.answer(if gone { Ok(()) } else { Err(Error::rejected(r.code, r.reason)) });
                        }
                        Out::Pong(_) => self.answer(Ok(())),
                        Out::Drain(d) => return End::Drain(Duration::from_millis(u64::from(d.delay_ms)), d.hint),
                        Out::Opened(_) => {}
                    }
                }
            }
        }
    }

    fn front_kind(&self) -> Option<&In> {
        match self.pending.front() {
            Some(Pending::Command(c)) => Some(&c.kind),
            _ => None,
        }
    }

    fn answer(&mut self, result: Result<()>) {
        if let Some(Pending::Command(c)) = self.pending.pop_front() {
            // The caller may have stopped waiting; that is fine.
            let _ = c.reply.send(result);
        }
    }
}
