//! Authenticated NATS between nodes (issue #14), against a real nats-server
//! with one user per node: the users of `deploy/nats/auth.conf` itself, with
//! passwords made for the run, plus a user `admin` allowed everything, which
//! the tests use to watch the bus and to forge.
//!
//! - Nodes logged in as their own users replicate: changes, beats, hellos and
//!   slice pulls all fit in their permissions, and the server refuses nothing.
//! - A client logged in as one node cannot publish changes, beats or hellos on
//!   another node's subjects, nor read its replies: the server refuses them.
//! - A forged message that gets through anyway (the admin user publishes it)
//!   is dropped by every receiver and counted as forged.
//! - Over TLS with client certificates (and nkey users) nodes replicate, and
//!   a client without a certificate, or with another CA's, is refused.
//! - Secrets: an unreadable file stops the start naming it; a password from
//!   the environment is used and never printed.
//! - Rotation: nodes log in with what their password files say at each
//!   reconnect, whether nats-server restarts with the new passwords or, as
//!   the runbook does it, reloads a configuration that holds them.
//!
//! No secret is fixed: passwords, nkeys and certificates are made at run time.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail, ensure};
use bus_sync::wire;
use bus_sync::{BeatInfo, Subjects};
use bytes::Bytes;
use registry_node::NodeHandle;
use registry_node::config::EnvSecret;
use registry_store::{Change, Entry, InstanceKey, Key, Origin, Record, Version};
use registry_tests::nats::NatsServer;
use registry_tests::pki::{TestCa, Validity};
use registry_tests::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

/// The node ids `deploy/nats/auth.conf` has users for.
const NODES: [&str; 3] = ["registry-0", "registry-1", "registry-2"];

/// A secret made for this run.
fn random_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A NATS password made for this run. It starts with a letter: nats-server
/// reads the value of a `$VARIABLE` as configuration, so a password such
/// as `1e5…` would be taken for a number and the server would not start.
fn nats_password() -> String {
    format!("p{}", random_secret())
}

/// A directory for one test's secret files, readable by its owner only,
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = std::env::temp_dir().join(format!("registry-nats-auth-{name}-{}", random_secret()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Self(dir))
    }

    fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nats-server with `deploy/nats/auth.conf` and a user `admin` without
/// permissions (so allowed everything). Passwords come from the server's
/// environment (not the file's `passwords.conf`), until a rotation by reload
/// writes them into its configuration ([`Self::rotate_by_reload`]).
struct AuthNats {
    server: NatsServer,
    /// Its configuration, which names the passwords as `$VAR`s.
    config: String,
    /// The password of each of [`NODES`].
    passwords: Vec<String>,
    admin: String,
}

/// What a client heard from the server: its `-ERR`s (permission violations).
type ServerErrors = mpsc::UnboundedReceiver<String>;

impl AuthNats {
    async fn start() -> Result<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let auth = std::fs::read_to_string(root.join("deploy/nats/auth.conf"))?;
        // The passwords come from the server's environment here, not from
        // the passwords.conf the file includes (deploy.rs runs it with one).
        let include = "include \"passwords.conf\"";
        ensure!(auth.lines().filter(|l| *l == include).count() == 1, "deploy/nats/auth.conf has one `{include}`");
        let auth = auth.replacen(include, "", 1);
        let users = "users: [";
        ensure!(auth.matches(users).count() == 1, "deploy/nats/auth.conf has one `{users}` list");
        let config = auth.replacen(users, "users: [\n    { user: admin, password: $TEST_ADMIN_NATS_PASSWORD }", 1);
        let passwords: Vec<String> = NODES.iter().map(|_| nats_password()).collect();
        let admin = nats_password();
        let server = NatsServer::start_configured(&config, Self::env(&passwords, &admin)).await?;
        Ok(Self { server, config, passwords, admin })
    }

    /// The variable `deploy/nats/auth.conf` takes node `i`'s password from.
    fn password_var(i: usize) -> String {
        format!("REGISTRY_{i}_NATS_PASSWORD")
    }

    /// The server's environment: the passwords its configuration names.
    fn env(passwords: &[String], admin: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            passwords.iter().enumerate().map(|(i, p)| (Self::password_var(i), p.clone())).collect();
        env.push(("TEST_ADMIN_NATS_PASSWORD".into(), admin.to_string()));
        env
    }

    /// New passwords for every node: the files of the nodes that read one
    /// ([`Self::start_node`]) are rewritten, then the server restarts with
    /// the new passwords only.
    async fn rotate_by_restart(&mut self, scratch: &Scratch) -> Result<()> {
        self.new_passwords(scratch)?;
        self.server.restart_with(Self::env(&self.passwords, &self.admin)).await
    }

    /// New passwords for every node, the runbook's way: the nodes' files
    /// are rewritten, then the running server reloads a configuration with
    /// the new passwords only. They are written into the file: a reload
    /// reads `$VAR`s from the environment the server started with, so new
    /// values there would never reach it.
    async fn rotate_by_reload(&mut self, scratch: &Scratch) -> Result<()> {
        self.new_passwords(scratch)?;
        let mut config = self.config.clone();
        for (i, password) in self.passwords.iter().enumerate() {
            let var = format!("${}", Self::password_var(i));
            ensure!(config.matches(&var).count() == 1, "the configuration names {var} once");
            config = config.replace(&var, &format!("\"{password}\""));
        }
        self.server.reload_with(&config).await
    }

    /// Makes new passwords and writes them to the files of the nodes that
    /// read one ([`Self::start_node`]).
    fn new_passwords(&mut self, scratch: &Scratch) -> Result<()> {
        self.passwords = NODES.iter().map(|_| nats_password()).collect();
        for (node, password) in NODES.iter().zip(&self.passwords) {
            if *node != "registry-1" {
                scratch.write(&format!("{node}.password"), &format!("{password}\n"))?;
            }
        }
        Ok(())
    }

    fn password(&self, node: &str) -> &str {
        let i = NODES.iter().position(|n| *n == node).expect("a node of auth.conf");
        &self.passwords[i]
    }

    /// A client logged in as `user`, and the errors the server sends it.
    async fn connect(&self, user: &str, password: &str) -> Result<(async_nats::Client, ServerErrors)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.server.url())
            .await
            .with_context(|| format!("logging in to NATS as {user}"))?;
        Ok((client, rx))
    }

    async fn admin(&self) -> Result<async_nats::Client> {
        Ok(self.connect("admin", &self.admin).await?.0)
    }

    /// Starts node `name` logged in as its own user: registry-1 takes its
    /// password as `REGISTRY_NATS_PASSWORD` gives it, the others from a file.
    async fn start_node(&self, scratch: &Scratch, name: &str, cluster: &str) -> Result<NodeHandle> {
        let mut config = cluster_config(name, &[self.server.url()], cluster);
        config.sync.user = Some(name.into());
        if name == "registry-1" {
            config.sync.password_env = Some(EnvSecret(self.password(name).into()));
        } else {
            let file = scratch.write(&format!("{name}.password"), &format!("{}\n", self.password(name)))?;
            config.sync.password_file = Some(file);
        }
        let node = start_node(config).await?;
        until_ready(&node).await?;
        Ok(node)
    }
}

/// A `registry_sync_*` counter from a node's /metrics.
async fn sync_metric(node: &NodeHandle, name: &str) -> Option<u64> {
    let (_, body) = http_get(node.http_addr, "/metrics").await.ok()?;
    metric(&body, &format!("sync_{name}"))
}

/// Waits until a node's counter reaches `at_least`.
async fn until_metric(node: &NodeHandle, name: &str, at_least: u64) -> Result<u64> {
    let what = format!("{} counts {name} >= {at_least}", node.registry.config().node_id);
    eventually(&what, PROMPTLY, || async { sync_metric(node, name).await.filter(|n| *n >= at_least) }).await
}

/// `peer`'s origin as `node` knows it, and the last seq of it `node` applied,
/// once `peer` has published at least `batches` and `node` applied them all.
/// Both are read from the views nodes mirror every tick, as their metrics
/// are: the store has a batch before the mirror counts it, so a count read
/// as soon as the change shows can still rise by one (it did:
/// `batches_applied_total` read 0, then 1, with no batch sent in between).
async fn known_origin(node: &NodeHandle, peer: &NodeHandle, batches: u64) -> Result<(Origin, u64)> {
    let sync = node.registry.sync_state().context("a clustered node")?;
    let published = &peer.registry.sync_state().context("a clustered peer")?.own_seq;
    let name = peer.registry.config().node_id.clone();
    eventually(&format!("{name} is known, all its batches applied"), PROMPTLY, || async {
        let peers = sync.peers.lock();
        let seen = peers.iter().find(|p| *p.origin.node == *name && !p.retired)?;
        let published = published.load(std::sync::atomic::Ordering::Relaxed);
        (published >= batches && seen.applied == published).then(|| (seen.origin.clone(), seen.applied))
    })
    .await
}

/// A change batch of `origin` registering instance `id` of service `svc`,
/// next in sequence after `applied`: what a node would accept from `origin`.
fn batch_of(origin: &Origin, applied: u64, id: &str) -> Bytes {
    let record = Record::instance(&v1::Instance {
        namespace: "default".into(),
        service: "svc".into(),
        instance_id: id.into(),
        host: "10.6.6.6".into(),
        port: 6666,
        ..Default::default()
    });
    let entry = Entry { version: Version { hlc: 1 << 60, node: 1 }, record: Some(record) };
    let change = Change::Put { key: Key::Instance(InstanceKey::new("default", "svc", id)), entry };
    Bytes::from(wire::encode(&wire::batch_to_wire(origin, applied + 1, &[change])))
}

fn beat_of(origin: &Origin, seq: u64) -> Bytes {
    let beat = BeatInfo { seq, ready: true, ..Default::default() };
    Bytes::from(wire::encode(&wire::beat_to_wire(origin, &beat)))
}

fn hello_of(origin: &Origin) -> Bytes {
    Bytes::from(wire::encode(&wire::hello_to_wire(origin)))
}

/// Two nodes of `cluster`, each logged in as its own user; the cluster
/// replicates (a registration on registry-0 is seen on registry-1).
async fn two_nodes(nats: &AuthNats, scratch: &Scratch, cluster: &str) -> Result<(Vec<NodeHandle>, Session)> {
    two_nodes_as(nats, scratch, cluster, "registry-1", "real").await
}

/// [`two_nodes`], registry-0 and `second`, replicating instance `id`.
async fn two_nodes_as(
    nats: &AuthNats,
    scratch: &Scratch,
    cluster: &str,
    second: &str,
    id: &str,
) -> Result<(Vec<NodeHandle>, Session)> {
    let a = nats.start_node(scratch, "registry-0", cluster).await?;
    let b = nats.start_node(scratch, second, cluster).await?;
    let mut provider = Session::open(&mut client(a.grpc_addr).await?, 0).await?;
    provider.upsert(instance("svc", id, 8000)).await?;
    eventually(&format!("{second} sees registry-0's instance"), PROMPTLY, || async {
        service_ids(b.grpc_addr, "svc").await.ok().filter(|ids| ids == &[id])
    })
    .await?;
    Ok((vec![a, b], provider))
}

async fn shutdown(nodes: Vec<NodeHandle>) {
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_logged_in_as_their_own_users_replicate() -> Result<()> {
    let nats = AuthNats::start().await?;
    let scratch = Scratch::new("replicate")?;
    let (mut nodes, provider) = two_nodes(&nats, &scratch, "own").await?;
    let mut other = Session::open(&mut client(nodes[1].grpc_addr).await?, 0).await?;
    other.upsert(instance("svc", "from-1", 8001)).await?;
    eventually("registry-0 sees registry-1's instance", PROMPTLY, || async {
        service_ids(nodes[0].grpc_addr, "svc").await.ok().filter(|ids| ids.len() == 2)
    })
    .await?;
    // A node that starts later pulls both slices: sync requests, and the
    // replies on its own inbox, which is all its user may read of _INBOX.
    nodes.push(nats.start_node(&scratch, "registry-2", "own").await?);
    assert_eq!(service_ids(nodes[2].grpc_addr, "svc").await?, ["from-1", "real"], "loaded from its peers");
    // The server refused nothing any node did: every beat and hello went
    // out (each node heard the others' within the run), and none was refused.
    for node in &nodes {
        ensure!(
            sync_metric(node, "nats_server_errors_total").await == Some(0),
            "the server refused something of {}",
            node.registry.config().node_id
        );
        ensure!(sync_metric(node, "forged_messages_total").await == Some(0));
    }
    provider.goodbye().await?;
    other.goodbye().await?;
    shutdown(nodes).await;
    Ok(())
}

/// A client logged in as registry-0 tries to speak as registry-1, with
/// messages registry-1 itself could have sent (its origin, its next seq):
/// receivers could not tell them apart, so the server must refuse them. It
/// does, says so, and nothing reaches the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_a_node_publishing_as_another() -> Result<()> {
    let cluster = "impostor";
    let nats = AuthNats::start().await?;
    let scratch = Scratch::new("impostor")?;
    let (nodes, provider) = two_nodes(&nats, &scratch, cluster).await?;
    let admin = nats.admin().await?;
    let mut bus = admin.subscribe(format!("registry.{cluster}.bus.>")).await?;
    admin.flush().await?;
    let victim = Subjects::new("registry", cluster, "registry-1");
    let own = Subjects::new("registry", cluster, "registry-0");
    // registry-1 has written nothing.
    let (origin, applied) = known_origin(&nodes[0], &nodes[1], 0).await?;
    let forged = [
        (victim.changes.clone(), batch_of(&origin, applied, "impostor")),
        (victim.beat.clone(), beat_of(&origin, applied)),
        (victim.hello.clone(), hello_of(&origin)),
    ];
    let garbage_before = sync_metric(&nodes[0], "garbage_messages_total").await.context("metrics")?;

    let (impostor, mut errors) = nats.connect("registry-0", nats.password("registry-0")).await?;
    for (subject, payload) in &forged {
        impostor.publish(subject.clone(), payload.clone()).await?;
    }
    // Nor may it read registry-1's replies.
    let _stolen = impostor.subscribe(format!("{}.>", victim.inbox)).await?;
    // Then something it may publish, after the rest on the same connection:
    // once that arrives, anything before it that the server let through has.
    let end = Bytes::from_static(b"end of the impostor's messages");
    impostor.publish(own.hello.clone(), end.clone()).await?;
    impostor.flush().await?;

    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(PROMPTLY, bus.next()).await.context("the impostor's last message")?;
        let msg = msg.context("subscription ended")?;
        if msg.payload == end {
            break;
        }
        seen.push(msg);
    }
    for msg in &seen {
        ensure!(
            forged.iter().all(|(_, payload)| *payload != msg.payload),
            "the server let a message through as registry-1 on {}",
            msg.subject
        );
    }

    // The server told the impostor, once for each.
    let mut refused: BTreeSet<String> = BTreeSet::new();
    let wanted: BTreeSet<String> = forged
        .iter()
        .map(|(s, _)| format!("Publish to \"{s}\""))
        .chain([format!("Subscription to \"{}.>\"", victim.inbox)])
        .collect();
    while !wanted.is_subset(&refused) {
        let Ok(Some(e)) = tokio::time::timeout(PROMPTLY, errors.recv()).await else {
            bail!("the server did not refuse everything: {refused:?}, wanted {wanted:?}");
        };
        ensure!(e.contains("Permissions Violation"), "another error: {e}");
        if let Some(what) = wanted.iter().find(|w| e.contains(w.as_str())) {
            refused.insert(what.clone());
        }
    }

    // The nodes heard only the end marker (garbage to them): nothing forged,
    // nothing of the impostor's applied.
    until_metric(&nodes[0], "garbage_messages_total", garbage_before + 1).await?;
    for node in &nodes {
        ensure!(sync_metric(node, "forged_messages_total").await == Some(0));
        ensure!(service_ids(node.grpc_addr, "svc").await? == ["real"]);
    }
    provider.goodbye().await?;
    shutdown(nodes).await;
    Ok(())
}

/// Messages that get past the server anyway (published by a user allowed
/// everything): registry-0's changes, beat and hello on registry-1's
/// subjects. Every receiver drops them and counts them as forged; the same
/// batch on registry-0's own subject would have been applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_message_that_gets_through_is_dropped_and_counted() -> Result<()> {
    let cluster = "forgery";
    let nats = AuthNats::start().await?;
    let scratch = Scratch::new("forgery")?;
    let (nodes, provider) = two_nodes(&nats, &scratch, cluster).await?;
    let admin = nats.admin().await?;
    let victim = Subjects::new("registry", cluster, "registry-1");
    let own = Subjects::new("registry", cluster, "registry-0");
    // registry-0 writes nothing more, so registry-1 expects its next seq.
    // registry-0 has written one batch: the registration of "real".
    let (origin, applied) = known_origin(&nodes[1], &nodes[0], 1).await?;
    let batch = batch_of(&origin, applied, "forged");
    let applied_before = sync_metric(&nodes[1], "batches_applied_total").await.context("metrics")?;

    admin.publish(victim.changes.clone(), batch.clone()).await?;
    admin.publish(victim.beat.clone(), beat_of(&origin, applied + 5)).await?;
    admin.publish(victim.hello.clone(), hello_of(&origin)).await?;
    admin.flush().await?;
    for node in &nodes {
        until_metric(node, "forged_messages_total", 3).await?;
        ensure!(service_ids(node.grpc_addr, "svc").await? == ["real"], "a forged instance is shown");
    }
    ensure!(sync_metric(&nodes[1], "batches_applied_total").await == Some(applied_before));
    let garbage = sync_metric(&nodes[1], "garbage_messages_total").await.context("metrics")?;
    ensure!(garbage >= 3, "forged messages count as garbage too: {garbage}");

    // The control: the same batch on its origin's own subject is applied,
    // so it was the subject check that kept it out above.
    admin.publish(own.changes.clone(), batch).await?;
    admin.flush().await?;
    until_metric(&nodes[1], "batches_applied_total", applied_before + 1).await?;
    ensure!(sync_metric(&nodes[1], "forged_messages_total").await == Some(3));
    provider.goodbye().await?;
    shutdown(nodes).await;
    Ok(())
}

/// TLS to NATS with client certificates, and nkey users: the server asks
/// every client for a certificate of the test's CA. Nodes given the CA,
/// their certificate and their nkey seed replicate; a client without a
/// certificate, or with one of another CA, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_nats_over_tls_with_client_certificates() -> Result<()> {
    let scratch = Scratch::new("tls")?;
    let ca = TestCa::new("registry test CA")?;
    let ca_file = ca.write(&scratch.0, "ca")?;
    let (server_cert, server_key) = ca.server()?.write(&scratch.0, "server")?;
    let mut users = String::new();
    let mut seeds = Vec::new();
    for node in &NODES[..2] {
        let user = nkeys::KeyPair::new_user();
        users.push_str(&format!("    {{ nkey: {} }}\n", user.public_key()));
        let seed = user.seed().map_err(|e| anyhow::anyhow!("nkey seed: {e}"))?;
        seeds.push(scratch.write(&format!("{node}.nk"), &format!("{seed}\n"))?);
    }
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n\
         authorization {{\n  users: [\n{users}  ]\n}}\n",
        server_cert.display(),
        server_key.display(),
        ca_file.display(),
    );
    let nats = NatsServer::start_configured(&config, Vec::new()).await?;

    let mut nodes = Vec::new();
    for (node, seed) in NODES[..2].iter().zip(&seeds) {
        let (cert, key) = ca.client(node, &[node], Validity::Current)?.write(&scratch.0, node)?;
        let mut config = cluster_config(node, &[nats.url()], "tls");
        config.sync.tls_ca_file = Some(ca_file.clone());
        config.sync.tls_cert_file = Some(cert);
        config.sync.tls_key_file = Some(key);
        config.sync.require_tls = true;
        config.sync.nkey_seed_file = Some(seed.clone());
        let n = start_node(config).await?;
        until_ready(&n).await?;
        nodes.push(n);
    }
    let mut provider = Session::open(&mut client(nodes[0].grpc_addr).await?, 0).await?;
    provider.upsert(instance("svc", "over-tls", 8443)).await?;
    eventually("registry-1 sees the instance over TLS", PROMPTLY, || async {
        service_ids(nodes[1].grpc_addr, "svc").await.ok().filter(|ids| ids == &["over-tls"])
    })
    .await?;

    // The server takes no client without a certificate of the CA, even
    // with a valid nkey.
    let seed = std::fs::read_to_string(&seeds[0])?.trim().to_string();
    let attempt = |options: async_nats::ConnectOptions| {
        let url = nats.url();
        async move { tokio::time::timeout(PROMPTLY, options.connect(url)).await.map(|r| r.is_ok()) }
    };
    let no_cert = async_nats::ConnectOptions::with_nkey(seed.clone()).add_root_certificates(ca_file.clone());
    ensure!(attempt(no_cert).await != Ok(true), "a client without a certificate was let in");
    let other = TestCa::new("another CA")?;
    let (cert, key) = other.client("registry-0", &["registry-0"], Validity::Current)?.write(&scratch.0, "other")?;
    let wrong_ca = async_nats::ConnectOptions::with_nkey(seed)
        .add_root_certificates(ca_file.clone())
        .add_client_certificate(cert, key);
    ensure!(attempt(wrong_ca).await != Ok(true), "a certificate of another CA was let in");

    provider.goodbye().await?;
    shutdown(nodes).await;
    Ok(())
}

/// Rotating NATS passwords needs no node restart: the nodes' password files
/// are rewritten, then nats-server restarts with the new passwords only;
/// the nodes log in again with what their files say now, and replicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_nats_passwords_are_read_again_at_the_next_reconnect() -> Result<()> {
    let mut nats = AuthNats::start().await?;
    let scratch = Scratch::new("rotate")?;
    // Both read their password from a file (registry-1 takes it from the
    // environment, which only a restart changes).
    let (nodes, mut provider) = two_nodes_as(&nats, &scratch, "rotate", "registry-2", "before").await?;
    let old = nats.password("registry-0").to_string();
    nats.rotate_by_restart(&scratch).await?;
    ensure!(nats.connect("registry-0", &old).await.is_err(), "the old password still works");
    provider.upsert(instance("svc", "after", 8001)).await?;
    eventually("registry-2 sees the change made after the rotation", std::time::Duration::from_secs(20), || async {
        service_ids(nodes[1].grpc_addr, "svc").await.ok().filter(|ids| ids == &["after", "before"])
    })
    .await?;
    provider.goodbye().await?;
    shutdown(nodes).await;
    Ok(())
}

/// Rotation as OPERATIONS.md's runbook does it: the nodes' password files
/// are rewritten, then nats-server reloads (`--signal reload`) a
/// configuration with the new passwords only, and goes on running. The
/// reload itself closes the connections whose login no longer holds (the
/// nodes'), not the others (the admin's); the nodes log in again with what
/// their files say now and replicate. A node that kept the password it read
/// at start would be refused at every reconnect and never hear the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_reload_cuts_off_old_logins_and_nodes_log_in_again_from_their_files() -> Result<()> {
    let mut nats = AuthNats::start().await?;
    let scratch = Scratch::new("reload")?;
    // Both read their password from a file (see the restart test above).
    let (nodes, mut provider) = two_nodes_as(&nats, &scratch, "reload", "registry-2", "before").await?;
    // A login the new configuration keeps.
    let admin = nats.admin().await?;
    admin.flush().await?;
    let logins = nats.server.logins().await?;
    let cids = |user: &str| logins.iter().filter(|l| l.user == user).map(|l| l.cid).collect::<Vec<_>>();
    let (node_cids, admin_cids) = ([cids("registry-0"), cids("registry-2")].concat(), cids("admin"));
    ensure!(node_cids.len() == 2 && admin_cids.len() == 1, "one connection per node and the admin's: {logins:?}");
    let mut counts = Vec::new();
    for node in &nodes {
        let count = |name| async move { sync_metric(node, name).await.context("metrics") };
        counts.push((count("disconnects_total").await?, count("nats_server_errors_total").await?));
    }
    let (pid, before) = (nats.server.pid(), nats.server.varz().await?);
    let old = nats.password("registry-0").to_string();

    nats.rotate_by_reload(&scratch).await?;

    // Reloaded, not restarted: the same process, and the same server in it.
    let after = nats.server.varz().await?;
    ensure!(nats.server.pid() == pid && nats.server.running(), "nats-server process {pid} is gone");
    ensure!(
        (&after.server_id, &after.start) == (&before.server_id, &before.start),
        "nats-server restarted: {before:?}, then {after:?}"
    );
    ensure!(nats.connect("registry-0", &old).await.is_err(), "the old password still works");
    // The server cut the nodes off, and only them.
    let now = eventually("the reload closes the nodes' connections", PROMPTLY, || async {
        nats.server.logins().await.ok().filter(|now| now.iter().all(|l| !node_cids.contains(&l.cid)))
    })
    .await?;
    ensure!(
        now.iter().any(|l| admin_cids.contains(&l.cid)),
        "the reload closed a connection whose login still holds: {now:?}"
    );
    for (node, (disconnects, _)) in nodes.iter().zip(&counts) {
        until_metric(node, "disconnects_total", disconnects + 1).await?;
        let what = format!("{} is connected to NATS again", node.registry.config().node_id);
        eventually(&what, PROMPTLY, || async { sync_metric(node, "bus_connected").await.filter(|c| *c == 1) }).await?;
    }
    // On their new logins, they replicate.
    provider.upsert(instance("svc", "after", 8001)).await?;
    eventually("registry-2 sees the change made after the reload", PROMPTLY, || async {
        service_ids(nodes[1].grpc_addr, "svc").await.ok().filter(|ids| ids == &["after", "before"])
    })
    .await?;
    // Unlike a restart, which just drops the connections, the reload tells
    // each node why it cuts it off: an `Authorization Violation`, counted
    // as an error from the server. Once, and nothing since: the server
    // refused nothing the nodes did on their new logins.
    for (node, (_, errors)) in nodes.iter().zip(&counts) {
        let now = sync_metric(node, "nats_server_errors_total").await;
        ensure!(
            now == Some(errors + 1),
            "{} counts {now:?} NATS errors, {errors} before",
            node.registry.config().node_id
        );
    }
    provider.goodbye().await?;
    shutdown(nodes).await;
    Ok(())
}

/// A credential file that cannot be read stops the node at start with an
/// error naming it, instead of failing every reconnect in the background.
#[tokio::test]
async fn an_unreadable_nats_secret_is_a_start_error_naming_the_file() -> Result<()> {
    let scratch = Scratch::new("missing")?;
    let missing = scratch.0.join("no-such-password");
    let mut config = cluster_config("registry-0", &["nats://127.0.0.1:1".into()], "missing");
    config.sync.user = Some("registry-0".into());
    config.sync.password_file = Some(missing.clone());
    let err = match start_node(config).await {
        Ok(node) => {
            node.shutdown().await;
            bail!("started without its password");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains(&missing.display().to_string()) && err.contains("password"), "{err}");

    let garbage = scratch.write("not-a-certificate.pem", "hello")?;
    let mut config = cluster_config("registry-0", &["nats://127.0.0.1:1".into()], "missing");
    config.sync.tls_ca_file = Some(garbage.clone());
    let err = match start_node(config).await {
        Ok(node) => {
            node.shutdown().await;
            bail!("started with a CA file that holds no certificate");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains(&garbage.display().to_string()) && err.contains("CA file"), "{err}");
    Ok(())
}

/// The node binary takes the NATS password from `REGISTRY_NATS_PASSWORD`
/// and never prints it (`--check-config` prints the effective config); a
/// password without a user is refused, naming the setting, with exit 64.
#[test]
fn a_nats_password_from_the_environment_is_taken_and_never_printed() -> Result<()> {
    let password = nats_password();
    let run = |user: Option<&str>| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new(registry_tests::procs::node_bin()?);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("REGISTRY_")) {
            cmd.env_remove(k);
        }
        cmd.args(["--check-config", "--nats-url", "nats://127.0.0.1:4222"]).env("REGISTRY_NATS_PASSWORD", &password);
        if let Some(user) = user {
            cmd.env("REGISTRY_NATS_USER", user);
        }
        Ok(cmd.output()?)
    };
    let out = run(Some("registry-0"))?;
    let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
    ensure!(out.status.success(), "{stderr}");
    ensure!(stdout.contains("user = \"registry-0\""), "the effective config has the user: {stdout}");
    ensure!(!stdout.contains(&password) && !stderr.contains(&password), "the password was printed");

    let out = run(None)?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.code() == Some(64), "refused with 64: {:?}", out.status);
    ensure!(stderr.contains("sync.user") && !stderr.contains(&password), "{stderr}");
    Ok(())
}
