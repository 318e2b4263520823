//! Command line: clap types, and their conversion into validated configurations.
//!
//! The doc comments are the `--help` text. Each subcommand's arguments are one struct, run by
//! its file in [`crate::app`]; options several commands share are flattened structs:
//! [`ImageArgs`] (which image, where the cache is) and [`MountArgs`]. `MountArgs::to_config`
//! is the one place where mount options are checked into a [`MountOptions`], so it is
//! unit-tested. [`parse_args`] also takes the form mount(8) runs, `rimgfs SOURCE MOUNTPOINT
//! -o OPTIONS`, as `rimgfs mount`. Dependencies: clap, image, cache, mount (`MountOptions`),
//! commit (`Format`), error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

use crate::cache::{Cache, Policy};
use crate::error::{Error, Result};
use crate::image::config::Platform;
use crate::image::registry::RegistryOptions;
use crate::image::registry::creds::{self, CredOptions};
use crate::image::{ImageSpec, OpenOptions, parse_selector};
use crate::mount::MountOptions;

/// Mount a container image as its merged filesystem.
#[derive(Debug, Parser)]
#[command(name = "rimgfs", version, about, long_about = None, after_help = IMPLICIT_MOUNT_HELP)]
pub struct Cli {
    /// More output on stderr: -v info, -vv debug (every FUSE request), -vvv trace.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub cmd: Command,
}

/// How `--help` describes the command line that is not a subcommand.
const IMPLICIT_MOUNT_HELP: &str = "\
`rimgfs SOURCE MOUNTPOINT [-o OPTIONS]` is `rimgfs mount SOURCE MOUNTPOINT -o OPTIONS`: the form
mount(8) runs (through mount.fuse3) for `mount -t fuse.rimgfs` and fstab entries of type
fuse.rimgfs.";

/// Parses a command line, the program name first. A first argument that is neither a
/// subcommand nor an option but names an image (it holds a `/` or a `:`, or is an existing
/// file) starts a mount: mount.fuse3 runs `rimgfs SOURCE MOUNTPOINT -o OPTIONS` for
/// `mount -t fuse.rimgfs` and fstab entries. Anything else is left to clap, so a mistyped
/// subcommand is still a usage error with a suggestion.
pub fn parse_args<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if let Some(i) = implicit_mount_at(&args) {
        args.insert(i, "mount".into());
    }
    Cli::try_parse_from(args)
}

/// Where `mount` goes in a command line of the implicit mount form, if it is one.
fn implicit_mount_at(args: &[OsString]) -> Option<usize> {
    let cmd = Cli::command();
    for (i, arg) in args.iter().enumerate().skip(1) {
        let Some(s) = arg.to_str() else {
            // A non-UTF-8 name is no subcommand: a path.
            return Some(i);
        };
        if let Some(flags) = s.strip_prefix('-') {
            // -v and --verbose may come first; anything else (--help, a typo) is clap's.
            let verbose =
                flags == "-verbose" || (!flags.is_empty() && flags.bytes().all(|b| b == b'v'));
            if verbose {
                continue;
            }
            return None;
        }
        let subcommand = s == "help"
            || cmd
                .get_subcommands()
                .any(|c| c.get_name() == s || c.get_all_aliases().any(|a| a == s));
        let names_image = s.contains('/') || s.contains(':') || Path::new(s).exists();
        return (!subcommand && names_image).then_some(i);
    }
    None
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
    /// Print the completion script of SHELL for rimgfs's commands and options.
    Completions(CompletionsCommand),
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

/// Arguments of `rimgfs completions`.
#[derive(Debug, Args)]
pub struct CompletionsCommand {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash (with the bash-completion package).
    Bash,
    /// zsh (a `_rimgfs` function for `fpath`).
    Zsh,
    /// fish.
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(s: Shell) -> Self {
        match s {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
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
    /// Print one JSON object instead of text (fields: JSON OUTPUT in rimgfs(1)).
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
    /// Print one JSON object with every entry's attributes instead of text (fields: JSON
    /// OUTPUT in rimgfs(1)).
    #[arg(long)]
    pub json: bool,
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
    /// Mount options, comma-separated: ro, rw, suid, dev, allow_other (root's default),
    /// noallow_other, allow_root, default_permissions, nodefault_permissions, exec, noexec,
    /// atime, noatime, passthrough, nopassthrough, and upper=DIR, work=DIR, cache_dir=DIR
    /// (as --upper, --work, --cache-dir, for fstab entries); mount(8)'s own options
    /// (defaults, auto, noauto, user, users, nofail, _netdev, x-*, ...) are ignored.
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

/// Options that mean something to mount(8), systemd or mount.fuse3 only; they reach rimgfs
/// from fstab entries and are ignored. `x-*` and `comment=` (userspace options by
/// convention) are matched by prefix.
const MOUNT8_ONLY_OPTIONS: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "group", "owner", "nofail", "_netdev",
    "_rnetdev", "async", "silent", "loud",
];

/// Whether `opt` is one of mount(8)'s own options.
fn is_mount8_only(opt: &str) -> bool {
    MOUNT8_ONLY_OPTIONS.contains(&opt) || opt.starts_with("x-") || opt.starts_with("comment=")
}

/// Applies a `KEY=PATH` mount option: the flags an fstab entry cannot pass
/// (`upper=`, `work=`, `cache_dir=`); mount(8)'s own (`x-*=`, `comment=`) are ignored.
fn set_path_option(o: &mut MountOptions, opt: &str) -> Result<()> {
    let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
    let slot = match key {
        "upper" => &mut o.upper,
        "work" => &mut o.work,
        "cache_dir" => &mut o.cache_dir,
        _ if is_mount8_only(opt) => {
            log::debug!("ignoring mount(8) option {opt:?}");
            return Ok(());
        }
        _ => return Err(Error::Usage(format!("unknown mount option {opt:?}"))),
    };
    if value.is_empty() {
        return Err(Error::Usage(format!("mount option {key}= needs a path")));
    }
    *slot = Some(PathBuf::from(value));
    Ok(())
}

impl MountArgs {
    /// Parses `-o` lists and flags into [`MountOptions`] for a daemon of this process's
    /// privileges.
    pub fn to_config(&self) -> Result<MountOptions> {
        self.to_config_as(nix::unistd::geteuid().is_root())
    }

    /// Parses `-o` lists and flags into [`MountOptions`], from its safe defaults for
    /// untrusted images (nosuid, nodev, default_permissions). A mount by `root` lets every
    /// user in (`allow_other`, the image's modes deciding, as on kernel overlayfs) unless
    /// `noallow_other` or `allow_root` says otherwise; other users' mounts are their own,
    /// since fusermount3 allows more only with `user_allow_other`.
    pub fn to_config_as(&self, root: bool) -> Result<MountOptions> {
        let mut o = MountOptions {
            upper: self.upper.clone(),
            work: self.work.clone(),
            foreground: self.foreground,
            layer: self.layer,
            ..MountOptions::default()
        };
        if let Some(n) = self.threads {
            o.threads = n;
        }
        if o.threads == 0 {
            return Err(Error::Usage("--threads must be at least 1".into()));
        }
        // None until an option says: the default depends on `root` and `allow_root`.
        let mut allow_other = None;
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
                "allow_other" => allow_other = Some(true),
                "noallow_other" => {
                    allow_other = Some(false);
                    o.allow_root = false;
                }
                "allow_root" => o.allow_root = true,
                other if other.contains('=') => set_path_option(&mut o, other)?,
                other if is_mount8_only(other) => {
                    log::debug!("ignoring mount(8) option {other:?}");
                }
                other => return Err(Error::Usage(format!("unknown mount option {other:?}"))),
            }
        }
        o.allow_other = allow_other.unwrap_or(root && !o.allow_root);
        if o.work.is_some() && o.upper.is_none() {
            return Err(Error::Usage("work= needs upper=".into()));
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
        for root in [false, true] {
            let o = args(&[]).to_config_as(root).unwrap();
            assert!(!o.suid && !o.dev && o.default_permissions, "root={root}");
            assert!(!o.read_only && o.exec && !o.allow_root, "root={root}");
        }
    }

    #[test]
    fn mount_options_table() {
        let o = args(&["suid,dev", "allow_other,ro"])
            .to_config_as(false)
            .unwrap();
        assert!(o.suid && o.dev && o.allow_other && o.read_only);
        let o = args(&["ro,nodefault_permissions,noexec,nopassthrough"])
            .to_config_as(false)
            .unwrap();
        assert!(!o.default_permissions && !o.exec && !o.passthrough);
        // Writable mounts keep the kernel's permission checks.
        assert!(matches!(
            args(&["nodefault_permissions"]).to_config_as(false),
            Err(Error::Usage(_))
        ));
        let o = args(&["rw"]).to_config_as(false).unwrap();
        assert!(!o.read_only && o.upper.is_none());
        for root in [false, true] {
            for bad in [
                "bogus",
                "allow_other,allow_root",
                "xsystemd.automount",
                "fsname=x",
            ] {
                assert!(
                    matches!(args(&[bad]).to_config_as(root), Err(Error::Usage(_))),
                    "{bad} root={root}"
                );
            }
        }
    }

    // See: a mount made by root lets only root in.
    #[test]
    fn mount_options_allow_other_is_roots_default() {
        // (options, allow_other for root, for others, allow_root for both)
        let table: &[(&[&str], bool, bool, bool)] = &[
            (&[], true, false, false),
            (&["noallow_other"], false, false, false),
            (&["allow_other"], true, true, false),
            (&["allow_root"], false, false, true),
            (&["allow_other,noallow_other"], false, false, false),
            (&["noallow_other", "allow_other"], true, true, false),
            (&["allow_root,noallow_other"], false, false, false),
        ];
        for &(opts, root, user, allow_root) in table {
            let r = args(opts).to_config_as(true).unwrap();
            let u = args(opts).to_config_as(false).unwrap();
            assert_eq!(
                (r.allow_other, r.allow_root),
                (root, allow_root),
                "root {opts:?}"
            );
            assert_eq!(
                (u.allow_other, u.allow_root),
                (user, allow_root),
                "user {opts:?}"
            );
            // Permissions are checked whoever may enter.
            assert!(r.default_permissions && !r.suid && !r.dev, "{opts:?}");
        }
    }

    #[test]
    fn mount_options_of_mount8_are_ignored() {
        // What mount(8) and mount.fuse3 hand over for an fstab line
        // `SOURCE MNT fuse.rimgfs ro,allow_other,nofail,... 0 0`, and what systemd adds.
        let fstab = [
            "ro,allow_other,nofail,_netdev,dev,suid",
            "defaults,auto,noauto,user,nouser,users,group,owner,_rnetdev,async",
            "x-systemd.automount,x-systemd.requires=network.target,x-mount.mkdir,comment=x",
        ];
        let o = args(&fstab).to_config_as(true).unwrap();
        let want = args(&["ro,allow_other,dev,suid"])
            .to_config_as(true)
            .unwrap();
        assert_eq!(o, want);
    }

    #[test]
    fn mount_options_with_paths_stand_for_flags() {
        let o = args(&["upper=/srv/u,work=/srv/w", "cache_dir=/var/tmp/c"])
            .to_config_as(true)
            .unwrap();
        assert_eq!(o.upper, Some(PathBuf::from("/srv/u")));
        assert_eq!(o.work, Some(PathBuf::from("/srv/w")));
        assert_eq!(o.cache_dir, Some(PathBuf::from("/var/tmp/c")));
        for bad in ["upper=", "work=/w", "ro,upper=/u", "uid=0", "cache_dir"] {
            assert!(
                matches!(args(&[bad]).to_config_as(true), Err(Error::Usage(_))),
                "{bad}"
            );
        }
    }

    /// Parses `args` (without the program name) as `main` does.
    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        parse_args(std::iter::once("rimgfs").chain(args.iter().copied()))
    }

    #[test]
    fn cli_implicit_mount_is_what_mount_fuse3_runs() {
        // mount.fuse3 runs `rimgfs SOURCE MOUNTPOINT -o OPTIONS`.
        for (argv, image) in [
            (
                &[
                    "docker-archive:/srv/app.tar",
                    "/mnt/app",
                    "-o",
                    "ro,allow_other,dev,suid",
                ][..],
                "docker-archive:/srv/app.tar",
            ),
            (&["/srv/app.tar", "/mnt/app"][..], "/srv/app.tar"),
            (&["-v", "oci:layout", "/mnt/app", "-f"][..], "oci:layout"),
            (&["./mount", "/mnt/app"][..], "./mount"),
        ] {
            let cli = parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            match cli.cmd {
                Command::Mount(m) => {
                    assert_eq!(m.image, image, "{argv:?}");
                    assert_eq!(m.mountpoint, PathBuf::from("/mnt/app"), "{argv:?}");
                }
                other => panic!("{argv:?} parsed as {other:?}"),
            }
        }
        let cli = parse(&["src/x.tar", "/mnt", "-o", "ro"]).unwrap();
        let Command::Mount(m) = cli.cmd else {
            panic!("not a mount")
        };
        assert_eq!(m.mount.options, ["ro"]);
        // Subcommands, help and version are as they were; a mistyped subcommand and a
        // missing mount point are usage errors.
        assert!(matches!(parse(&["ls", "a:b"]).unwrap().cmd, Command::Ls(_)));
        assert!(matches!(
            parse(&["-v", "inspect", "/x.tar"]).unwrap().cmd,
            Command::Inspect(_)
        ));
        for (argv, kind) in [
            (&["--help"][..], clap::error::ErrorKind::DisplayHelp),
            (&["help"][..], clap::error::ErrorKind::DisplayHelp),
            (&["-V"][..], clap::error::ErrorKind::DisplayVersion),
            (
                &["inspct", "/x.tar"][..],
                clap::error::ErrorKind::InvalidSubcommand,
            ),
            (
                &["/x.tar"][..],
                clap::error::ErrorKind::MissingRequiredArgument,
            ),
            (
                &[][..],
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            ),
        ] {
            let e = parse(argv).expect_err(&format!("{argv:?}"));
            assert_eq!(e.kind(), kind, "{argv:?}: {e}");
        }
    }

    #[test]
    fn cli_parses_completions() {
        for (name, shell) in [
            ("bash", Shell::Bash),
            ("zsh", Shell::Zsh),
            ("fish", Shell::Fish),
        ] {
            match parse(&["completions", name]).unwrap().cmd {
                Command::Completions(c) => assert_eq!(c.shell, shell),
                other => panic!("parsed {other:?}"),
            }
        }
        assert!(parse(&["completions", "tcsh"]).is_err());
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
