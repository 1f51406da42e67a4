//! The admin bearer token that guards mutating admin endpoints (rebalance, drain, cordon, ...)
//! on HTTP and gRPC. Without `--admin-token-file` those endpoints stay open, as in SeaTable,
//! and [`warn_open`] says so once at start-up.
//!
//! The token itself is never kept: [`AdminToken`] holds its SHA-256 digest and compares a
//! presented token's digest in constant time, so neither a log line, a `Debug` print nor the
//! response time gives it away.
//!
//! HTTP: `router.route_layer(require_admin(token))` answers 401 with
//! `{"code":"unauthorized","error":"missing or wrong admin token"}` and `WWW-Authenticate:
//! Bearer`. gRPC: [`admin_interceptor`] for a whole service, or [`authorize_grpc`] inside the
//! methods that mutate; both answer `Status::unauthenticated`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::config::ConfigError;

/// What a refused caller is told, on HTTP and gRPC alike.
pub const UNAUTHORIZED_MESSAGE: &str = "missing or wrong admin token";

/// The admin flag, flattened into the arguments of each binary with admin endpoints.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// File holding the admin bearer token (surrounding whitespace is trimmed). When set,
    /// mutating admin endpoints on HTTP and gRPC require `Authorization: Bearer <token>`;
    /// when unset they are open to anyone who can reach the port, as in SeaTable.
    #[arg(long, env = "DTABLE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// Reads the token: `None` when `--admin-token-file` is not set. An unreadable or empty
    /// file is an error naming the flag; the error never quotes the file's content.
    pub fn load(&self) -> Result<Option<Arc<AdminToken>>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let content = std::fs::read(path).map_err(|e| {
            ConfigError::field(
                "--admin-token-file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let content = String::from_utf8(content).map_err(|_| {
            ConfigError::field(
                "--admin-token-file",
                format!("{} is not UTF-8 text", path.display()),
            )
        })?;
        match AdminToken::new(&content) {
            Some(token) => Ok(Some(Arc::new(token))),
            None => Err(ConfigError::field(
                "--admin-token-file",
                format!("{} is empty; put the admin token in it", path.display()),
            )),
        }
    }
}

/// The admin token, as the SHA-256 digest of its trimmed text. `Debug` and `Display` print
/// `<redacted>`.
#[derive(Clone)]
pub struct AdminToken {
    /// SHA-256 of the token; the token itself is dropped once hashed.
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl std::fmt::Display for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl AdminToken {
    /// The token `secret` with surrounding whitespace trimmed; `None` if nothing is left.
    pub fn new(secret: &str) -> Option<AdminToken> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| AdminToken {
            digest: sha256(secret.as_bytes()),
        })
    }

    /// Whether `presented` is the token, compared in constant time (over digests, so even the
    /// token's length does not show in the timing).
    pub fn matches(&self, presented: &str) -> bool {
        sha256(presented.as_bytes()).ct_eq(&self.digest).into()
    }

    /// Checks `Authorization: Bearer <token>` in HTTP headers or gRPC metadata (pass
    /// `request.metadata().as_ref()`).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Unauthorized> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(Unauthorized::Missing)?;
        if self.matches(presented) {
            Ok(())
        } else {
            Err(Unauthorized::Wrong)
        }
    }
}

/// The token of an `Authorization` value with the `Bearer` scheme (any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Why a request was refused. Callers all get the same answer ([`UNAUTHORIZED_MESSAGE`]);
/// the variant is for our logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    /// No `Authorization: Bearer ...` header.
    #[error("no bearer token")]
    Missing,
    /// A bearer token that is not the admin token.
    #[error("wrong bearer token")]
    Wrong,
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({
            "code": "unauthorized",
            "error": UNAUTHORIZED_MESSAGE,
        }));
        let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

impl From<Unauthorized> for tonic::Status {
    fn from(_: Unauthorized) -> Self {
        tonic::Status::unauthenticated(UNAUTHORIZED_MESSAGE)
    }
}

/// Logs, once at start-up, that `component`'s mutating admin endpoints are open because no
/// token is configured.
pub fn warn_open(component: &str) {
    tracing::warn!(
        component,
        "no admin token configured: mutating admin endpoints are open to anyone who can reach \
         them (as in SeaTable); set --admin-token-file FILE (env DTABLE_ADMIN_TOKEN_FILE) to \
         require `Authorization: Bearer <token>`"
    );
}

/// A layer that lets a request through only with the admin token; with `None` it lets every
/// request through (see [`warn_open`]). Put it on the mutating routes:
/// `Router::new().route("/rebalance/", post(h)).route_layer(require_admin(token))`.
pub fn require_admin(token: Option<Arc<AdminToken>>) -> RequireAdminLayer {
    RequireAdminLayer { token }
}

/// The layer made by [`require_admin`].
#[derive(Clone, Debug)]
pub struct RequireAdminLayer {
    /// The token to demand; `None` lets everything through.
    token: Option<Arc<AdminToken>>,
}

impl<S> tower_layer::Layer<S> for RequireAdminLayer {
    type Service = RequireAdmin<S>;

    fn layer(&self, inner: S) -> RequireAdmin<S> {
        RequireAdmin {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The service made by [`RequireAdminLayer`]: refuses requests without the token with 401.
#[derive(Clone, Debug)]
pub struct RequireAdmin<S> {
    /// The guarded service.
    inner: S,
    /// The token to demand; `None` lets everything through.
    token: Option<Arc<AdminToken>>,
}

impl<S, B> tower_service::Service<Request<B>> for RequireAdmin<S>
where
    S: tower_service::Service<Request<B>, Response = Response>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let refused = self
            .token
            .as_ref()
            .and_then(|t| t.check(req.headers()).err());
        if let Some(refused) = refused {
            tracing::warn!(
                method = %req.method(),
                path = req.uri().path(),
                reason = %refused,
                "admin request refused"
            );
            return Box::pin(std::future::ready(Ok(refused.into_response())));
        }
        Box::pin(self.inner.call(req))
    }
}

/// Checks a gRPC call's metadata for the admin token, for use at the top of each mutating
/// method: `authorize_grpc(self.token.as_deref(), request.metadata())?`. With `None` every
/// call passes.
pub fn authorize_grpc(
    token: Option<&AdminToken>,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<(), tonic::Status> {
    let Some(token) = token else {
        return Ok(());
    };
    token.check(metadata.as_ref()).map_err(|refused| {
        tracing::warn!(reason = %refused, "admin gRPC call refused");
        tonic::Status::from(refused)
    })
}

/// A tonic interceptor demanding the admin token on every call of a service:
/// `FooServer::with_interceptor(svc, admin_interceptor(token))`. With `None` every call passes.
pub fn admin_interceptor(token: Option<Arc<AdminToken>>) -> AdminInterceptor {
    AdminInterceptor { token }
}

/// The interceptor made by [`admin_interceptor`].
#[derive(Clone, Debug)]
pub struct AdminInterceptor {
    /// The token to demand; `None` lets everything through.
    token: Option<Arc<AdminToken>>,
}

impl tonic::service::Interceptor for AdminInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        authorize_grpc(self.token.as_deref(), request.metadata())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn the_token_is_trimmed_and_must_not_be_empty() {
        let token = AdminToken::new("  s3cret\n").unwrap();
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches("s3cre"));
        assert!(AdminToken::new(" \n\t").is_none());
    }

    #[test]
    fn bearer_scheme_is_required() {
        let token = AdminToken::new("s3cret").unwrap();
        assert_eq!(token.check(&headers("Bearer s3cret")), Ok(()));
        assert_eq!(token.check(&headers("bearer  s3cret ")), Ok(()));
        assert_eq!(
            token.check(&headers("Basic s3cret")),
            Err(Unauthorized::Missing)
        );
        assert_eq!(token.check(&headers("s3cret")), Err(Unauthorized::Missing));
        assert_eq!(token.check(&headers("Bearer ")), Err(Unauthorized::Missing));
        assert_eq!(token.check(&HeaderMap::new()), Err(Unauthorized::Missing));
        assert_eq!(
            token.check(&headers("Bearer other")),
            Err(Unauthorized::Wrong)
        );
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let token = AdminToken::new("s3cret").unwrap();
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
        assert_eq!(format!("{token}"), "<redacted>");
    }

    #[test]
    fn grpc_refusal_is_unauthenticated() {
        let token = AdminToken::new("s3cret").unwrap();
        let mut md = tonic::metadata::MetadataMap::new();
        let status = authorize_grpc(Some(&token), &md).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), UNAUTHORIZED_MESSAGE);
        md.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(authorize_grpc(Some(&token), &md).is_ok());
        assert!(authorize_grpc(None, &tonic::metadata::MetadataMap::new()).is_ok());
        let mut interceptor = admin_interceptor(Some(Arc::new(token)));
        use tonic::service::Interceptor;
        let refused = interceptor.call(tonic::Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
}
