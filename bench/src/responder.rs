//! The trivial backend of the proxy benchmark (issue 3): an HTTP/1.1 server that answers every
//! request at once with 200, a short body and `X-Dtable-Node: <node id>`, so that a figure
//! measured through a proxy shows the proxy's cost and not a backend's. Keep-alive is on.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The body of every answer.
const BODY: &[u8] = b"ok\n";

/// The header naming the node that answered, as every dtable-server sets it.
static NODE_HEADER: HeaderName = HeaderName::from_static("x-dtable-node");

/// Flags of `dtable-bench responder`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one. The bound address is printed on stdout
    /// as the first line, so a script can read it.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Value of the `X-Dtable-Node` header of every answer.
    #[arg(long)]
    pub node_id: String,
    /// Runtime worker threads; 0 means one per CPU the process may run on (its affinity).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs the responder until the process is killed.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let node = HeaderValue::from_str(&args.node_id).context("--node-id is not a header value")?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(serve(args.listen, node))
}

/// Accepts connections and answers on each until its client closes it.
async fn serve(listen: SocketAddr, node: HeaderValue) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("{}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Running out of file descriptors must not end the benchmark's backend.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req: Request<Incoming>| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(answer(node)) }
            });
            // Errors here are clients going away mid-request; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The answer to every request.
fn answer(node: HeaderValue) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(NODE_HEADER.clone(), node);
    resp
}
