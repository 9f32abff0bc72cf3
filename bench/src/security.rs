//! What `--tls` and `--token` ask of a run: certificates and a token made at
//! start, the config sections that make every node require them, and the
//! channels that meet them. Without either flag, nodes get no section and
//! clients connect in plaintext, as before the flags existed.
//!
//! Nothing here is a fixed secret: the CA, the server key and the token are
//! made when the bench starts, and the files are removed when it ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use registry_proto::v1;
use registry_tests::pki::{ClientTls, TestCa, cert_dir};
use registry_tests::procs::NodeProc;
use registry_tests::secure::{Access, register_access};
use sha2::{Digest as _, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A channel to a node that carries the run's token, if it has one.
pub(crate) type NodeChannel = InterceptedService<Channel, Bearer>;
/// The registry client every scenario uses.
pub(crate) type Client = v1::registry_client::RegistryClient<NodeChannel>;

/// The security of one run.
pub(crate) struct Security {
    tls: Option<ServerTls>,
    token: Option<String>,
    bearer: Bearer,
}

/// The CA and server certificate of a `--tls` run, in a directory of their own.
struct ServerTls {
    dir: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// What clients trust: the CA.
    client: ClientTls,
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Security {
    /// `tls`: a CA and a server certificate for localhost and 127.0.0.1, made
    /// now. `token`: 32 random bytes (hex), made now; nodes know its SHA-256.
    pub(crate) fn new(tls: bool, token: bool) -> Result<Self> {
        let tls = if tls {
            let ca = TestCa::new("registry-bench CA")?;
            let dir = cert_dir("bench")?;
            let (cert_file, key_file) = ca.server()?.write(&dir, "server")?;
            Some(ServerTls { dir, cert_file, key_file, client: ClientTls::trusting(&ca) })
        } else {
            None
        };
        let token = token.then(|| hex(&rand::random::<[u8; 32]>()));
        let bearer = Bearer::new(token.as_deref())?;
        Ok(Self { tls, token, bearer })
    }

    /// Which mode is measured, for the result rows.
    pub(crate) fn label(&self) -> Option<&'static str> {
        match (self.tls.is_some(), self.token.is_some()) {
            (false, false) => None,
            (true, false) => Some("TLS"),
            (false, true) => Some("token"),
            (true, true) => Some("TLS + token"),
        }
    }

    /// The `[tls]` and `[auth]` sections every node of the run gets.
    pub(crate) fn node_config(&self) -> Result<String> {
        let mut config = String::new();
        if let Some(tls) = &self.tls {
            config.push_str(&format!(
                "[tls]\ncert_file = {}\nkey_file = {}\n",
                toml_literal(&tls.cert_file)?,
                toml_literal(&tls.key_file)?
            ));
        }
        if let Some(token) = &self.token {
            let sha256 = hex(&Sha256::digest(token.as_bytes()));
            config.push_str(&format!(
                "[auth]\nmode = \"enforce\"\n[[auth.tokens]]\nname = \"bench\"\nsha256 = \"{sha256}\"\n\
                 grants = [{{ namespace = \"*\", services = \"*\", role = \"admin\" }}]\n"
            ));
        }
        Ok(config)
    }

    /// With TLS, tells the test kit that `node`'s ports speak TLS trusting
    /// the run's CA, so its readiness and metrics probes use HTTPS.
    pub(crate) fn register(&self, node: &NodeProc) {
        if let Some(tls) = &self.tls {
            let access = Access { tls: tls.client.clone(), token: self.token.clone().unwrap_or_default() };
            register_access(&[node.grpc, node.http], Arc::new(access));
        }
    }

    /// A connected channel to a node's gRPC port.
    pub(crate) async fn channel(&self, addr: SocketAddr) -> Result<NodeChannel> {
        Ok(InterceptedService::new(self.bare_channel(addr).await?, self.bearer.clone()))
    }

    async fn bare_channel(&self, addr: SocketAddr) -> Result<Channel> {
        match &self.tls {
            Some(tls) => tls.client.channel(addr).await,
            None => registry_tests::channel(addr).await,
        }
    }

    /// With a token, checks that the node at `addr` refuses a caller without
    /// it, so a row that says "token" measured a node with auth on. (TLS
    /// needs no such check: a plaintext port would have failed the
    /// handshake of every probe and channel.)
    pub(crate) async fn check_enforced(&self, addr: SocketAddr) -> Result<()> {
        if self.token.is_none() {
            return Ok(());
        }
        let mut anonymous = v1::registry_client::RegistryClient::new(self.bare_channel(addr).await?);
        match anonymous.list_services(v1::ListServicesRequest::default()).await {
            Err(status) if status.code() == Code::Unauthenticated => Ok(()),
            other => bail!("the node at {addr} answered a caller without the token: {other:?}"),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request; nothing without a
/// token.
#[derive(Clone, Default)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: Option<&str>) -> Result<Self> {
        let Some(token) = token else { return Ok(Self::default()) };
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}").try_into().context("token header")?;
        // As registry-client sends it: never indexed by HTTP/2 header compression.
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `path` as a TOML literal string ('...', no escapes).
fn toml_literal(path: &Path) -> Result<String> {
    match path.to_str() {
        Some(p) if !p.contains(['\'', '\n', '\r']) => Ok(format!("'{p}'")),
        _ => bail!("{} cannot be written into a TOML config; set TMPDIR to a plainer directory", path.display()),
    }
}
