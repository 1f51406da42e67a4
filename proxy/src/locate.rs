//! Finding the base a request is for: the path segment after a `dtables` segment, then the
//! `dtable_uuid` query parameter, then the `x-dtable-uuid` header (gRPC metadata).

use dtable_core::bucket::normalize_base_uuid;
use dtable_core::{Bucket, BucketError};
use hyper::Request;

/// Header carrying the base UUID for clients that have no base in the path (gRPC).
pub const UUID_HEADER: &str = "x-dtable-uuid";

/// The bucket a request belongs to; `None` when it names no base.
pub fn bucket_of<B>(req: &Request<B>) -> Result<Option<Bucket>, BucketError> {
    raw_base(req)?.map(Bucket::of_base).transpose()
}

/// The base a request names, normalized to 32 lowercase hex characters; `None` when it names
/// none. The slave listener hashes the whole UUID, where the routing listener needs only its
/// bucket; both look in the same places and refuse the same malformed UUIDs.
pub fn base_of<B>(req: &Request<B>) -> Result<Option<String>, BucketError> {
    raw_base(req)?.map(normalize_base_uuid).transpose()
}

/// The base UUID as the request spells it, from the first place that names one.
fn raw_base<B>(req: &Request<B>) -> Result<Option<&str>, BucketError> {
    let header = req.headers().get(UUID_HEADER).map(|v| v.as_bytes());
    base_in(req.uri().path(), req.uri().query(), header)
}

/// Whether a header value is text as `HeaderValue::to_str` sees it: visible ASCII, space and
/// tab.
pub(crate) fn is_text(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The base UUID as a request with this path, query and `x-dtable-uuid` header spells it.
pub fn base_in<'a>(
    path: &'a str,
    query: Option<&'a str>,
    header: Option<&'a [u8]>,
) -> Result<Option<&'a str>, BucketError> {
    let mut segments = path.split('/');
    while let Some(segment) = segments.next() {
        if segment == "dtables"
            && let Some(uuid) = segments.next().filter(|s| !s.is_empty())
        {
            return Ok(Some(uuid));
        }
    }
    if let Some(query) = query {
        for pair in query.split('&') {
            if let Some(uuid) = pair.strip_prefix("dtable_uuid=") {
                return Ok(Some(uuid));
            }
        }
    }
    if let Some(value) = header {
        let uuid = std::str::from_utf8(value)
            .ok()
            .filter(|v| is_text(v.as_bytes()))
            .ok_or_else(|| BucketError::MalformedUuid("<non-ASCII>".into()))?;
        return Ok(Some(uuid.trim()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    const U: &str = "c3a1e2f0a1b2c3d4e5f60718293a4b5c";
    const D: &str = "C3A1E2F0-A1B2-C3D4-E5F6-0718293A4B5C";

    #[test]
    fn every_documented_place() {
        for uri in [
            format!("/dtables/{U}"),
            format!("/dtables/{D}/"),
            format!("/api/v1/dtables/{U}/rows/?limit=10"),
            format!("/api/v1/internal/dtables/{D}/operations/"),
            format!("/dtable-server/api/v1/dtables/{U}/metadata/"),
            format!("/socket.io/?dtable_uuid={U}&EIO=4&transport=polling"),
            format!("/socket.io/?EIO=4&dtable_uuid={D}&transport=websocket"),
        ] {
            assert_eq!(bucket_of(&req(&uri)), Ok(Some(Bucket(0xc3))), "{uri}");
        }
        let grpc = Request::builder()
            .uri("/pkg.Svc/Call")
            .header(UUID_HEADER, D)
            .body(())
            .unwrap();
        assert_eq!(bucket_of(&grpc), Ok(Some(Bucket(0xc3))));
    }

    #[test]
    fn the_base_is_normalized_from_every_place() {
        let want = Ok(Some(U.to_owned()));
        for uri in [
            format!("/dtables/{D}"),
            format!("/api/v1/dtables/{U}/rows/"),
            format!("/socket.io/?EIO=4&dtable_uuid={D}"),
        ] {
            assert_eq!(base_of(&req(&uri)), want, "{uri}");
        }
        let header = Request::builder()
            .uri("/api/v1/query/")
            .header(UUID_HEADER, format!(" {D} "))
            .body(())
            .unwrap();
        assert_eq!(base_of(&header), want);
        assert_eq!(base_of(&req("/ping/")), Ok(None));
        assert!(base_of(&req("/dtables/c3a1e2f0/")).is_err());
        assert!(base_of(&req("/?dtable_uuid=c3a1e2f0-a1b2")).is_err());
    }

    #[test]
    fn no_base_and_bad_bases() {
        assert_eq!(bucket_of(&req("/ping/")), Ok(None));
        assert_eq!(bucket_of(&req("/api/v1/dtables/")), Ok(None));
        assert!(bucket_of(&req("/api/v1/dtables/not-a-uuid/rows/")).is_err());
        assert!(bucket_of(&req("/socket.io/?dtable_uuid=zz")).is_err());
        // The path wins over the query.
        let both = format!("/dtables/{U}?dtable_uuid=00000000000000000000000000000000");
        assert_eq!(bucket_of(&req(&both)), Ok(Some(Bucket(0xc3))));
    }
}
