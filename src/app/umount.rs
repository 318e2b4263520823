//! `rimgfs umount`: unmounts a rimgfs mount, also one whose daemon died.
//! Dependencies: mount.

use crate::cli::UmountCommand;
use crate::error::Result;

/// Runs `rimgfs umount`.
pub fn run(a: UmountCommand) -> Result<()> {
    crate::mount::umount(&a.mountpoint, a.lazy)
}
