//! What the binary prints for programs and shells: the JSON of `inspect --json` and
//! `ls --json` against the schema the manual page lists (the page is parsed, so the two
//! cannot drift apart), and the completion scripts of `rimgfs completions`, loaded and run
//! by bash, zsh and fish, and installed by `scripts/install.sh` where each shell looks.

#![allow(missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::harness;
use common::*;

/// The manual page.
const MANUAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/man/rimgfs.1");

/// Field path (`layers[].digest`) → documented type (`string or null`).
type Fields = BTreeMap<String, String>;

/// The fields JSON OUTPUT lists for `inspect --json` and for `ls --json`: each
/// `.It Li PATH Pq TYPE` line of the section's `Fields of ...` subsections, those of
/// "both" added to each.
fn documented() -> (Fields, Fields) {
    let page = std::fs::read_to_string(MANUAL).unwrap();
    let section = page
        .split("\n.Sh ")
        .find(|s| s.starts_with("JSON OUTPUT\n"))
        .expect("the manual has a JSON OUTPUT section");
    let mut by_title: BTreeMap<&str, Fields> = BTreeMap::new();
    let mut title = "";
    for line in section.lines() {
        if let Some(t) = line.strip_prefix(".Ss ") {
            title = t;
        } else if let Some(item) = line.strip_prefix(".It Li ") {
            let (name, ty) = item
                .split_once(" Pq ")
                .unwrap_or_else(|| panic!("field without a type: {line}"));
            let old = by_title
                .entry(title)
                .or_default()
                .insert(name.to_string(), ty.to_string());
            assert!(old.is_none(), "{name} listed twice");
        }
    }
    let both = by_title.remove("Fields of both").expect("Fields of both");
    let mut doc = |t: &str| {
        let mut f = by_title.remove(t).unwrap_or_else(|| panic!("no {t}"));
        f.extend(both.clone());
        f
    };
    let (inspect, ls) = (doc("Fields of inspect --json"), doc("Fields of ls --json"));
    assert!(by_title.is_empty(), "unknown subsections: {by_title:?}");
    (inspect, ls)
}

/// Checks one document against `fields`: each object whose fields are listed has exactly
/// those, each value has its listed type. Adds the paths it saw to `seen`.
fn check(v: &Value, path: &str, fields: &Fields, seen: &mut BTreeSet<String>) {
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    };
    if let Value::Object(obj) = v {
        let listed: BTreeSet<&str> = fields
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|k| !k.contains('.') && !k.ends_with("[]"))
            .collect();
        if listed.is_empty() && !path.is_empty() {
            // The image's own object: passed on as it is.
            return;
        }
        let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            got,
            listed,
            "fields of {:?}",
            if path.is_empty() { "." } else { path }
        );
        for (k, child) in obj {
            let p = format!("{prefix}{k}");
            check_value(child, &p, fields, seen);
        }
    }
}

/// Checks a value against the type listed for `path`, then what it holds.
fn check_value(v: &Value, path: &str, fields: &Fields, seen: &mut BTreeSet<String>) {
    let ty = fields
        .get(path)
        .unwrap_or_else(|| panic!("{path} is not in the manual's JSON OUTPUT"));
    let (base, nullable) = match ty.strip_suffix(" or null") {
        Some(b) => (b, true),
        None => (ty.as_str(), false),
    };
    let ok = match v {
        Value::Null => nullable,
        Value::Bool(_) => base == "boolean",
        Value::Number(n) => base == "integer" && (n.is_i64() || n.is_u64()),
        Value::String(_) => base == "string",
        Value::Array(_) => base == "array",
        Value::Object(_) => base == "object",
    };
    assert!(ok, "{path}: {v} is not {ty}");
    seen.insert(path.to_string());
    match v {
        Value::Array(items) => {
            for item in items {
                check_value(item, &format!("{path}[]"), fields, seen);
            }
        }
        Value::Object(_) => check(v, path, fields, seen),
        _ => {}
    }
}

/// Checks documents of one kind, and that together they show every listed field.
fn check_all(docs: &[Value], fields: &Fields, what: &str) {
    let mut seen = BTreeSet::new();
    for d in docs {
        check(d, "", fields, &mut seen);
    }
    let listed: BTreeSet<String> = fields.keys().cloned().collect();
    assert_eq!(
        seen, listed,
        "{what}: the fields seen and those listed differ"
    );
}

fn json_of(out: Output) -> Value {
    let out = out.success();
    serde_json::from_slice(&out.stdout_bytes).expect("one JSON document")
}

/// Every kind of entry, and names and targets that are not UTF-8.
const SPEC: &str = "\
L0: dir /etc 0755; file /etc/hosts 0640 gid=4 'hosts'; symlink /etc/link 'caf\\xe9'
L0: file '/caf\\xe9' 0644 'x' mtime=pax:1700000000.25; char /dev/null 1 3 0666; block /dev/loop0 7 0 0660
L0: fifo /run/p 0600; hardlink /etc/hosts2 /etc/hosts
L1: file /etc/motd 4755 uid=7 'motd'; whiteout /etc/hosts2
";

// See: ls --json and inspect --json follow one documented schema.
#[test]
fn json_output_has_exactly_the_documented_fields() {
    let (inspect_fields, ls_fields) = documented();
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(SPEC)
        .layer_codec(0, Codec::Gzip)
        .with_ref("example.com/app:1");
    let image = sb.write("image.tar", Shape::OciArchive, &[def], Codec::None);
    let img = image.to_str().unwrap();
    let cache = sb.cache();
    let cli = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--cache-dir", cache.to_str().unwrap()]);
        json_of(rimgfs(&v))
    };
    let inspect = cli(&["inspect", "--json", img]);
    check_all(
        std::slice::from_ref(&inspect),
        &inspect_fields,
        "inspect --json",
    );
    assert_eq!(inspect["schema_version"], 1);
    assert_eq!(inspect["source"], img);
    assert_eq!(inspect["refs"], serde_json::json!(["example.com/app:1"]));
    assert_eq!(inspect["layers"][0]["compression"], "gzip");
    assert_eq!(inspect["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(inspect["history"][1]["empty_layer"], false);

    let all = cli(&["ls", "-R", "--json", img, "/"]);
    let lower = cli(&["ls", "--json", "--layer", "0", img, "/etc"]);
    let file = cli(&["ls", "--json", img, "/etc/motd"]);
    check_all(
        &[all.clone(), lower.clone(), file.clone()],
        &ls_fields,
        "ls --json",
    );
    assert_eq!(
        (all["schema_version"].clone(), all["source"].clone()),
        (1.into(), img.into())
    );
    assert_eq!(
        (all["path"].clone(), all["layer"].clone()),
        ("/".into(), Value::Null)
    );
    let entry = |doc: &Value, path: &str| -> Value {
        doc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in {doc}"))
            .clone()
    };
    // The entries are the image's, attribute by attribute.
    let paths: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/caf\u{fffd}",
            "/dev",
            "/etc",
            "/run",
            "/dev/loop0",
            "/dev/null",
            "/etc/hosts",
            "/etc/link",
            "/etc/motd",
            "/run/p"
        ]
    );
    let hosts = entry(&all, "/etc/hosts");
    let want = serde_json::json!({
        "path": "/etc/hosts", "path_bytes": null, "type": "file", "mode": 0o640, "uid": 0,
        "gid": 4, "nlink": 1, "size": 5, "mtime": 1_700_000_000, "mtime_nsec": 0,
        "target": null, "target_bytes": null, "major": null, "minor": null, "layer": 0,
    });
    assert_eq!(hosts, want);
    let motd = entry(&file, "/etc/motd");
    assert_eq!(
        (motd["mode"].clone(), motd["uid"].clone()),
        (0o4755.into(), 7.into())
    );
    assert_eq!(motd["layer"], 1);
    let link = entry(&all, "/etc/link");
    assert_eq!(link["type"], "symlink");
    assert_eq!(link["mode"], 0o777);
    assert_eq!(link["target_bytes"], serde_json::json!(b"caf\xe9".to_vec()));
    let odd = entry(&all, "/caf\u{fffd}");
    assert_eq!(odd["path_bytes"], serde_json::json!(b"/caf\xe9".to_vec()));
    assert_eq!(odd["mtime_nsec"], 250_000_000);
    let null = entry(&all, "/dev/null");
    assert_eq!(
        (
            null["type"].clone(),
            null["major"].clone(),
            null["minor"].clone()
        ),
        ("char".into(), 1.into(), 3.into())
    );
    assert_eq!(entry(&all, "/dev/loop0")["type"], "block");
    assert_eq!(entry(&all, "/run/p")["type"], "fifo");
    assert_eq!(entry(&all, "/etc")["type"], "dir");
    // --layer 0: the image before layer 1 deleted a name of /etc/hosts.
    assert_eq!(lower["layer"], 0);
    assert_eq!(entry(&lower, "/etc/hosts")["nlink"], 2);
    assert_eq!(entry(&lower, "/etc/hosts2")["path"], "/etc/hosts2");
}

/// Writes the completion script of `shell` to a file in `dir` named `name`.
fn script(dir: &Path, shell: &str, name: &str) -> PathBuf {
    let out = rimgfs(&["completions", shell]).success();
    assert!(!out.stdout.is_empty(), "{shell}: empty script");
    let p = dir.join(name);
    std::fs::write(&p, &out.stdout_bytes).unwrap();
    p
}

/// Whether `prog` runs here; else a skip (a failure under CI, where test.sh installs it).
fn have(prog: &str) -> bool {
    let ok = Command::new(prog)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok || harness::skip(&format!("{prog} is not installed"))
}

/// Runs `prog ARGS...` and returns its stdout, panicking with its output on failure.
fn run(prog: &str, args: &[&str]) -> String {
    run_ok(prog, args).stdout
}

/// What bash's completion of `words` (the last one being completed) offers, with the
/// script `file` sourced.
fn bash_complete(file: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cmd = format!(
        "source \"$1\"; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
         COMP_POINT={point}; _rimgfs rimgfs '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = quoted.join(" "),
        cword = words.len() - 1,
        point = line.len(),
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    run("bash", &["-c", &cmd, "bash", file.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .collect()
}

/// What fish's completion of `line` offers (candidates without descriptions), with the
/// script `file` sourced.
fn fish_complete(file: &Path, line: &str) -> Vec<String> {
    let cmd = format!("source {}; complete -C '{line}'", file.display());
    run("fish", &["--no-config", "-c", &cmd])
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn completions_load_and_complete_in_bash() {
    if !have("bash") {
        return;
    }
    let sb = Sandbox::new();
    let f = script(sb.dir.path(), "bash", "rimgfs.bash");
    let cmds = bash_complete(&f, &["rimgfs", ""]);
    for c in ["mount", "umount", "inspect", "ls", "completions"] {
        assert!(cmds.iter().any(|x| x == c), "{c} in {cmds:?}");
    }
    assert!(bash_complete(&f, &["rimgfs", "mount", "--rea"]).contains(&"--read-only".into()));
    let shells = bash_complete(&f, &["rimgfs", "completions", ""]);
    let values: Vec<&String> = shells.iter().filter(|w| !w.starts_with('-')).collect();
    assert_eq!(values, ["bash", "zsh", "fish"], "{shells:?}");
    assert_eq!(
        bash_complete(&f, &["rimgfs", "commit", "--format", ""]),
        ["docker-archive", "oci-archive", "oci"]
    );
}

#[test]
fn completions_load_in_zsh() {
    if !have("zsh") {
        return;
    }
    let sb = Sandbox::new();
    let dir = sb.path("functions");
    std::fs::create_dir(&dir).unwrap();
    let f = script(&dir, "zsh", "_rimgfs");
    // A syntax check, then what a user's zsh does: compinit finds `#compdef rimgfs` on fpath
    // and the function loads.
    run("zsh", &["-n", f.to_str().unwrap()]);
    let cmd = "fpath=(\"$1\" $fpath); autoload -Uz compinit; compinit -u -d \"$1/.zcompdump\"; \
               autoload +X _rimgfs && print -r -- $_comps[rimgfs] && whence -w _rimgfs";
    let out = run("zsh", &["-f", "-c", cmd, "zsh", dir.to_str().unwrap()]);
    assert_eq!(out, "_rimgfs\n_rimgfs: function\n");
}

#[test]
fn completions_load_and_complete_in_fish() {
    if !have("fish") {
        return;
    }
    let sb = Sandbox::new();
    let f = script(sb.dir.path(), "fish", "rimgfs.fish");
    run("fish", &["--no-config", "-n", f.to_str().unwrap()]);
    let cmds = fish_complete(&f, "rimgfs ");
    for c in ["mount", "umount", "inspect", "ls", "completions"] {
        assert!(cmds.iter().any(|x| x == c), "{c} in {cmds:?}");
    }
    assert!(fish_complete(&f, "rimgfs mount --rea").contains(&"--read-only".into()));
    // clap_complete's fish script completes option values, not positional ones.
    assert_eq!(
        fish_complete(&f, "rimgfs commit --format "),
        ["docker-archive", "oci", "oci-archive"]
    );
}

// See: completions installed by the set-up where each shell looks for them.
#[test]
fn install_puts_files_where_mount_and_the_shells_look() {
    let sb = Sandbox::new();
    let dest = sb.path("root");
    let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"));
    cmd.arg(harness::bin())
        .env("DESTDIR", &dest)
        .env_remove("PREFIX");
    let out = harness::run_command(cmd).success();
    let installed = |rel: &str| {
        let p = dest.join(rel.trim_start_matches('/'));
        assert!(p.is_file(), "{} not installed: {}", p.display(), out.stdout);
        p
    };
    let bin = installed("/usr/local/bin/rimgfs");
    assert_eq!(
        run(bin.to_str().unwrap(), &["--version"]),
        run(harness::bin(), &["--version"])
    );
    installed("/usr/local/share/man/man1/rimgfs.1");
    let bash = installed("/usr/local/share/bash-completion/completions/rimgfs");
    let zsh = installed("/usr/local/share/zsh/site-functions/_rimgfs");
    let fish = installed("/etc/fish/completions/rimgfs.fish");
    // mount.fuse3 runs rimgfs through /bin/sh without a PATH: the shell's default must hold
    // the directory.
    let path = run("env", &["-i", "/bin/sh", "-c", "echo $PATH"]);
    assert!(
        path.trim().split(':').any(|d| d == "/usr/local/bin"),
        "{path}"
    );
    // bash-completion loads completions/NAME from XDG_DATA_DIRS, /usr/local/share first
    // by default.
    let loader = Path::new("/usr/share/bash-completion/bash_completion");
    if have("bash") && (loader.exists() || harness::skip("bash-completion is not installed")) {
        let data = dest.join("usr/local/share");
        let cmd = format!(
            "source {}; XDG_DATA_DIRS={} __load_completion rimgfs && complete -p rimgfs",
            loader.display(),
            data.display()
        );
        let out = run("bash", &["-c", &cmd]);
        assert!(
            out.contains("_rimgfs") && out.trim_end().ends_with(" rimgfs"),
            "{out}"
        );
        assert!(
            std::fs::read_to_string(&bash)
                .unwrap()
                .contains("_rimgfs()")
        );
        let default = run(
            "bash",
            &["-c", "echo ${XDG_DATA_DIRS:-/usr/local/share:/usr/share}"],
        );
        assert!(default.starts_with("/usr/local/share"), "{default}");
    }
    if have("zsh") {
        let fpath = run("zsh", &["-f", "-c", "print -l $fpath"]);
        let dir = zsh.parent().unwrap().strip_prefix(&dest).unwrap();
        assert!(
            fpath
                .lines()
                .any(|l| Path::new(l) == Path::new("/").join(dir)),
            "{fpath}"
        );
    }
    if have("fish") {
        let paths = run("fish", &["-c", "printf '%s\\n' $fish_complete_path"]);
        let dir = fish.parent().unwrap().strip_prefix(&dest).unwrap();
        assert!(
            paths
                .lines()
                .any(|l| Path::new(l) == Path::new("/").join(dir)),
            "{paths}"
        );
    }
}
