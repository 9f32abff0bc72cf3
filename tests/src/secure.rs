//! Nodes with TLS and auth on, for the fault suite: a CA and certificates
//! made at run time, a random token for the providers and consumers (write
//! on everything), and a client certificate for the checker (admin), so
//! every path a scenario uses (the client library with a token, raw gRPC and
//! HTTPS with mTLS) runs authenticated and encrypted.
//!
//! The harness's helpers ([`crate::channel`], [`crate::http_get`], the fault
//! clients) look a node's address up here: a port registered with an
//! [`Access`] is reached over TLS with its credentials, any other port in
//! plaintext. Ports are never handed out twice in a test process (see
//! `free_port`), so an entry never outlives its node's meaning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use anyhow::Result;
use parking_lot::Mutex;
use registry_node::auth::tokens::sha256_hex;

use crate::pki::{ClientTls, TestCa, Validity, cert_dir};

/// How to reach a secured node: the CA and client certificate (mTLS, an
/// admin principal) for the harness's own checks, and the token of its
/// providers and consumers.
#[derive(Clone, Debug)]
pub struct Access {
    pub tls: ClientTls,
    pub token: String,
}

static ACCESS: LazyLock<Mutex<HashMap<u16, Arc<Access>>>> = LazyLock::new(Mutex::default);

/// The credentials of the node listening on `port`, if it is secured.
pub fn access(port: u16) -> Option<Arc<Access>> {
    ACCESS.lock().get(&port).cloned()
}

/// The credentials of the node an endpoint (`https://host:port`) names.
pub fn access_of_endpoint(endpoint: &str) -> Option<Arc<Access>> {
    endpoint.rsplit(':').next()?.trim_end_matches('/').parse().ok().and_then(access)
}

/// The material of a secured cluster.
pub struct Secure {
    access: Arc<Access>,
    dir: PathBuf,
}

impl Secure {
    /// A CA, a server certificate for 127.0.0.1/localhost, the checker's
    /// client certificate and a token, all made now.
    pub fn new(name: &str) -> Result<Self> {
        let ca = TestCa::new(&format!("{name} CA"))?;
        let dir = cert_dir(name)?;
        ca.server()?.write(&dir, "server")?;
        ca.write(&dir, "ca")?;
        let checker = ca.client("fault-checker", &[], Validity::Current)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let access = Access { tls: ClientTls::trusting(&ca).with_identity(checker), token };
        Ok(Self { access: Arc::new(access), dir })
    }

    /// The `[tls]` and `[auth]` sections of every node (TOML, to append to
    /// a node config).
    pub fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            "\n[tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nclient_ca_file = \"{d}/ca.pem\"\n\
             client_auth = \"optional\"\n\n[auth]\nmode = \"enforce\"\n\n[[auth.tokens]]\nname = \"fault-clients\"\n\
             sha256 = \"{}\"\ngrants = [{{ namespace = \"*\", services = \"*\", role = \"write\" }}]\n\n\
             [[auth.certs]]\nname = \"fault-checker\"\nsubject = \"fault-checker\"\n\
             grants = [{{ namespace = \"*\", services = \"*\", role = \"admin\" }}]\n",
            sha256_hex(self.access.token.as_bytes())
        )
    }

    /// Registers the node at `addrs` as secured with this material.
    pub fn register(&self, addrs: &[SocketAddr]) {
        register_access(addrs, self.access.clone());
    }
}

/// Registers the node at `addrs` as secured with `access`, material made
/// elsewhere (the bench's `--tls`): the harness's helpers then reach it
/// over TLS.
pub fn register_access(addrs: &[SocketAddr], access: Arc<Access>) {
    let mut all = ACCESS.lock();
    for a in addrs {
        all.insert(a.port(), access.clone());
    }
}
