//! Scratch directories for data dirs and logs: on tmpfs (`/dev/shm`) when the machine has it
//! with room to spare, so etcd's writes cost no disk I/O, else in the system temp dir.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Environment variable that, when set to anything but `0` or empty, keeps scratch
/// directories after their owner is dropped so logs and data can be inspected.
pub const KEEP_ENV: &str = "DTABLE_TESTKIT_KEEP";

/// Whether the user asked to keep scratch directories (see [`KEEP_ENV`]).
pub fn keep_requested() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Free space `/dev/shm` must have to be used. Each etcd member preallocates about 128 MB of
/// WAL, which on tmpfs is memory, and a container's default `/dev/shm` is only 64 MB.
pub const MIN_SHM_FREE_BYTES: u64 = 2 << 30;

/// The directory scratch directories are created in: `/dev/shm` if it exists with at least
/// [`MIN_SHM_FREE_BYTES`] free, else the system temp dir.
pub fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let roomy = nix::sys::statvfs::statvfs(shm).is_ok_and(|fs| {
        fs.blocks_available().saturating_mul(fs.fragment_size()) >= MIN_SHM_FREE_BYTES
    });
    if shm.is_dir() && roomy {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Creates a fresh directory named `<prefix><random>` under [`scratch_root`], removed when the
/// returned guard is dropped (unless [`keep_requested`]).
///
/// # Panics
/// If the directory cannot be created.
pub fn scratch_dir(prefix: &str) -> TempDir {
    let root = scratch_root();
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&root)
        .unwrap_or_else(|e| panic!("cannot create a scratch dir in {}: {e}", root.display()));
    if keep_requested() {
        dir.disable_cleanup(true);
    }
    dir
}
