//! The connection to the control plane: the URL list with failover, TLS, the admin token, and
//! the per-call timeout.
//!
//! Every control-plane instance serves the whole API (reads from its watch cache, intents
//! recorded in etcd), so any instance that answers will do. A [`Session`] tries the URLs in
//! the order given; an instance that cannot be reached, times out or answers `UNAVAILABLE` is
//! skipped, and the next URL is tried for the same call. Any other answer, success or error,
//! is the cluster's answer and is returned as it is. Retrying an intent on the next instance
//! is safe: recording a cordon, drain or rebalance request twice has the effect of once.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use dtable_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::args::GlobalArgs;
use crate::error::{Attempt, CtlError, code_name, error_chain};

/// A control-plane client with the admin token attached to every call.
pub type Client = ControlPlaneClient<InterceptedService<Channel, Auth>>;

/// HTTP/2 keep-alive ping interval: lets `watch` notice a control plane that vanished without
/// closing its connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Adds `authorization: Bearer <token>` to every request when a token was given.
#[derive(Clone, Default)]
pub struct Auth {
    /// The whole header value, marked sensitive so it never shows in debug output.
    bearer: Option<MetadataValue<Ascii>>,
}

impl Auth {
    /// Reads the token file: its content, trimmed, is the token.
    pub fn from_file(path: &Path) -> Result<Auth, CtlError> {
        let flag = "--token-file";
        let raw = std::fs::read_to_string(path)
            .map_err(|e| CtlError::usage(flag, format!("cannot read {}: {e}", path.display())))?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(CtlError::usage(
                flag,
                format!("{} is empty", path.display()),
            ));
        }
        let mut bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            CtlError::usage(
                flag,
                format!(
                    "the token in {} holds characters a header cannot carry",
                    path.display()
                ),
            )
        })?;
        bearer.set_sensitive(true);
        Ok(Auth {
            bearer: Some(bearer),
        })
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.bearer.is_some() {
            "Bearer <redacted>"
        } else {
            "none"
        };
        f.debug_struct("Auth").field("bearer", &shown).finish()
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(bearer) = &self.bearer {
            req.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(req)
    }
}

/// One control-plane URL and how to connect to it.
#[derive(Debug)]
struct Target {
    /// The URL as printed in messages.
    url: String,
    /// Connection settings, TLS included for https.
    endpoint: Endpoint,
    /// Set once the target failed in this session, so later calls try it last.
    failed: bool,
}

/// The control planes one command talks to, with the connection to the one that answered.
#[derive(Debug)]
pub struct Session {
    /// The URLs in the order given.
    targets: Vec<Target>,
    /// Token interceptor.
    auth: Auth,
    /// Bound on connecting and on each call.
    timeout: Duration,
    /// The target that answered last and its open channel, reused by the next call.
    current: Option<(usize, Channel)>,
}

impl Session {
    /// Builds the session from the global flags: parses the URLs, loads TLS files and the
    /// token. Any unusable value is a usage error naming its flag; nothing connects yet.
    pub fn new(args: &GlobalArgs) -> Result<Session, CtlError> {
        if args.timeout.is_zero() {
            return Err(CtlError::usage("--timeout", "must be longer than 0s"));
        }
        let urls = split_urls(&args.controlplane)?;
        let tls = if urls.iter().any(|u| u.starts_with("https://")) {
            Some(tls_config(args)?)
        } else {
            None
        };
        let mut targets = Vec::with_capacity(urls.len());
        for url in urls {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| CtlError::usage("--controlplane", format!("{url:?}: {e}")))?
                .connect_timeout(args.timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(args.timeout)
                .keep_alive_while_idle(true);
            if let (Some(tls), true) = (&tls, url.starts_with("https://")) {
                endpoint = endpoint.tls_config(tls.clone()).map_err(|e| {
                    CtlError::usage("--ca/--cert/--key", format!("{url}: {}", error_chain(&e)))
                })?;
            }
            targets.push(Target {
                url,
                endpoint,
                failed: false,
            });
        }
        let auth = match &args.token_file {
            Some(path) => Auth::from_file(path)?,
            None => Auth::default(),
        };
        Ok(Session {
            targets,
            auth,
            timeout: args.timeout,
            current: None,
        })
    }

    /// The URL of the control plane that answered last, or the first one given.
    pub fn url(&self) -> &str {
        let i = self.current.as_ref().map_or(0, |(i, _)| *i);
        &self.targets[i].url
    }

    /// Runs one call against the first control plane that answers.
    ///
    /// `rpc` gets a client and makes the call; it may be run once per URL. URLs are tried in
    /// the order given, those that already failed in this session last. Connecting and the
    /// call are each bounded by `--timeout`. Unreachable, timed out and `UNAVAILABLE` move on
    /// to the next URL; any other answer is returned.
    pub async fn call<T, F, Fut>(&mut self, mut rpc: F) -> Result<T, CtlError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut order: Vec<usize> = (0..self.targets.len()).collect();
        order.sort_by_key(|&i| self.targets[i].failed);
        let mut attempts = Vec::new();
        for i in order {
            let url = self.targets[i].url.clone();
            let channel = match &self.current {
                Some((c, channel)) if *c == i => channel.clone(),
                _ => match self.connect(i).await {
                    Ok(channel) => channel,
                    Err(reason) => {
                        tracing::debug!(%url, %reason, "control plane unreachable");
                        self.mark_failed(i);
                        attempts.push(Attempt { url, reason });
                        continue;
                    }
                },
            };
            let client = ControlPlaneClient::with_interceptor(channel.clone(), self.auth.clone());
            let reason = match tokio::time::timeout(self.timeout, rpc(client)).await {
                Ok(Ok(resp)) => {
                    self.current = Some((i, channel));
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) if !fails_over(&status) => {
                    self.current = Some((i, channel));
                    return Err(CtlError::Rpc { url, status });
                }
                Ok(Err(status)) => status_line(&status),
                Err(_) => format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            };
            tracing::debug!(%url, %reason, "control plane did not answer; trying the next");
            self.mark_failed(i);
            attempts.push(Attempt { url, reason });
        }
        Err(CtlError::Unreachable { attempts })
    }

    /// Connects to target `i`, bounded by the timeout; the error is one line.
    async fn connect(&self, i: usize) -> Result<Channel, String> {
        let endpoint = self.targets[i].endpoint.clone();
        match tokio::time::timeout(self.timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!(
                "cannot connect within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    /// Remembers that target `i` failed and drops its channel.
    fn mark_failed(&mut self, i: usize) {
        self.targets[i].failed = true;
        if matches!(&self.current, Some((c, _)) if *c == i) {
            self.current = None;
        }
    }
}

/// Whether an answer means "this instance cannot serve now", so another instance is tried:
/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, or a status made on this side from a broken connection
/// (it carries the transport error as its source; statuses from the wire never do).
fn fails_over(status: &tonic::Status) -> bool {
    use std::error::Error;
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    ) || status.source().is_some()
}

/// `CODE: message`, with the transport error behind a status made on this side.
fn status_line(status: &tonic::Status) -> String {
    use std::error::Error;
    let message = status.message();
    let detail = match status.source().map(error_chain) {
        Some(chain) if chain.starts_with(message) => chain,
        Some(chain) if !message.ends_with(&chain) => format!("{message}: {chain}"),
        _ => message.to_owned(),
    };
    format!("{}: {detail}", code_name(status.code()))
}

/// Splits `--controlplane` into URLs. A bare `host:port` means `http://host:port`; any scheme
/// other than http and https is refused.
pub fn split_urls(list: &str) -> Result<Vec<String>, CtlError> {
    let flag = "--controlplane";
    let mut urls = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CtlError::usage(
                flag,
                format!("{raw:?}: want an http:// or https:// URL"),
            ));
        }
        let uri: tonic::codegen::http::Uri = url
            .parse()
            .map_err(|e| CtlError::usage(flag, format!("{raw:?}: {e}")))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(CtlError::usage(flag, format!("{raw:?}: no host")));
        }
        urls.push(url);
    }
    if urls.is_empty() {
        return Err(CtlError::usage(flag, "no URL given"));
    }
    Ok(urls)
}

/// The TLS settings for https URLs: `--ca` (or the system's CAs), and `--cert`/`--key` for
/// mutual TLS. Each file is checked here so a bad one is named.
fn tls_config(args: &GlobalArgs) -> Result<ClientTlsConfig, CtlError> {
    let probe: tonic::codegen::http::Uri = "https://controlplane.invalid/"
        .parse()
        .expect("valid probe URI");
    let check = |flag: &'static str, config: ClientTlsConfig| {
        Endpoint::from(probe.clone())
            .tls_config(config)
            .map(|_| ())
            .map_err(|e| CtlError::usage(flag, error_chain(&e)))
    };
    let mut config = ClientTlsConfig::new();
    match &args.ca {
        Some(path) => {
            let ca = Certificate::from_pem(read_pem("--ca", path)?);
            check("--ca", ClientTlsConfig::new().ca_certificate(ca.clone()))?;
            config = config.ca_certificate(ca);
        }
        None => {
            check("--ca", ClientTlsConfig::new().with_native_roots()).map_err(|_| {
                CtlError::usage(
                    "--ca",
                    "https URLs need --ca FILE: the system has no trusted CAs to use instead",
                )
            })?;
            config = config.with_native_roots();
        }
    }
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem(read_pem("--cert", cert)?, read_pem("--key", key)?);
            check(
                "--cert/--key",
                ClientTlsConfig::new().identity(identity.clone()),
            )?;
            config = config.identity(identity);
        }
        (None, None) => {}
        (Some(_), None) => return Err(CtlError::usage("--key", "--cert needs --key")),
        (None, Some(_)) => return Err(CtlError::usage("--cert", "--key needs --cert")),
    }
    Ok(config)
}

/// Reads a PEM file, refusing one without a PEM block.
fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, CtlError> {
    let pem = std::fs::read(path)
        .map_err(|e| CtlError::usage(flag, format!("cannot read {}: {e}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(CtlError::usage(
            flag,
            format!("{} is not a PEM file", path.display()),
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_trimmed_and_defaulted_to_http() {
        assert_eq!(
            split_urls(" http://a:1 ,b:2,, https://c:3/").unwrap(),
            vec!["http://a:1", "http://b:2", "https://c:3/"]
        );
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for bad in ["", " , ", "ftp://a:1", "http://", "http://a b"] {
            let e = split_urls(bad).unwrap_err();
            assert_eq!(e.exit_code(), 64, "{bad:?}");
            assert!(e.to_string().contains("--controlplane"), "{e}");
        }
    }

    #[test]
    fn the_token_is_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret \n").unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert_eq!(auth.bearer.as_ref().unwrap(), "Bearer s3cret");
        assert!(!format!("{auth:?}").contains("s3cret"));
        let mut auth = auth;
        let req = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
    }

    #[test]
    fn an_empty_or_missing_token_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for path in [empty, dir.path().join("missing")] {
            let e = Auth::from_file(&path).unwrap_err();
            assert_eq!(e.exit_code(), 64);
            assert!(e.to_string().contains("--token-file"), "{e}");
        }
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let e = read_pem("--ca", &path).unwrap_err();
        assert_eq!(e.exit_code(), 64);
        assert!(e.to_string().contains("--ca"), "{e}");
    }
}
