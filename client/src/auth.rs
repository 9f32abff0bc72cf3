//! Credentials: the bearer token on every request to a node.
//!
//! Every channel to a node is a [`NodeChannel`], a tonic channel behind the
//! [`Credentials`] interceptor, and the generated clients are only ever built
//! over one ([`crate::client::registry_client`], the cluster client). So unary
//! calls, `Register` sessions, `Subscribe` streams and `Members`, on the first
//! try and on every fail-over or reconnect, all carry the same
//! `authorization: Bearer <token>`, and no call site can forget it.

use std::fmt;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::config::BearerToken;
use crate::error::{Error, Result};

/// A channel to one node that sends the client's credentials.
pub(crate) type NodeChannel = InterceptedService<Channel, Credentials>;

/// The metadata key of the credentials.
const AUTHORIZATION: &str = "authorization";

/// Adds `authorization: Bearer <token>` to every request (nothing without a
/// token). Cheap to clone: the header value is shared.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// The credentials for `token`. A token that cannot be a header value
    /// (empty, spaces, control or non-ASCII characters) is refused with
    /// [`Error::InvalidToken`], which does not repeat it.
    pub(crate) fn new(token: Option<&BearerToken>) -> Result<Self> {
        let Some(token) = token else { return Ok(Self::default()) };
        let secret = token.secret();
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidToken);
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {secret}").try_into().map_err(|_| Error::InvalidToken)?;
        // Kept out of HTTP/2 header compression tables, and shown as
        // "Sensitive" by the value's own Debug.
        value.set_sensitive(true);
        Ok(Self { authorization: Some(value) })
    }

    /// `channel` with these credentials on every request.
    pub(crate) fn wrap(&self, channel: Channel) -> NodeChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bearer = if self.authorization.is_some() { "<redacted>" } else { "none" };
        f.debug_struct("Credentials").field("bearer", &format_args!("{bearer}")).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intercept(credentials: &Credentials) -> Option<String> {
        let mut c = credentials.clone();
        let request = c.call(Request::new(())).expect("never refuses");
        request.metadata().get(AUTHORIZATION).map(|v| v.to_str().expect("ascii").to_string())
    }

    #[test]
    fn every_request_gets_the_bearer_token() {
        let secret = format!("t-{}", rand::random::<u64>());
        let credentials = Credentials::new(Some(&BearerToken::new(secret.as_str()))).expect("valid");
        assert_eq!(intercept(&credentials), Some(format!("Bearer {secret}")));
        // Clones (one per channel) send the same.
        assert_eq!(intercept(&credentials.clone()), Some(format!("Bearer {secret}")));
        assert!(!format!("{credentials:?}").contains(&secret));
    }

    #[test]
    fn no_token_no_header() {
        assert_eq!(intercept(&Credentials::new(None).expect("valid")), None);
    }

    #[test]
    fn tokens_that_cannot_be_a_header_are_refused_without_repeating_them() {
        for bad in ["", "two words", "tab\there", "new\nline", "caf\u{e9}"] {
            let e = Credentials::new(Some(&BearerToken::new(bad))).expect_err(bad);
            assert!(matches!(e, Error::InvalidToken), "{bad:?}: {e:?}");
            if !bad.is_empty() {
                assert!(!e.to_string().contains(bad), "{e}");
            }
        }
    }
}
