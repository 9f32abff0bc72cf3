//! The cost of authentication and authorization per request: hashing a
//! bearer token and finding its principal among many (constant time over all
//! of them), finding the principal of a client certificate's names, and
//! checking a grant.
//!
//! `cargo bench -p registry-node --bench auth`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use registry_node::auth::tokens::sha256_hex;
use registry_node::auth::{Auth, AuthMode, CertEntry, Grant, Role, TokenEntry, Tokens};

fn entries(n: usize) -> Vec<TokenEntry> {
    (0..n)
        .map(|i| TokenEntry {
            name: format!("team-{i}"),
            sha256: sha256_hex(format!("token-{i}").as_bytes()),
            grants: vec![
                Grant { namespace: "default".into(), services: format!("svc-{i}*"), role: Role::Write },
                Grant { namespace: "prod".into(), services: "*".into(), role: Role::Read },
            ],
        })
        .collect()
}

fn auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth");
    for n in [10, 100, 1_000] {
        let certs: Vec<CertEntry> = entries(n)
            .into_iter()
            .enumerate()
            .map(|(i, e)| CertEntry { name: e.name, subject: format!("svc-{i}.prod"), grants: e.grants })
            .collect();
        let tokens = Tokens::new(&entries(n)).and_then(|t| t.with_certs(&certs)).expect("tokens");
        let auth = Auth::new(AuthMode::Enforce, tokens);
        let header = format!("Bearer token-{}", n / 2);
        g.bench_function(format!("authenticate, {n} principals"), |b| {
            b.iter(|| auth.authenticate(Some(black_box(header.as_bytes())), &[], None).expect("known"))
        });
        // A client certificate's names: its CN, then a SAN that matches.
        let names: Vec<Box<str>> = vec!["some-cn".into(), format!("svc-{}.prod", n / 2).into()];
        g.bench_function(format!("authenticate by client certificate, {n} principals"), |b| {
            b.iter(|| auth.authenticate(None, black_box(&names), None).expect("known"))
        });
        let caller = auth.authenticate(Some(header.as_bytes()), &[], None).expect("known");
        let service = format!("svc-{}-orders", n / 2);
        g.bench_function(format!("check a grant, {n} principals"), |b| {
            b.iter(|| auth.check(&caller, Role::Write, black_box("default"), black_box(&service)).expect("granted"))
        });
    }
    g.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
