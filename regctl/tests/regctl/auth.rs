//! `regctl token new`, `--token` / `REGISTRY_TOKEN`, and exit code 77.
//!
//! No node checks tokens yet, so the node here is a scripted one that does
//! what the contract says a node does: it holds only the SHA-256 of the
//! token it knows, answers UNAUTHENTICATED to a call without a known token
//! and PERMISSION_DENIED to a known one without the grant.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use registry_proto::v1::cluster_server::{Cluster, ClusterServer};
use registry_proto::v1::{self};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What one run of regctl did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs regctl to completion, with `env` set and no ambient token.
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_regctl"))
        .args(args)
        .env_remove("REGISTRY_ENDPOINT")
        .env_remove("REGISTRY_TOKEN")
        .env_remove("REGISTRY_CA_FILE")
        .env_remove("REGISTRY_CERT")
        .env_remove("REGISTRY_KEY")
        .env_remove("REGISTRY_TLS_DOMAIN")
        .envs(env.iter().copied())
        .output()
        .expect("regctl runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn run_async(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env)
    })
    .await
    .expect("join")
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// (token, the TOML after it) of `regctl token new`'s text output.
fn split_text(stdout: &str) -> (String, toml::Table) {
    let (first, rest) = stdout.split_once('\n').expect("two parts");
    let token = first
        .strip_prefix("token: ")
        .and_then(|t| t.strip_suffix("   (shown once; store it in your secret manager)"))
        .expect("the token line")
        .to_string();
    assert!(rest.starts_with("\n[[auth.tokens]]\n"), "{rest}");
    (token, toml::from_str(rest).expect("valid TOML"))
}

fn assert_32_random_bytes(token: &str) {
    // The prefix keeps a token from ever starting with `-` (read as a flag).
    let body = token.strip_prefix("rgt_").expect("the rgt_ prefix");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).expect("base64url without padding");
    assert_eq!(bytes.len(), 32);
}

#[test]
fn token_new_prints_a_token_and_the_config_entry_with_its_sha256() {
    // Needs no node: nothing listens at this endpoint.
    let r = run(
        &[
            "--endpoint",
            "http://127.0.0.1:1",
            "token",
            "new",
            "--name",
            "orders-team",
            "--grant",
            "default:orders*:write",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (token, config) = split_text(&r.stdout);
    assert_32_random_bytes(&token);
    let entries = config["auth"]["tokens"].as_array().expect("[[auth.tokens]]");
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry["name"].as_str(), Some("orders-team"));
    assert_eq!(entry["sha256"].as_str(), Some(sha256_hex(&token).as_str()));
    let grants = entry["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 1);
    assert_eq!(
        (grants[0]["namespace"].as_str(), grants[0]["services"].as_str(), grants[0]["role"].as_str()),
        (Some("default"), Some("orders*"), Some("write"))
    );
    // The token is shown once: only on its own line.
    assert_eq!(r.stdout.matches(&token).count(), 1);

    let again = run(&["token", "new", "--name", "orders-team", "--grant", "default:orders*:write"], &[]);
    assert_eq!(again.code, 0);
    let (other, _) = split_text(&again.stdout);
    assert_ne!(token, other, "two runs, two tokens");
}

#[test]
fn token_new_takes_several_grants_and_escapes_the_name() {
    let r = run(
        &["token", "new", "--name", "ops team \\ eu", "--grant", "*:*:read", "--grant", "prod:payments:admin"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (_, config) = split_text(&r.stdout);
    let entry = &config["auth"]["tokens"][0];
    assert_eq!(entry["name"].as_str(), Some("ops team \\ eu"));
    let grants: Vec<(&str, &str, &str)> = entry["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| {
            let s = |k: &str| g[k].as_str().expect("a string");
            (s("namespace"), s("services"), s("role"))
        })
        .collect();
    assert_eq!(grants, [("*", "*", "read"), ("prod", "payments", "admin")]);
}

#[test]
fn token_new_json_is_one_object() {
    let r = run(&["--json", "token", "new", "--name", "ci", "--grant", "default:*:read"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    let token = v["token"].as_str().expect("token");
    assert_32_random_bytes(token);
    assert_eq!(v["name"], "ci");
    assert_eq!(v["sha256"].as_str(), Some(sha256_hex(token).as_str()));
    assert_eq!(v["grants"], serde_json::json!([{ "namespace": "default", "services": "*", "role": "read" }]));
}

#[test]
fn token_new_refuses_bad_grants_and_names_with_exit_2() {
    let bad_grants = [
        "default:orders",
        "default:orders:write:more",
        "default:orders:owner",
        "default:orders:",
        ":orders:read",
        "default::read",
        "default:*orders:read",
        "default:or*ders:read",
        "de fault:orders:read",
    ];
    for grant in bad_grants {
        let r = run(&["token", "new", "--name", "x", "--grant", grant], &[]);
        assert_eq!(r.code, 2, "{grant}: {}", r.stdout);
        assert!(r.stderr.contains("--grant"), "{grant}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "no token for a bad grant: {}", r.stdout);
    }
    for name in ["", " ", "a\"b", "it's"] {
        let r = run(&["token", "new", "--name", name, "--grant", "default:orders:read"], &[]);
        assert_eq!(r.code, 2, "{name:?}: {}", r.stdout);
        assert!(r.stdout.is_empty());
    }
    // A grant is required.
    let r = run(&["token", "new", "--name", "x"], &[]);
    assert_eq!(r.code, 2);
}

/// A node that knows one token by its SHA-256, whose grants do not cover
/// `Members`; records the `authorization` of every call.
async fn node(known_sha256: String, seen: Arc<Mutex<Vec<Option<String>>>>) -> SocketAddr {
    struct Members;

    #[tonic::async_trait]
    impl Cluster for Members {
        async fn members(&self, _: Request<v1::MembersRequest>) -> Result<Response<v1::MembersResponse>, Status> {
            Ok(Response::new(v1::MembersResponse::default()))
        }
    }

    let check = move |request: Request<()>| {
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(String::from);
        seen.lock().expect("lock").push(authorization.clone());
        match authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
            None => Err(Status::unauthenticated("missing bearer token")),
            Some(token) if sha256_hex(token) == known_sha256 => {
                Err(Status::permission_denied("token `ci` has no admin grant (cluster members)"))
            }
            Some(_) => Err(Status::unauthenticated("unknown token")),
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterServer::with_interceptor(Members, check))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_exit_77_and_the_token_is_sent_but_never_shown() {
    let made = run_async(&["--json", "token", "new", "--name", "ci", "--grant", "default:*:read"], &[]).await;
    let made: Value = serde_json::from_str(&made.stdout).expect("JSON");
    let token = made["token"].as_str().expect("token").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = node(made["sha256"].as_str().expect("sha256").to_string(), seen.clone()).await;
    let ep = format!("http://{addr}");
    let never_shown = |r: &Run| {
        assert!(!r.stdout.contains(&token) && !r.stderr.contains(&token), "{}\n{}", r.stdout, r.stderr);
    };

    // No token: UNAUTHENTICATED, 77, and a hint to give one.
    let r = run_async(&["--endpoint", &ep, "members"], &[]).await;
    assert_eq!(r.code, 77, "{}", r.stderr);
    assert!(r.stderr.contains("unauthenticated: missing bearer token"), "{}", r.stderr);
    assert!(r.stderr.contains("--token or REGISTRY_TOKEN"), "{}", r.stderr);

    // The known token, by flag: sent, PERMISSION_DENIED with the node's words, 77.
    let r = run_async(&["--endpoint", &ep, "members", "--token", &token], &[]).await;
    assert_eq!(r.code, 77, "{}", r.stderr);
    assert!(r.stderr.contains("permission denied: token `ci` has no admin grant (cluster members)"), "{}", r.stderr);
    never_shown(&r);

    // By environment, with --json.
    let r = run_async(&["--endpoint", &ep, "--json", "members"], &[("REGISTRY_TOKEN", &token)]).await;
    assert_eq!(r.code, 77, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["exit_code"], 77);
    assert!(v["error"].as_str().is_some_and(|e| e.starts_with("permission denied")), "{v}");
    assert!(v["hint"].as_str().is_some_and(|h| h.contains("grant")), "{v}");
    never_shown(&r);

    // Another token: unknown to the node.
    let other = format!("{token}x");
    let r = run_async(&["--endpoint", &ep, "members"], &[("REGISTRY_TOKEN", &other)]).await;
    assert_eq!(r.code, 77, "{}", r.stderr);
    assert!(r.stderr.contains("does not accept this token"), "{}", r.stderr);
    assert!(!r.stderr.contains(&other));

    let bearer = format!("Bearer {token}");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 4, "one call each, no retries: {}", seen.len());
    assert_eq!(seen[0], None);
    assert_eq!((seen[1].as_deref(), seen[2].as_deref()), (Some(bearer.as_str()), Some(bearer.as_str())));

    // A token that cannot be sent: usage, without repeating it; nothing sent.
    let unsendable = format!("two {token}");
    let r = run_async(&["--endpoint", &ep, "members"], &[("REGISTRY_TOKEN", &unsendable)]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("invalid bearer token"), "{}", r.stderr);
    never_shown(&r);
}

#[test]
fn help_does_not_show_the_token_from_the_environment() {
    let token = format!("env-{}", std::process::id());
    let r = run(&["--help"], &[("REGISTRY_TOKEN", &token)]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("--token") && r.stdout.contains("REGISTRY_TOKEN") && r.stdout.contains("77"));
    assert!(!r.stdout.contains(&token), "{}", r.stdout);
}
