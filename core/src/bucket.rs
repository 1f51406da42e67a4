//! Buckets: the 256 shards of the base space, keyed by the first two hex characters of a
//! base UUID.

use std::fmt;
use std::str::FromStr;

/// Number of buckets. Fixed by SeaTable's layout: two hex characters.
pub const BUCKET_COUNT: usize = 256;

/// One of the 256 buckets, `00`..`ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(pub u8);

/// Why a string is not a base UUID or a bucket name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// The string is neither 32 hex characters nor the dashed 8-4-4-4-12 form.
    #[error("malformed base UUID {0:?}: want 32 hex characters or the 8-4-4-4-12 form")]
    MalformedUuid(String),
    /// The string is not two hex characters.
    #[error("malformed bucket {0:?}: want two hex characters 00..ff")]
    MalformedBucket(String),
}

impl Bucket {
    /// Every bucket in order, `00` first.
    pub fn all() -> impl DoubleEndedIterator<Item = Bucket> + ExactSizeIterator + Clone {
        (0..=u8::MAX).map(Bucket)
    }

    /// The bucket of a base, from its UUID in either accepted form, any case.
    /// Validates without allocating: the proxy calls this for every request.
    pub fn of_base(uuid: &str) -> Result<Bucket, BucketError> {
        check_base_uuid(uuid)?;
        let b = uuid.as_bytes();
        let nibble = |c: u8| (c as char).to_digit(16).expect("validated hex") as u8;
        Ok(Bucket(nibble(b[0]) << 4 | nibble(b[1])))
    }

    /// Position in a 256-slot table.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A base UUID as SeaTable stores it: 32 lowercase hex characters, no dashes.
///
/// Accepts exactly two shapes so that typos are refused instead of silently routed:
/// 32 hex characters, or 8-4-4-4-12 with dashes in those places.
pub fn normalize_base_uuid(uuid: &str) -> Result<String, BucketError> {
    check_base_uuid(uuid)?;
    Ok(uuid
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect())
}

/// Checks one of the two accepted shapes: 32 hex characters, or 8-4-4-4-12 with dashes.
fn check_base_uuid(uuid: &str) -> Result<(), BucketError> {
    let bytes = uuid.as_bytes();
    let dashed = match bytes.len() {
        32 => false,
        36 => true,
        _ => return Err(BucketError::MalformedUuid(uuid.to_owned())),
    };
    let well_formed = bytes.iter().enumerate().all(|(i, b)| {
        if dashed && matches!(i, 8 | 13 | 18 | 23) {
            *b == b'-'
        } else {
            b.is_ascii_hexdigit()
        }
    });
    if well_formed {
        Ok(())
    } else {
        Err(BucketError::MalformedUuid(uuid.to_owned()))
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

impl FromStr for Bucket {
    type Err = BucketError;

    /// Parses exactly two lowercase hex characters, the form used in etcd keys.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 2
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(BucketError::MalformedBucket(s.to_owned()));
        }
        Ok(Bucket(u8::from_str_radix(s, 16).expect("validated hex")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_any_case() {
        let plain = "AB12cd34ef56ab12cd34ef56ab12cd34";
        let dashed = "ab12cd34-EF56-ab12-cd34-ef56ab12cd34";
        assert_eq!(Bucket::of_base(plain), Ok(Bucket(0xab)));
        assert_eq!(Bucket::of_base(dashed), Ok(Bucket(0xab)));
        assert_eq!(
            normalize_base_uuid(dashed).unwrap(),
            "ab12cd34ef56ab12cd34ef56ab12cd34"
        );
    }

    #[test]
    fn malformed_uuids_are_refused() {
        for bad in [
            "",
            "ab",
            "ab12cd34ef56ab12cd34ef56ab12cd3",
            "ab12cd34ef56ab12cd34ef56ab12cd34a",
            "zz12cd34ef56ab12cd34ef56ab12cd34",
            "ab12cd34-ef56-ab12-cd34ef56ab12cd34",
            "ab12cd3-4ef56-ab12-cd34-ef56ab12cd34",
            "ab12cd34-ef56-ab12-cd34-ef56ab12cd3g",
            "ab12cd34+ef56+ab12+cd34+ef56ab12cd34",
        ] {
            assert!(Bucket::of_base(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bucket_names_round_trip() {
        for b in Bucket::all() {
            assert_eq!(b.to_string().parse::<Bucket>(), Ok(b));
        }
        assert_eq!(Bucket::all().count(), BUCKET_COUNT);
        for bad in ["", "0", "000", "AB", "g0", "-1"] {
            assert!(bad.parse::<Bucket>().is_err(), "{bad:?} accepted");
        }
    }
}
