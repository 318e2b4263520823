//! Command line: clap types, and their conversion into validated configurations.
//!
//! The doc comments are the `--help` text. Each subcommand's arguments are one struct, run by
//! its file in [`crate::app`]; options several commands share are flattened structs:
//! [`ImageArgs`] (which image, where the cache is) and [`MountArgs`]. `MountArgs::to_config`
//! is the one place where mount options are checked into a [`MountOptions`], so it is
//! unit-tested. Dependencies: clap, image, cache, mount (`MountOptions`), commit (`Format`),
//! error.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::cache::{Cache, Policy};
use crate::error::{Error, Result};
use crate::image::config::Platform;
use crate::image::registry::RegistryOptions;
use crate::image::registry::creds::{self, CredOptions};
use crate::image::{ImageSpec, OpenOptions, parse_selector};
use crate::mount::MountOptions;

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

/// The commands. Each variant's doc comment is its `--help` summary; its arguments are one
/// struct below, handed whole to the command's `app` module.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount IMAGE's merged root filesystem on MOUNTPOINT, writable: changes go to --upper DIR,
    /// or to an ephemeral upper layer removed at unmount (--read-only for none).
    Mount(MountCommand),
    /// Unmount a rimgfs mount (also one whose daemon died).
    Umount(UmountCommand),
    /// Show an image's references, platform, config, layers and history.
    Inspect(InspectCommand),
    /// List a directory of the merged image without mounting it.
    Ls(LsCommand),
    /// Write a file of the merged image to stdout (symlinks are followed inside the image).
    Cat(CatCommand),
    /// List what an overlayfs upper directory changes in IMAGE, as `docker diff` does:
    /// A added, C changed (also every directory above a change), D deleted.
    Diff(DiffCommand),
    /// Show, trim or prune the cache (layer blobs, indexes, decompressed layers).
    Cache(CacheCommand),
    /// Write a new image: IMAGE's layers as they are, plus one layer of what an overlayfs
    /// upper directory changes.
    Commit(CommitCommand),
}

/// Arguments of `rimgfs mount`.
#[derive(Debug, Args)]
pub struct MountCommand {
    /// The image: [docker-archive:|oci:|oci-archive:]PATH[:REF|:@N],
    /// docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST],
    /// containers-storage:[[DRIVER@]ROOT[+RUNROOT]]NAME or docker-daemon:NAME.
    pub image: String,
    /// An existing directory to mount on.
    pub mountpoint: PathBuf,
    /// Image selection.
    #[command(flatten)]
    pub select: ImageArgs,
    /// Mount options.
    #[command(flatten)]
    pub mount: MountArgs,
}

/// Arguments of `rimgfs umount`.
#[derive(Debug, Args)]
pub struct UmountCommand {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Detach now and clean up when no longer busy.
    #[arg(short, long)]
    pub lazy: bool,
}

/// Arguments of `rimgfs inspect`.
#[derive(Debug, Args)]
pub struct InspectCommand {
    /// The image.
    pub image: String,
    /// Image selection.
    #[command(flatten)]
    pub select: ImageArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `rimgfs ls`.
#[derive(Debug, Args)]
pub struct LsCommand {
    /// The image.
    pub image: String,
    /// Path inside the image.
    #[arg(default_value = "/")]
    pub path: String,
    /// Image selection.
    #[command(flatten)]
    pub select: ImageArgs,
    /// Long format: mode, links, owner, group, size, mtime, name, link target.
    #[arg(short, long)]
    pub long: bool,
    /// List subdirectories recursively (full paths).
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// With -l, also show the layer that provides each entry.
    #[arg(long)]
    pub layers: bool,
    /// Show the image as it was after layer N (0 = bottom).
    #[arg(long, value_name = "N")]
    pub layer: Option<usize>,
}

/// Arguments of `rimgfs cat`.
#[derive(Debug, Args)]
pub struct CatCommand {
    /// The image.
    pub image: String,
    /// Path inside the image.
    pub path: String,
    /// Image selection.
    #[command(flatten)]
    pub select: ImageArgs,
    /// Show the image as it was after layer N (0 = bottom).
    #[arg(long, value_name = "N")]
    pub layer: Option<usize>,
}

/// Arguments of `rimgfs diff`.
#[derive(Debug, Args)]
pub struct DiffCommand {
    /// The image the upper directory was made over.
    pub image: String,
    /// The overlayfs upper directory (kernel or fuse-overlayfs format).
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// Image selection.
    #[command(flatten)]
    pub select: ImageArgs,
    /// Print a JSON list of {"path", "kind"} instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `rimgfs commit`.
#[derive(Debug, Args)]
pub struct CommitCommand {
    /// The image the upper directory was made over.
    pub image: String,
    /// The overlayfs upper directory (kernel or fuse-overlayfs format).
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// Where to write the new image (a directory for --format oci).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Name the new image by this reference.
    #[arg(long, value_name = "REF")]
    pub tag: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CommitFormat::DockerArchive)]
    pub format: CommitFormat,
    /// Comment of the new layer's history entry.
    #[arg(short, long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Image selection.
    #[command(flatten)]
    pub select: ImageArgs,
}

/// `rimgfs cache`.
#[derive(Debug, Args)]
pub struct CacheCommand {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,
}

/// `rimgfs cache` actions.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// List what the cache holds: entries, sizes, last use, whether a live process uses them.
    Ls {
        /// Cache directory (default: /var/cache/rimgfs for root, else $XDG_CACHE_HOME/rimgfs).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Remove leftovers of interrupted writes; with --cache-max, also evict the least
    /// recently used entries (blob data first, indexes last) until the cache fits.
    Gc {
        /// Cache directory (default: /var/cache/rimgfs for root, else $XDG_CACHE_HOME/rimgfs).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Evict until the cache takes at most SIZE (bytes, or with K, M, G, T).
        #[arg(long, value_name = "SIZE")]
        cache_max: Option<String>,
    },
    /// Remove IMAGE's layers from the cache (blob data, records, indexes, decompressed and
    /// passthrough copies), except what a live mount uses.
    Prune {
        /// The image.
        image: String,
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
    /// How to reach a registry (docker:// images).
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Blob fetching and cache size.
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// Options of `docker://` images (skopeo's names).
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// Registry credentials; without :PASS the password is asked for on the terminal, or
    /// read as one line from stdin when it is not a terminal.
    #[arg(long, value_name = "USER[:PASS]")]
    pub creds: Option<CredsArg>,
    /// Registry auth file (auth.json or Docker config.json format), consulted instead of
    /// the default ones [default: $REGISTRY_AUTH_FILE].
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Require HTTPS with a verified certificate (true); false also allows unverified
    /// TLS and plain HTTP [default: true, unless registries.conf says insecure].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// Directory of the registry's certificates: *.crt CAs (added to the system's) and a
    /// client.cert/client.key pair [default: the certs.d/HOST:PORT directories].
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
}

/// The value of `--creds`: shown by `Debug` without the password.
#[derive(Clone)]
pub struct CredsArg(String);

impl std::str::FromStr for CredsArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(CredsArg(s.to_string()))
    }
}

impl std::fmt::Debug for CredsArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.0.split(':').next().unwrap_or("");
        write!(f, "CredsArg({user:?}:<secret>)")
    }
}

impl RegistryArgs {
    /// Validates the registry options, asking for a `--creds` password if it is missing.
    pub fn to_options(&self) -> Result<RegistryOptions> {
        let creds = match &self.creds {
            Some(c) => Some(creds::parse_creds(&c.0, read_password)?),
            None => None,
        };
        if let Some(f) = &self.authfile {
            creds::check_authfile(f)?;
        }
        let mut o = RegistryOptions {
            tls_verify: self.tls_verify,
            ..Default::default()
        };
        o.net.cert_dir = self.cert_dir.clone();
        o.net.creds = CredOptions {
            creds,
            authfile: self.authfile.clone(),
        };
        Ok(o)
    }
}

/// Asks for `user`'s password on the terminal without echo, or reads a line from stdin
/// when it is not a terminal.
fn read_password(user: &str) -> std::io::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        let saved = tcgetattr(&stdin)?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        eprint!("Password for {user}: ");
        let _ = std::io::stderr().flush();
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
        let r = stdin.lock().read_line(&mut line);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
        eprintln!();
        r?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Blanks the password of `--creds USER:PASS` in this process's argument area, so that
/// neither `ps` nor the daemon forked from this process shows it: the value becomes
/// `USER:*`. Nothing to do without `--creds`.
pub fn hide_credentials() {
    let given = std::env::args_os().any(|a| a.as_encoded_bytes().starts_with(b"--creds"));
    if !given {
        return;
    }
    let r = crate::sys::edit_own_args(hide_creds_in);
    if let Err(e) = r {
        log::warn!("cannot hide the --creds password from ps: {e}");
    }
}

/// The edit of [`hide_credentials`] on a NUL-separated argument area.
fn hide_creds_in(area: &mut [u8]) -> bool {
    const FLAG: &[u8] = b"--creds";
    let mut changed = false;
    let mut value_next = false;
    let mut start = 0;
    while start < area.len() {
        let end = area[start..]
            .iter()
            .position(|&b| b == 0)
            .map_or(area.len(), |i| start + i);
        let arg = &area[start..end];
        let value = if value_next {
            Some(start)
        } else if arg.starts_with(FLAG) && arg.get(FLAG.len()) == Some(&b'=') {
            Some(start + FLAG.len() + 1)
        } else {
            None
        };
        // After `--`, arguments are operands: a `--creds` there is not the option.
        if arg == b"--" {
            break;
        }
        value_next = arg == FLAG;
        if let Some(v) = value {
            if let Some(colon) = area[v..end].iter().position(|&b| b == b':') {
                let p = v + colon + 1;
                if p < end {
                    area[p] = b'*';
                    area[p + 1..end].fill(0);
                    changed = true;
                }
            }
        }
        start = end + 1;
    }
    changed
}

/// Options for layers fetched from a repository, and the cache's size.
#[derive(Debug, Args, Clone, Default)]
pub struct FetchArgs {
    /// Keep the cache under SIZE (bytes, or with K, M, G, T): least recently used blob data
    /// is evicted first, indexes last, nothing a live mount uses.
    #[arg(long, value_name = "SIZE")]
    pub cache_max: Option<String>,
    /// Use only what the cache holds: fetch no blob data (reads of data not in the cache
    /// fail with EIO).
    #[arg(long)]
    pub offline: bool,
    /// After mounting, do not fetch the rest of lazily read layers in the background.
    #[arg(long)]
    pub no_prefetch: bool,
}

impl FetchArgs {
    /// The cache policy these options ask for.
    pub fn policy(&self) -> Result<Policy> {
        Ok(Policy {
            offline: self.offline,
            no_prefetch: self.no_prefetch,
            max_bytes: self.cache_max.as_deref().map(parse_size).transpose()?,
        })
    }
}

/// Parses a size: bytes, or a number with a K, M, G or T suffix (powers of 1024; `KiB`,
/// `KB` and `k` are the same).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::Usage(format!(
            "bad size {s:?}: expected bytes or a number with K, M, G or T"
        ))
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
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
        let cache = Cache::new(self.cache_dir.clone().unwrap_or_else(Cache::default_root))
            .with_policy(self.fetch.policy()?);
        let mut registry = self.registry.to_options()?;
        // One --offline for both sides: no manifest request, no blob fetch.
        registry.offline = self.fetch.offline;
        Ok(ImageConfig {
            spec,
            open: OpenOptions {
                selector,
                platform,
                registry,
            },
            cache,
        })
    }
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
    fn registry_args_parse() {
        let cli = Cli::try_parse_from([
            "rimgfs",
            "inspect",
            "docker://a.io/x",
            "--creds=u:p",
            "--tls-verify=false",
            "--cert-dir",
            "/c",
            "--offline",
        ])
        .unwrap();
        let Command::Inspect(InspectCommand { select, .. }) = cli.cmd else {
            panic!("parsed {:?}", cli.cmd)
        };
        let o = select.registry.to_options().unwrap();
        assert_eq!(o.tls_verify, Some(false));
        assert!(select.fetch.offline);
        assert_eq!(o.net.cert_dir.as_deref(), Some(std::path::Path::new("/c")));
        let (u, p) = o.net.creds.creds.clone().unwrap();
        assert_eq!((u.as_str(), p.expose()), ("u", "p"));
        assert!(
            !format!("{select:?}{o:?}").contains(":p"),
            "Debug shows no password"
        );
        let cli = Cli::try_parse_from(["rimgfs", "ls", "docker://x", "--tls-verify"]).unwrap();
        let Command::Ls(LsCommand { select, .. }) = cli.cmd else {
            panic!()
        };
        assert_eq!(select.registry.tls_verify, Some(true));
    }

    #[test]
    fn creds_are_hidden_in_the_argument_area() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"rimgfs\0--creds\0me:s3cret\0x\0",
                b"rimgfs\0--creds\0me:*\0\0\0\0\0\0x\0",
            ),
            (b"a\0--creds=me:pw\0", b"a\0--creds=me:*\0\0"),
            (b"a\0--creds\0me\0", b"a\0--creds\0me\0"),
            (b"a\0--\0--creds=me:pw\0", b"a\0--\0--creds=me:pw\0"),
            (b"a\0--credsx=me:pw\0", b"a\0--credsx=me:pw\0"),
        ];
        for (input, want) in cases {
            let mut area = input.to_vec();
            let changed = hide_creds_in(&mut area);
            assert_eq!(&area[..], *want, "{}", String::from_utf8_lossy(input));
            assert_eq!(changed, input != want);
        }
    }

    #[test]
    fn man_page_mentions_every_command_and_flag() {
        use clap::CommandFactory;
        let man = include_str!("../man/rimgfs.1");
        fn walk(c: &clap::Command, man: &str, path: &str) {
            for a in c.get_arguments() {
                if let Some(long) = a.get_long() {
                    if long != "help" && long != "version" {
                        assert!(
                            man.contains(&format!("Fl -{long}")),
                            "{path} --{long} is not in the man page"
                        );
                    }
                }
            }
            for sub in c.get_subcommands() {
                let name = sub.get_name();
                if name != "help" {
                    let full = format!("{path} {name}");
                    let cm = full.trim_start_matches("rimgfs ");
                    assert!(
                        man.contains(&format!("Cm {cm}")),
                        "{full} is not in the man page"
                    );
                    walk(sub, man, &full);
                }
            }
        }
        walk(&Cli::command(), man, "rimgfs");
    }

    #[test]
    fn size_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("4096", Some(4096)),
            ("10K", Some(10 << 10)),
            ("1.5G", Some(3 << 29)),
            ("2GiB", Some(2 << 30)),
            ("7mb", Some(7 << 20)),
            ("1T", Some(1 << 40)),
            ("", None),
            ("G", None),
            ("10X", None),
            ("-1", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s).ok(), *want, "{s}");
        }
        let a = ImageArgs {
            fetch: FetchArgs {
                cache_max: Some("1M".into()),
                offline: true,
                no_prefetch: false,
            },
            ..Default::default()
        };
        let c = a.to_config("x.tar").unwrap();
        assert_eq!(c.cache.policy().max_bytes, Some(1 << 20));
        assert!(c.cache.policy().offline);
    }

    #[test]
    fn cli_parses_mount() {
        let cli = Cli::try_parse_from([
            "rimgfs", "-vv", "mount", "img.tar", "/mnt", "-o", "ro", "-f",
        ])
        .unwrap();
        assert_eq!(cli.verbose, 2);
        match cli.cmd {
            Command::Mount(MountCommand {
                image,
                mountpoint,
                mount,
                ..
            }) => {
                assert_eq!(image, "img.tar");
                assert_eq!(mountpoint, PathBuf::from("/mnt"));
                assert!(mount.foreground);
            }
            other => panic!("parsed {other:?}"),
        }
    }
}
