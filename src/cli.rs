//! Command line: clap types, and their conversion into validated configurations.
//!
//! The doc comments are the `--help` text. `MountArgs::to_config` is the one place where
//! mount options are checked, so it is unit-tested. Dependencies: clap, image, error.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::image::config::Platform;
use crate::image::{ImageSpec, OpenOptions, parse_selector};

/// Mount a container image as its merged filesystem.
#[derive(Debug, Parser)]
#[command(name = "rimgfs", version, about, long_about = None)]
pub struct Cli {
    /// More output on stderr: -v info, -vv debug (every FUSE request), -vvv trace.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub cmd: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount IMAGE's merged root filesystem on MOUNTPOINT, writable: changes go to --upper DIR,
    /// or to an ephemeral upper layer removed at unmount (--read-only for none).
    Mount {
        /// The image: [docker-archive:|oci:|oci-archive:]PATH[:REF|:@N],
        /// containers-storage:[[DRIVER@]ROOT[+RUNROOT]]NAME or docker-daemon:NAME.
        image: String,
        /// An existing directory to mount on.
        mountpoint: PathBuf,
        /// Image selection.
        #[command(flatten)]
        select: ImageArgs,
        /// Mount options.
        #[command(flatten)]
        mount: MountArgs,
    },
    /// Unmount a rimgfs mount (also one whose daemon died).
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach now and clean up when no longer busy.
        #[arg(short, long)]
        lazy: bool,
    },
    /// Show an image's references, platform, config, layers and history.
    Inspect {
        /// The image.
        image: String,
        /// Image selection.
        #[command(flatten)]
        select: ImageArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List a directory of the merged image without mounting it.
    Ls {
        /// The image.
        image: String,
        /// Path inside the image.
        #[arg(default_value = "/")]
        path: String,
        /// Image selection.
        #[command(flatten)]
        select: ImageArgs,
        /// Long format: mode, links, owner, group, size, mtime, name, link target.
        #[arg(short, long)]
        long: bool,
        /// List subdirectories recursively (full paths).
        #[arg(short = 'R', long)]
        recursive: bool,
        /// With -l, also show the layer that provides each entry.
        #[arg(long)]
        layers: bool,
        /// Show the image as it was after layer N (0 = bottom).
        #[arg(long, value_name = "N")]
        layer: Option<usize>,
    },
    /// Write a file of the merged image to stdout (symlinks are followed inside the image).
    Cat {
        /// The image.
        image: String,
        /// Path inside the image.
        path: String,
        /// Image selection.
        #[command(flatten)]
        select: ImageArgs,
        /// Show the image as it was after layer N (0 = bottom).
        #[arg(long, value_name = "N")]
        layer: Option<usize>,
    },
    /// List what an overlayfs upper directory changes in IMAGE, as `docker diff` does:
    /// A added, C changed (also every directory above a change), D deleted.
    Diff {
        /// The image the upper directory was made over.
        image: String,
        /// The overlayfs upper directory (kernel or fuse-overlayfs format).
        #[arg(long, value_name = "DIR")]
        upper: PathBuf,
        /// Image selection.
        #[command(flatten)]
        select: ImageArgs,
        /// Print a JSON list of {"path", "kind"} instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a new image: IMAGE's layers as they are, plus one layer of what an overlayfs
    /// upper directory changes.
    Commit {
        /// The image the upper directory was made over.
        image: String,
        /// The overlayfs upper directory (kernel or fuse-overlayfs format).
        #[arg(long, value_name = "DIR")]
        upper: PathBuf,
        /// Where to write the new image (a directory for --format oci).
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// Name the new image by this reference.
        #[arg(long, value_name = "REF")]
        tag: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = CommitFormat::DockerArchive)]
        format: CommitFormat,
        /// Comment of the new layer's history entry.
        #[arg(short, long, value_name = "TEXT")]
        message: Option<String>,
        /// Image selection.
        #[command(flatten)]
        select: ImageArgs,
    },
}

/// Output formats of `commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitFormat {
    /// A `docker save` archive (Docker 25 shape: OCI layout plus manifest.json).
    DockerArchive,
    /// An OCI image layout in a tar.
    OciArchive,
    /// An OCI image layout directory.
    Oci,
}

impl From<CommitFormat> for crate::commit::Format {
    fn from(f: CommitFormat) -> Self {
        match f {
            CommitFormat::DockerArchive => crate::commit::Format::DockerArchive,
            CommitFormat::OciArchive => crate::commit::Format::OciArchive,
            CommitFormat::Oci => crate::commit::Format::Oci,
        }
    }
}

/// Options that choose an image and where its cache lives.
#[derive(Debug, Args, Clone, Default)]
pub struct ImageArgs {
    /// Image to use from a multi-image source: a reference (busybox:latest) or @N.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Platform to pick from a multi-platform index: os/arch[/variant] (default: the host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Cache directory (default: /var/cache/rimgfs for root, else $XDG_CACHE_HOME/rimgfs).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Mount options.
#[derive(Debug, Args, Clone, Default)]
pub struct MountArgs {
    /// Mount options, comma-separated: ro, rw, suid, dev, allow_other, allow_root,
    /// default_permissions, nodefault_permissions, exec, noexec, atime, noatime,
    /// passthrough, nopassthrough.
    #[arg(short = 'o', value_name = "OPTIONS", action = ArgAction::Append)]
    pub options: Vec<String>,
    /// Stay in the foreground (default: return once mounted, serving in the background).
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount read-only, without an upper layer (the same as -o ro).
    #[arg(long)]
    pub read_only: bool,
    /// Writable mount keeping its changes in DIR, in kernel overlayfs's upperdir format;
    /// mounting again with the same DIR shows the same tree.
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Work directory for --upper, on the same filesystem (default: DIR.work beside it).
    #[arg(long, value_name = "DIR", requires = "upper")]
    pub work: Option<PathBuf>,
    /// Show the image as it was after layer N (0 = bottom).
    #[arg(long, value_name = "N")]
    pub layer: Option<usize>,
    /// Threads serving requests (default: 2 per CPU, at least 4).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// A validated image selection.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The parsed image argument.
    pub spec: ImageSpec,
    /// Selection options.
    pub open: OpenOptions,
    /// The cache.
    pub cache: Cache,
}

impl ImageArgs {
    /// Validates the image argument and selection options.
    pub fn to_config(&self, image: &str) -> Result<ImageConfig> {
        let spec = ImageSpec::parse(image)?;
        let selector = self.reference.as_deref().map(parse_selector).transpose()?;
        let platform = match &self.platform {
            Some(p) => Some(Platform::parse(p).ok_or_else(|| {
                Error::Usage(format!("--platform {p:?}: expected os/arch[/variant]"))
            })?),
            None => None,
        };
        let cache = Cache::new(self.cache_dir.clone().unwrap_or_else(Cache::default_root));
        Ok(ImageConfig {
            spec,
            open: OpenOptions { selector, platform },
            cache,
        })
    }
}

/// Validated mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Honour setuid/setgid bits.
    pub suid: bool,
    /// Allow device nodes to be opened.
    pub dev: bool,
    /// Allow execution.
    pub exec: bool,
    /// Update access times (never stored; only passed to the kernel).
    pub atime: bool,
    /// Let the kernel check permissions against the image's modes.
    pub default_permissions: bool,
    /// Serve big files through kernel passthrough (root only); without it, opens cost no
    /// round trip to the daemon, which favours many small files.
    pub passthrough: bool,
    /// Let other users access the mount.
    pub allow_other: bool,
    /// Let root access the mount.
    pub allow_root: bool,
    /// Read-only.
    pub read_only: bool,
    /// The upper directory of a writable mount (`None` with `read_only`: no upper; `None`
    /// otherwise: an ephemeral one).
    pub upper: Option<PathBuf>,
    /// Its work directory.
    pub work: Option<PathBuf>,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Show layers 0..=N only.
    pub layer: Option<usize>,
    /// Worker threads.
    pub threads: usize,
}

impl MountArgs {
    /// Parses `-o` lists and flags into [`MountOptions`]; safe defaults for untrusted
    /// images: nosuid, nodev, default_permissions.
    pub fn to_config(&self) -> Result<MountOptions> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut o = MountOptions {
            suid: false,
            dev: false,
            exec: true,
            atime: false,
            default_permissions: true,
            passthrough: true,
            allow_other: false,
            allow_root: false,
            // Writable by default, as a container's root filesystem; changes go to --upper or
            // to an ephemeral upper removed at unmount.
            read_only: false,
            upper: self.upper.clone(),
            work: self.work.clone(),
            foreground: self.foreground,
            layer: self.layer,
            threads: self.threads.unwrap_or((2 * cpus).max(4)),
        };
        if o.threads == 0 {
            return Err(Error::Usage("--threads must be at least 1".into()));
        }
        for opt in self
            .options
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.is_empty())
        {
            match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "suid" => o.suid = true,
                "nosuid" => o.suid = false,
                "dev" => o.dev = true,
                "nodev" => o.dev = false,
                "exec" => o.exec = true,
                "noexec" => o.exec = false,
                "atime" => o.atime = true,
                "noatime" => o.atime = false,
                "default_permissions" => o.default_permissions = true,
                "nodefault_permissions" => o.default_permissions = false,
                "passthrough" => o.passthrough = true,
                "nopassthrough" => o.passthrough = false,
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                other => return Err(Error::Usage(format!("unknown mount option {other:?}"))),
            }
        }
        if self.read_only {
            o.read_only = true;
        }
        if !o.read_only && !o.default_permissions {
            // The writable view leaves every permission check to the kernel.
            return Err(Error::Usage(
                "nodefault_permissions needs --read-only".into(),
            ));
        }
        if o.read_only && o.upper.is_some() {
            return Err(Error::Usage(
                "--upper makes a writable mount; it cannot be read-only".into(),
            ));
        }
        if o.allow_other && o.allow_root {
            return Err(Error::Usage(
                "allow_other and allow_root are mutually exclusive".into(),
            ));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(opts: &[&str]) -> MountArgs {
        MountArgs {
            options: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn mount_options_defaults_are_safe() {
        let o = args(&[]).to_config().unwrap();
        assert!(!o.suid && !o.dev && o.default_permissions && !o.allow_other);
    }

    #[test]
    fn mount_options_table() {
        let o = args(&["suid,dev", "allow_other,ro"]).to_config().unwrap();
        assert!(o.suid && o.dev && o.allow_other && o.read_only);
        let o = args(&["ro,nodefault_permissions,noexec,nopassthrough"])
            .to_config()
            .unwrap();
        assert!(!o.default_permissions && !o.exec && !o.passthrough);
        // Writable mounts keep the kernel's permission checks.
        assert!(matches!(
            args(&["nodefault_permissions"]).to_config(),
            Err(Error::Usage(_))
        ));
        let o = args(&["rw"]).to_config().unwrap();
        assert!(!o.read_only && o.upper.is_none());
        assert!(matches!(args(&["bogus"]).to_config(), Err(Error::Usage(_))));
        assert!(matches!(
            args(&["allow_other,allow_root"]).to_config(),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn image_args_validate_platform_and_ref() {
        let a = ImageArgs {
            platform: Some("linux".into()),
            ..Default::default()
        };
        assert!(matches!(a.to_config("x.tar"), Err(Error::Usage(_))));
        let a = ImageArgs {
            reference: Some("@2".into()),
            ..Default::default()
        };
        let c = a.to_config("x.tar").unwrap();
        assert_eq!(c.open.selector, Some(crate::image::Selector::Index(2)));
    }

    #[test]
    fn cli_parses_mount() {
        let cli = Cli::try_parse_from([
            "rimgfs", "-vv", "mount", "img.tar", "/mnt", "-o", "ro", "-f",
        ])
        .unwrap();
        assert_eq!(cli.verbose, 2);
        match cli.cmd {
            Command::Mount {
                image,
                mountpoint,
                mount,
                ..
            } => {
                assert_eq!(image, "img.tar");
                assert_eq!(mountpoint, PathBuf::from("/mnt"));
                assert!(mount.foreground);
            }
            other => panic!("parsed {other:?}"),
        }
    }
}
