//! Roles and grants. A grant gives a role on a namespace (a name or `*`) and
//! a set of services (a name, a prefix ending in `*`, or `*`); a principal's
//! grants add up, and a higher role includes the lower ones.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a grant allows, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GetService, Subscribe, ListServices and ListConsumers of what it covers.
    Read,
    /// Read, plus registering, renewing and deregistering instances.
    Write,
    /// Everything in the namespace, including others' instances, Members
    /// and the admin HTTP endpoints.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

/// One grant, as written in the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub namespace: String,
    pub services: String,
    pub role: Role,
}

impl Grant {
    /// Checks the patterns: `namespace` a name or `*`; `services` a name, a
    /// prefix ending in `*`, or `*`. A `*` anywhere else is refused rather
    /// than read as a glob it is not.
    pub fn validate(&self) -> Result<(), String> {
        let ns = &self.namespace;
        if ns.is_empty() || (ns != "*" && ns.contains('*')) {
            return Err(format!("namespace {ns:?} must be a name or \"*\""));
        }
        let s = &self.services;
        let stars = s.matches('*').count();
        if s.is_empty() || stars > 1 || (stars == 1 && !s.ends_with('*')) {
            return Err(format!("services {s:?} must be a name, a prefix ending in \"*\", or \"*\""));
        }
        if s.chars().chain(ns.chars()).any(|c| c.is_whitespace() || c.is_control()) {
            return Err("namespace and services hold no whitespace".into());
        }
        Ok(())
    }

    fn covers_namespace(&self, namespace: &str) -> bool {
        self.namespace == "*" || self.namespace == namespace
    }

    fn covers(&self, namespace: &str, service: &str) -> bool {
        self.covers_namespace(namespace)
            && match self.services.strip_suffix('*') {
                Some(prefix) => service.starts_with(prefix),
                None => self.services == service,
            }
    }
}

/// An authenticated caller: a name and its grants.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Whether some grant gives at least `role` on `namespace`/`service`.
    /// An admin of a namespace may do everything in it, whatever its
    /// services pattern says.
    pub fn may(&self, role: Role, namespace: &str, service: &str) -> bool {
        self.grants.iter().any(|g| {
            (g.role >= role && g.covers(namespace, service)) || (g.role == Role::Admin && g.covers_namespace(namespace))
        })
    }

    /// Whether some grant gives at least `role` on some service of `namespace`.
    pub fn holds_in(&self, role: Role, namespace: &str) -> bool {
        self.grants.iter().any(|g| g.role >= role && g.covers_namespace(namespace))
    }

    /// Whether some grant gives at least `role`, anywhere.
    pub fn holds_anywhere(&self, role: Role) -> bool {
        self.grants.iter().any(|g| g.role >= role)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn grant(namespace: &str, services: &str, role: Role) -> Grant {
        Grant { namespace: namespace.into(), services: services.into(), role }
    }

    fn principal(grants: Vec<Grant>) -> Principal {
        Principal { name: "p".into(), grants }
    }

    #[test]
    fn patterns_match_names_prefixes_and_everything() {
        let p = principal(vec![grant("default", "orders*", Role::Write), grant("prod", "billing", Role::Read)]);
        assert!(p.may(Role::Write, "default", "orders"));
        assert!(p.may(Role::Write, "default", "orders-eu"));
        assert!(!p.may(Role::Write, "default", "order"), "a prefix is a prefix");
        assert!(!p.may(Role::Write, "other", "orders"), "another namespace");
        assert!(p.may(Role::Read, "prod", "billing"));
        assert!(!p.may(Role::Write, "prod", "billing"), "read is not write");
        assert!(!p.may(Role::Read, "prod", "billing-2"), "an exact name is exact");
        let all = principal(vec![grant("*", "*", Role::Read)]);
        assert!(all.may(Role::Read, "any", "thing") && !all.may(Role::Write, "any", "thing"));
    }

    #[test]
    fn grants_add_up_and_an_admin_holds_the_whole_namespace() {
        let p = principal(vec![grant("default", "a*", Role::Read), grant("default", "a1", Role::Write)]);
        assert!(p.may(Role::Write, "default", "a1"));
        assert!(!p.may(Role::Write, "default", "a2"));
        let admin = principal(vec![grant("prod", "x", Role::Admin)]);
        assert!(admin.may(Role::Write, "prod", "anything"), "admin is everything in the namespace");
        assert!(!admin.may(Role::Read, "default", "x"));
        assert!(admin.holds_anywhere(Role::Admin) && !p.holds_anywhere(Role::Admin));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (ns, svc) in
            [("", "a"), ("de*", "a"), ("default", ""), ("default", "*a"), ("default", "a*b*"), ("d f", "a")]
        {
            assert!(grant(ns, svc, Role::Read).validate().is_err(), "{ns:?} {svc:?}");
        }
        for (ns, svc) in [("*", "*"), ("default", "orders*"), ("prod", "billing")] {
            grant(ns, svc, Role::Read).validate().expect("valid");
        }
    }

    proptest! {
        /// A valid grant never allows a service outside its pattern, and
        /// always allows what it names.
        #[test]
        fn a_grant_covers_exactly_its_pattern(
            prefix in "[a-z]{0,6}", star in any::<bool>(), service in "[a-z]{0,8}", ns in "[a-z]{1,4}",
        ) {
            let services = if star { format!("{prefix}*") } else { prefix.clone() };
            let g = grant(&ns, &services, Role::Write);
            if g.validate().is_ok() {
                let p = principal(vec![g]);
                let expected = if star { service.starts_with(&prefix) } else { service == prefix };
                prop_assert_eq!(p.may(Role::Write, &ns, &service), expected);
                prop_assert!(!p.may(Role::Admin, &ns, &service));
                let other = format!("{ns}x");
                prop_assert!(!p.may(Role::Read, &other, &service));
            }
        }
    }
}
