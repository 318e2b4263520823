//! Where a containers/storage store is: the `[driver@graphroot+runroot:options]` specifier of
//! a reference (skopeo's syntax), or the configuration podman would use, found the way
//! containers/storage finds it (`types/options.go`):
//!
//! - the configuration file: `$CONTAINERS_STORAGE_CONF`; else, for a user other than root,
//!   `$XDG_CONFIG_HOME/containers/storage.conf` (`~/.config/…`) when it exists; else
//!   `/etc/containers/storage.conf`, else `/usr/share/containers/storage.conf`;
//! - root: `graphroot` / `runroot` from it, by default `/var/lib/containers/storage` and
//!   `/run/containers/storage`;
//! - other users: their own file's `graphroot`, else the system file's
//!   `rootless_storage_path` (`$HOME`, `$UID`, `$USER` expanded), else
//!   `$XDG_DATA_HOME/containers/storage` (`~/.local/share/…`); run root
//!   `$XDG_RUNTIME_DIR/containers`;
//! - the driver: the specifier's, else the file's `driver`, else `$STORAGE_DRIVER`, else the
//!   one whose `<driver>-images` directory exists in the graph root.
//!
//! Everything is computed from an [`Env`] value, so the rules are tested without a home.
//! Dependencies: error, toml, serde.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The system-wide configuration files, in the order containers/storage tries them.
const SYSTEM_CONF: &[&str] = &[
    "/etc/containers/storage.conf",
    "/usr/share/containers/storage.conf",
];
/// Root's default graph root.
const ROOT_GRAPH_ROOT: &str = "/var/lib/containers/storage";
/// Root's default run root.
const ROOT_RUN_ROOT: &str = "/run/containers/storage";
/// Drivers whose layers rimgfs reads, in the order a store is probed for them.
pub const DRIVERS: &[&str] = &["overlay", "vfs"];

/// The `[...]` part of a reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Specifier {
    /// `driver@`.
    pub driver: Option<String>,
    /// The graph root.
    pub graph_root: Option<PathBuf>,
    /// `+runroot`.
    pub run_root: Option<PathBuf>,
}

/// A store's location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Graph driver (`overlay`, `vfs`, ...).
    pub driver: String,
    /// Holds images, layers and their data.
    pub graph_root: PathBuf,
    /// Holds run-time state (the volatile layers of a transient store).
    pub run_root: PathBuf,
}

/// The process environment the defaults depend on.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// Effective user id.
    pub uid: u32,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$USER`.
    pub user: Option<String>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$XDG_DATA_HOME`.
    pub xdg_data_home: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$CONTAINERS_STORAGE_CONF`.
    pub storage_conf: Option<PathBuf>,
    /// `$STORAGE_DRIVER`.
    pub storage_driver: Option<String>,
}

impl Env {
    /// This process's environment.
    pub fn current() -> Env {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Env {
            uid: nix::unistd::geteuid().as_raw(),
            home: var("HOME").map(PathBuf::from),
            user: var("USER").and_then(|v| v.into_string().ok()),
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            xdg_data_home: var("XDG_DATA_HOME").map(PathBuf::from),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR").map(PathBuf::from),
            storage_conf: var("CONTAINERS_STORAGE_CONF").map(PathBuf::from),
            storage_driver: var("STORAGE_DRIVER").and_then(|v| v.into_string().ok()),
        }
    }

    fn home(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(|| PathBuf::from("/"))
    }
}

/// The `[storage]` table of `storage.conf`; every other key is ignored.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Conf {
    /// Graph driver.
    pub driver: Option<String>,
    /// Graph root.
    pub graphroot: Option<String>,
    /// Run root.
    pub runroot: Option<String>,
    /// Graph root of users other than root.
    pub rootless_storage_path: Option<String>,
}

#[derive(Deserialize)]
struct ConfFile {
    #[serde(default)]
    storage: Conf,
}

impl Conf {
    /// Parses a `storage.conf`.
    pub fn parse(text: &str) -> std::result::Result<Conf, String> {
        toml::from_str::<ConfFile>(text)
            .map(|f| f.storage)
            .map_err(|e| e.to_string().lines().next().unwrap_or("").to_string())
    }

    /// Reads a `storage.conf`; `None` if it does not exist.
    fn read(path: &Path) -> Result<Option<Conf>> {
        match std::fs::read_to_string(path) {
            Ok(t) => Conf::parse(&t)
                .map(Some)
                .map_err(|e| Error::bad_image(path, format!("bad storage configuration: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                op: "read",
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }
}

/// Splits `[specifier]rest` off a reference.
pub fn split_reference(r: &str) -> Result<(Option<Specifier>, &str)> {
    let Some(inner) = r.strip_prefix('[') else {
        return Ok((None, r));
    };
    let bad = |why: &str| Error::Usage(format!("containers-storage:{r}: {why}"));
    let (spec, rest) = inner
        .split_once(']')
        .ok_or_else(|| bad("the store specifier has no closing ]"))?;
    let (driver, spec) = match spec.split_once('@') {
        Some(("", _)) => return Err(bad("empty driver before @")),
        Some((d, s)) => (Some(d.to_string()), s),
        None => (None, spec),
    };
    // Driver options after `:` concern mounting with the driver; reading needs none.
    let spec = spec.split_once(':').map_or(spec, |(s, _)| s);
    let (graph, run) = spec.split_once('+').unwrap_or((spec, ""));
    let abs = |p: &str, what: &str| -> Result<Option<PathBuf>> {
        match p {
            "" => Ok(None),
            p if Path::new(p).is_absolute() => Ok(Some(PathBuf::from(p))),
            _ => Err(bad(&format!("the {what} must be an absolute path"))),
        }
    };
    let s = Specifier {
        driver,
        graph_root: abs(graph, "graph root")?,
        run_root: abs(run, "run root")?,
    };
    if s == Specifier::default() {
        return Err(bad("empty store specifier"));
    }
    Ok((Some(s), rest))
}

/// Expands `$HOME`, `$UID` and `$USER` (also as `${...}`) as containers/storage does for
/// `rootless_storage_path`.
fn expand(path: &str, env: &Env) -> PathBuf {
    let home = env.home().display().to_string();
    let uid = env.uid.to_string();
    let user = env.user.clone().unwrap_or_default();
    let mut s = path.to_string();
    for (k, v) in [("HOME", &home), ("UID", &uid), ("USER", &user)] {
        s = s
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    PathBuf::from(s)
}

/// Finds the store: `spec` where it says, the configuration and defaults elsewhere.
/// `read_conf` reads a configuration file (`None` when absent); `has_dir` says whether a
/// directory exists (to find the driver of an existing store).
pub fn locate(
    spec: Option<&Specifier>,
    env: &Env,
    read_conf: &dyn Fn(&Path) -> Result<Option<Conf>>,
    has_dir: &dyn Fn(&Path) -> Result<bool>,
) -> Result<Location> {
    let system = || -> Result<Conf> {
        for p in SYSTEM_CONF {
            if let Some(c) = read_conf(Path::new(p))? {
                return Ok(c);
            }
        }
        Ok(Conf::default())
    };
    let rootless = env.uid != 0;
    let conf = if let Some(p) = &env.storage_conf {
        read_conf(p)?.unwrap_or_default()
    } else if rootless {
        let user_conf = env
            .xdg_config_home
            .clone()
            .unwrap_or_else(|| env.home().join(".config"))
            .join("containers/storage.conf");
        match read_conf(&user_conf)? {
            Some(c) => c,
            // Without a file of their own, users get the system file's driver and
            // rootless_storage_path, never its (root's) graph and run roots.
            None => {
                let s = system()?;
                Conf {
                    driver: s.driver,
                    rootless_storage_path: s.rootless_storage_path,
                    ..Conf::default()
                }
            }
        }
    } else {
        system()?
    };
    let graph_root = spec
        .and_then(|s| s.graph_root.clone())
        .or_else(|| conf.graphroot.as_deref().map(|g| expand(g, env)))
        .unwrap_or_else(|| {
            if !rootless {
                return PathBuf::from(ROOT_GRAPH_ROOT);
            }
            if let Some(p) = &conf.rootless_storage_path {
                return expand(p, env);
            }
            env.xdg_data_home
                .clone()
                .unwrap_or_else(|| env.home().join(".local/share"))
                .join("containers/storage")
        });
    let run_root = spec
        .and_then(|s| s.run_root.clone())
        .or_else(|| conf.runroot.as_deref().map(|r| expand(r, env)))
        .unwrap_or_else(|| {
            if !rootless {
                return PathBuf::from(ROOT_RUN_ROOT);
            }
            env.xdg_runtime_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", env.uid)))
                .join("containers")
        });
    let driver = spec
        .and_then(|s| s.driver.clone())
        .or(conf.driver)
        .or_else(|| env.storage_driver.clone())
        .filter(|d| !d.is_empty());
    let driver = match driver {
        Some(d) => Some(d),
        None => {
            let mut found = None;
            for d in DRIVERS {
                if has_dir(&graph_root.join(format!("{d}-images")))? {
                    found = Some(d.to_string());
                    break;
                }
            }
            found
        }
    };
    let driver = driver.ok_or_else(|| {
        Error::bad_image(
            &graph_root,
            "no containers-storage image store here (no overlay-images or vfs-images)",
        )
    })?;
    // containers/storage treats overlay2 as overlay.
    let driver = if driver == "overlay2" {
        "overlay".to_string()
    } else {
        driver
    };
    Ok(Location {
        driver,
        graph_root,
        run_root,
    })
}

/// [`locate`] with the real files and environment.
pub fn locate_here(spec: Option<&Specifier>) -> Result<Location> {
    let has_dir = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io {
            op: "stat",
            path: p.to_path_buf(),
            source: e,
        }),
    };
    locate(spec, &Env::current(), &Conf::read, &has_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn user() -> Env {
        Env {
            uid: 1000,
            home: Some("/home/u".into()),
            user: Some("u".into()),
            ..Env::default()
        }
    }

    fn run(
        spec: Option<&Specifier>,
        env: &Env,
        files: &[(&str, &str)],
        dirs: &[&str],
    ) -> Result<Location> {
        let files: HashMap<PathBuf, Conf> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), Conf::parse(t).unwrap()))
            .collect();
        let read = move |p: &Path| -> Result<Option<Conf>> {
            Ok(files.get(p).map(|c| Conf {
                driver: c.driver.clone(),
                graphroot: c.graphroot.clone(),
                runroot: c.runroot.clone(),
                rootless_storage_path: c.rootless_storage_path.clone(),
            }))
        };
        let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
        locate(spec, env, &read, &|p| Ok(dirs.iter().any(|d| d == p)))
    }

    fn loc(driver: &str, graph: &str, run: &str) -> Location {
        Location {
            driver: driver.into(),
            graph_root: graph.into(),
            run_root: run.into(),
        }
    }

    #[test]
    fn specifier_parse_table() {
        let s = |d: Option<&str>, g: Option<&str>, r: Option<&str>| Specifier {
            driver: d.map(str::to_string),
            graph_root: g.map(PathBuf::from),
            run_root: r.map(PathBuf::from),
        };
        let cases = [
            ("img", None, "img"),
            ("[/g]img", Some(s(None, Some("/g"), None)), "img"),
            (
                "[overlay@/g+/r]a/b:1",
                Some(s(Some("overlay"), Some("/g"), Some("/r"))),
                "a/b:1",
            ),
            (
                "[vfs@/g:opt=1,x]img",
                Some(s(Some("vfs"), Some("/g"), None)),
                "img",
            ),
        ];
        for (r, spec, rest) in cases {
            assert_eq!(split_reference(r).unwrap(), (spec, rest), "{r}");
        }
        for bad in ["[/g", "[]x", "[@/g]x", "[rel]x", "[overlay@/g+rel]x"] {
            assert!(split_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_uses_system_conf_then_defaults() {
        let root = Env::default();
        let dirs = ["/var/lib/containers/storage/overlay-images"];
        assert_eq!(
            run(None, &root, &[], &dirs).unwrap(),
            loc(
                "overlay",
                "/var/lib/containers/storage",
                "/run/containers/storage"
            )
        );
        let conf = r#"
            # comment
            [storage]
            driver = "vfs"
            graphroot = "/srv/g"
            [storage.options]
            mount_program = "/usr/bin/fuse-overlayfs"
        "#;
        assert_eq!(
            run(None, &root, &[("/etc/containers/storage.conf", conf)], &[]).unwrap(),
            loc("vfs", "/srv/g", "/run/containers/storage")
        );
        // /usr/share is the fallback; /etc wins when both exist.
        let other = "[storage]\ndriver = \"overlay2\"\n";
        assert_eq!(
            run(
                None,
                &root,
                &[("/usr/share/containers/storage.conf", other)],
                &[]
            )
            .unwrap()
            .driver,
            "overlay"
        );
        // No driver configured and no store there: a one-line error.
        let e = run(None, &root, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("no containers-storage image store"), "{e}");
    }

    #[test]
    fn users_get_their_own_store() {
        let u = user();
        let dirs = ["/home/u/.local/share/containers/storage/vfs-images"];
        assert_eq!(
            run(None, &u, &[], &dirs).unwrap(),
            loc(
                "vfs",
                "/home/u/.local/share/containers/storage",
                "/run/user/1000/containers"
            )
        );
        // The system file's graph root is root's and is not used; its
        // rootless_storage_path is, expanded.
        let sys = "[storage]\ndriver=\"overlay\"\ngraphroot=\"/var/x\"\n\
                   rootless_storage_path=\"$HOME/s/${UID}/$USER\"\n";
        assert_eq!(
            run(None, &u, &[("/etc/containers/storage.conf", sys)], &[]).unwrap(),
            loc("overlay", "/home/u/s/1000/u", "/run/user/1000/containers")
        );
        // The user's own file wins; XDG variables move the defaults.
        let mine = "[storage]\ndriver=\"vfs\"\ngraphroot=\"/data/mine\"\n";
        let xdg = Env {
            xdg_config_home: Some("/cfg".into()),
            xdg_runtime_dir: Some("/rt".into()),
            ..user()
        };
        assert_eq!(
            run(
                None,
                &xdg,
                &[
                    ("/cfg/containers/storage.conf", mine),
                    ("/etc/containers/storage.conf", sys)
                ],
                &[]
            )
            .unwrap(),
            loc("vfs", "/data/mine", "/rt/containers")
        );
        // CONTAINERS_STORAGE_CONF names the one file read.
        let named = Env {
            storage_conf: Some("/x.conf".into()),
            ..user()
        };
        assert_eq!(
            run(
                None,
                &named,
                &[("/x.conf", mine), ("/etc/containers/storage.conf", sys)],
                &[]
            )
            .unwrap()
            .graph_root,
            PathBuf::from("/data/mine")
        );
    }

    #[test]
    fn specifier_overrides_configuration() {
        let spec = Specifier {
            driver: Some("vfs".into()),
            graph_root: Some("/g".into()),
            run_root: None,
        };
        let conf = "[storage]\ndriver=\"overlay\"\nrunroot=\"/r\"\n";
        assert_eq!(
            run(
                Some(&spec),
                &Env::default(),
                &[("/etc/containers/storage.conf", conf)],
                &[]
            )
            .unwrap(),
            loc("vfs", "/g", "/r")
        );
        // Without a driver, the store's own directories tell.
        let spec = Specifier {
            graph_root: Some("/g".into()),
            ..Specifier::default()
        };
        assert_eq!(
            run(Some(&spec), &Env::default(), &[], &["/g/vfs-images"])
                .unwrap()
                .driver,
            "vfs"
        );
    }

    #[test]
    fn bad_conf_is_an_error() {
        assert!(Conf::parse("[storage\n").is_err());
        assert_eq!(Conf::parse("").unwrap(), Conf::default());
    }
}
