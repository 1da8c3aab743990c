//! The deployment files and the operator guide, checked without a container engine or a
//! running systemd: `deploy/Dockerfile` (stages, user, `--locked` build, its health check
//! run against a real server), `deploy/ghostkey.service` (every hardening directive, and
//! `systemd-analyze verify` when the tool is installed), and `docs/OPERATIONS.md` (every
//! `ghostkey ...` command in its `sh` blocks is accepted by the real binary, every
//! configuration key it names exists in `deploy/ghostkey.example.toml`, and its data-key
//! command makes a key the server accepts).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ghostkey");
const GUIDE: &str = "docs/OPERATIONS.md";
const DEPLOY_README: &str = "deploy/README.md";
const DOCKERFILE: &str = "deploy/Dockerfile";
const UNIT: &str = "deploy/ghostkey.service";
const EXAMPLE: &str = "deploy/ghostkey.example.toml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The executable `tool` on PATH; a test that needs it fails when it is missing (`.ci/run`
/// installs it from `package` with apt-get), as a check that does not run proves nothing.
fn required(tool: &str, package: &str) -> PathBuf {
    which(tool).unwrap_or_else(|| {
        panic!("{tool} is not installed: this check needs it (apt-get install {package})")
    })
}

/// The executable `tool` on PATH, as `which` finds it.
fn which(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The real binary, with none of the caller's `GHOSTKEY_*` variables.
fn ghostkey(args: &[String]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

// ---- Dockerfile ---------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// Instructions with continuation lines joined and comments dropped.
fn dockerfile_instructions(source: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in source.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_some()) {
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = line.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            pending = Some((start, acc));
        } else {
            acc.push_str(line);
            let (keyword, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
            out.push(Instruction {
                line: start,
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            });
        }
    }
    assert!(
        pending.is_none(),
        "the Dockerfile ends inside a continued line"
    );
    out
}

/// The instructions, one list per stage (each starting with its FROM).
fn stages(instructions: &[Instruction]) -> Vec<Vec<Instruction>> {
    let mut out: Vec<Vec<Instruction>> = Vec::new();
    for ins in instructions {
        if ins.keyword == "FROM" {
            out.push(Vec::new());
        }
        out.last_mut()
            .unwrap_or_else(|| panic!("line {}: {} before FROM", ins.line, ins.keyword))
            .push(ins.clone());
    }
    out
}

fn find<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    stage.iter().filter(|i| i.keyword == keyword).collect()
}

/// The exec-form argument list of the HEALTHCHECK's CMD.
fn healthcheck_command(stage: &[Instruction]) -> Vec<String> {
    let checks = find(stage, "HEALTHCHECK");
    assert_eq!(checks.len(), 1, "one HEALTHCHECK in the runtime stage");
    let args = &checks[0].args;
    let (_, cmd) = args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {args}"));
    serde_json::from_str(cmd.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not an exec-form JSON array ({e}): {cmd}"))
}

#[test]
fn dockerfile_builds_locked_in_one_stage_and_runs_unprivileged_in_another() {
    let source = read(DOCKERFILE);
    let instructions = dockerfile_instructions(&source);
    let stages = stages(&instructions);
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let build = &stages[0];
    let runtime = stages.last().unwrap();

    // Build stage: the official Rust image, a --locked release build of the binary, from
    // files that exist in the build context (the repository root).
    let from = &build[0].args;
    assert!(
        from.starts_with("rust:1-bookworm") && from.ends_with("AS build"),
        "build stage: {from}"
    );
    let builds: Vec<_> = find(build, "RUN")
        .into_iter()
        .filter(|r| r.args.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 1, "one cargo build in the build stage");
    for flag in ["--release", "--locked", "--bin ghostkey"] {
        assert!(builds[0].args.contains(flag), "cargo build without {flag}");
    }
    for copy in find(build, "COPY") {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        assert!(!words[0].starts_with("--from"), "line {}", copy.line);
        for src in &words[..words.len() - 1] {
            assert!(
                root().join(src).exists(),
                "line {}: COPY source {src} is not in the repository",
                copy.line
            );
        }
    }

    // No remote ADD anywhere.
    for add in find(&instructions, "ADD") {
        assert!(
            !add.args.contains("://") && !add.args.contains("git@"),
            "line {}: ADD of a remote source: {}",
            add.line,
            add.args
        );
    }

    // Runtime stage: bookworm-slim with ca-certificates only.
    assert_eq!(
        runtime[0].args.split_whitespace().next(),
        Some("debian:bookworm-slim")
    );
    let installed: Vec<String> = find(runtime, "RUN")
        .iter()
        .filter_map(|r| r.args.split_once("apt-get install"))
        .flat_map(|(_, rest)| {
            rest.split("&&")
                .next()
                .unwrap()
                .split_whitespace()
                .filter(|w| !w.starts_with('-'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(installed, ["ca-certificates"], "runtime packages");
    assert!(
        find(runtime, "COPY")
            .iter()
            .any(|c| c.args.starts_with("--from=build")
                && c.args.ends_with(" /usr/local/bin/ghostkey")),
        "the binary is copied from the build stage to /usr/local/bin/ghostkey"
    );

    // A non-root user with a fixed UID, created in the image and named in the guide.
    let users = find(runtime, "USER");
    let user = &users.last().expect("a USER in the runtime stage").args;
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().map(|n| n > 0).unwrap_or(false),
        "USER must be a fixed, non-root numeric UID: {user}"
    );
    assert!(
        find(runtime, "RUN")
            .iter()
            .any(|r| r.args.contains(&format!("--uid {uid}"))),
        "the image creates the user {uid}"
    );
    assert!(
        read(GUIDE).contains(uid),
        "the guide names the image's UID {uid}"
    );
    let last_user_index = runtime.iter().rposition(|i| i.keyword == "USER").unwrap();
    assert!(
        runtime[last_user_index..]
            .iter()
            .all(|i| i.keyword != "RUN"),
        "nothing runs as root after USER"
    );

    // Configuration, data volume, port, stop signal, entry point.
    let env: String = find(runtime, "ENV")
        .iter()
        .map(|e| e.args.clone())
        .collect();
    assert!(env.contains("GHOSTKEY_CONFIG=/etc/ghostkey/ghostkey.toml"));
    let volumes: String = find(runtime, "VOLUME")
        .iter()
        .map(|v| v.args.clone())
        .collect();
    assert!(volumes.contains("/var/lib/ghostkey"), "VOLUME {volumes}");
    assert!(find(runtime, "EXPOSE").iter().any(|e| e.args == "8080"));
    assert!(find(runtime, "STOPSIGNAL")
        .iter()
        .any(|e| e.args == "SIGTERM"));
    let entrypoint: Vec<String> =
        serde_json::from_str(&find(runtime, "ENTRYPOINT")[0].args).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/ghostkey"]);
    let cmd: Vec<String> = serde_json::from_str(&find(runtime, "CMD")[0].args).unwrap();
    check_invocation(&cmd, "Dockerfile CMD");
    let probe = healthcheck_command(runtime).join(" ");
    assert!(
        probe.contains("/dev/tcp/127.0.0.1/8080") && probe.contains("/healthz"),
        "{probe}"
    );
}

/// A development server in a temporary directory; killed when dropped.
struct DevServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl DevServer {
    fn start() -> DevServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("GHOSTKEY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = DevServer { child, port, dir };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = server.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the server did not start ({exited:?}): {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_health_check_probes_a_real_server() {
    let instructions = dockerfile_instructions(&read(DOCKERFILE));
    let stages = stages(&instructions);
    let mut probe = healthcheck_command(stages.last().unwrap());
    let bash = required("bash", "bash");
    assert!(probe[0].ends_with("bash"), "the probe runs bash: {probe:?}");
    probe[0] = bash.display().to_string();

    {
        use std::io::Write;
        let mut child = Command::new(required("shellcheck", "shellcheck"))
            .args(["--shell=bash", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let script = probe.last().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "shellcheck: {}", text(&out.stdout));
    }

    let server = DevServer::start();
    let port = server.port;
    let on_port: Vec<String> = probe
        .iter()
        .map(|a| {
            a.replace(
                "/dev/tcp/127.0.0.1/8080",
                &format!("/dev/tcp/127.0.0.1/{port}"),
            )
        })
        .collect();
    let run = |args: &[String]| {
        Command::new(&args[0])
            .args(&args[1..])
            .env_clear()
            .output()
            .unwrap()
    };
    let healthy = run(&on_port);
    assert!(
        healthy.status.success(),
        "the health check fails against a running server: {}{}\nserver log:\n{}",
        text(&healthy.stdout),
        text(&healthy.stderr),
        server.log()
    );
    drop(server);
    let down = run(&on_port);
    assert!(
        !down.status.success(),
        "the health check succeeds with no server"
    );
}

// ---- systemd unit -------------------------------------------------------------------

/// `(section, key, value)` for every directive, checking that each line is a comment, a
/// section header or `Key=Value`.
fn unit_directives(source: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, raw) in source.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line {}: keep each directive on one line",
            i + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not Key=Value: {line}", i + 1));
        assert!(
            !section.is_empty(),
            "line {}: directive before a section",
            i + 1
        );
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
            "line {}: bad key {key:?}",
            i + 1
        );
        // systemd has no end-of-line comments: a `#` would become part of the value.
        assert!(!value.contains('#'), "line {}: `#` in a value", i + 1);
        out.push((section.clone(), key.to_owned(), value.trim().to_owned()));
    }
    out
}

#[test]
fn the_unit_file_is_hardened() {
    let source = read(UNIT);
    let directives = unit_directives(&source);
    let sections: BTreeSet<&str> = directives.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        sections,
        BTreeSet::from(["Install", "Service", "Unit"]),
        "sections"
    );
    let service: Vec<(&str, &str)> = directives
        .iter()
        .filter(|(s, _, _)| s == "Service")
        .map(|(_, k, v)| (k.as_str(), v.as_str()))
        .collect();
    let values = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallFilter", "~@privileged @resources"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("StateDirectory", "ghostkey"),
        ("ConfigurationDirectory", "ghostkey"),
        ("Environment", "GHOSTKEY_CONFIG=/etc/ghostkey/ghostkey.toml"),
        ("ExecStart", "/usr/local/bin/ghostkey serve"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "50"),
    ] {
        assert!(
            values(key).contains(&value),
            "[Service] lacks {key}={value} (has {:?})",
            values(key)
        );
    }
    // Only the state directory is writable.
    let writable: Vec<&str> = values("ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert_eq!(writable, ["/var/lib/ghostkey"], "ReadWritePaths");
    // A dynamic user, or a dedicated one: never root.
    let user = values("User");
    assert!(
        values("DynamicUser") == ["yes"]
            || (user.len() == 1 && !["", "root", "0"].contains(&user[0])),
        "the service runs as a dedicated or dynamic user, not root"
    );
    // The stop timeout covers the server's 30 s drain.
    let stop: u64 = values("TimeoutStopSec")[0].parse().unwrap();
    assert!(stop > 30);
    assert!(directives
        .iter()
        .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target"));
    // The command it starts exists.
    let exec: Vec<String> = values("ExecStart")[0]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    check_invocation(&exec[1..], "ExecStart");
    // The example configuration fits this layout: the database in the state directory,
    // the data key in the configuration directory, never in the state directory.
    let example = read(EXAMPLE);
    assert!(example.contains("path = \"/var/lib/ghostkey/ghostkey.db\""));
    assert!(example.contains("data_key_file = \"/etc/ghostkey/data.key\""));

    let analyze = required("systemd-analyze", "systemd");
    // verify insists that ExecStart exists: point it at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("ghostkey.service");
    std::fs::write(
        &unit,
        source.replace(
            "ExecStart=/usr/local/bin/ghostkey ",
            &format!("ExecStart={BIN} "),
        ),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let complaints: Vec<String> = text(&out.stderr)
        .lines()
        .chain(text(&out.stdout).lines())
        .filter(|l| l.contains("ghostkey.service"))
        .map(str::to_owned)
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    println!("systemd-analyze verify: the unit is clean");
}

// ---- the guide's commands -----------------------------------------------------------

/// The lines of the ```sh blocks of a Markdown text, continuation lines joined.
fn sh_lines(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let fence = line.trim_start();
        if !in_block {
            in_block = fence == "```sh" || fence == "```bash";
            continue;
        }
        if fence.starts_with("```") {
            in_block = false;
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(body) => {
                pending.push_str(body);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// Splits a shell line into simple commands of unquoted words: quotes removed, comments,
/// redirections and their targets dropped; `;`, `&&`, `||`, `|`, `&`, parentheses and a
/// `$(` that starts a word (or follows `NAME=`) separate commands. A `$(...)` inside a
/// word or inside double quotes stays literal text.
fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = line.chars().collect();
    let mut commands: Vec<Vec<String>> = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut drop_next_word = false;
    let mut i = 0;
    fn end_word(
        word: &mut String,
        in_word: &mut bool,
        drop_next: &mut bool,
        commands: &mut [Vec<String>],
    ) {
        if *in_word {
            if *drop_next {
                *drop_next = false;
            } else {
                commands.last_mut().unwrap().push(std::mem::take(word));
            }
        }
        word.clear();
        *in_word = false;
    }
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '\\' => {
                in_word = true;
                if i + 1 < chars.len() {
                    i += 1;
                    word.push(chars[i]);
                }
            }
            '#' if !in_word => break,
            ' ' | '\t' => end_word(&mut word, &mut in_word, &mut drop_next_word, &mut commands),
            '$' if chars.get(i + 1) == Some(&'(') && (!in_word || word.ends_with('=')) => {
                end_word(&mut word, &mut in_word, &mut drop_next_word, &mut commands);
                commands.push(Vec::new());
                i += 1;
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                let mut depth = 0;
                while i < chars.len() {
                    word.push(chars[i]);
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            ';' | '|' | '&' | '(' | ')' | '`' => {
                end_word(&mut word, &mut in_word, &mut drop_next_word, &mut commands);
                commands.push(Vec::new());
            }
            '>' | '<' => {
                // `2>file`, `> file`, `>&3`, `<&3`: drop the fd number and the target.
                if in_word && word.chars().all(|c| c.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                } else {
                    end_word(&mut word, &mut in_word, &mut drop_next_word, &mut commands);
                }
                while i + 1 < chars.len() && matches!(chars[i + 1], '>' | '<' | '&') {
                    i += 1;
                }
                drop_next_word = true;
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
        i += 1;
    }
    end_word(&mut word, &mut in_word, &mut drop_next_word, &mut commands);
    commands.retain(|c| !c.is_empty());
    commands
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// Skips options of a wrapper command; those in `with_value` take the next word.
fn skip_options(cmd: &[String], mut i: usize, with_value: &[&str]) -> usize {
    while let Some(word) = cmd.get(i) {
        if word == "--" {
            return i + 1;
        }
        if !word.starts_with('-') {
            break;
        }
        i += if with_value.contains(&word.as_str()) {
            2
        } else {
            1
        };
    }
    i
}

/// The arguments given to `ghostkey` by a simple command, through `sudo`, `runuser`,
/// `env`, `exec` and `docker exec`; `None` when the command does not run ghostkey.
fn ghostkey_arguments(cmd: &[String]) -> Option<Vec<String>> {
    let mut i = 0;
    loop {
        while cmd.get(i).is_some_and(|w| is_assignment(w)) {
            i += 1;
        }
        match cmd.get(i)?.as_str() {
            "sudo" => i = skip_options(cmd, i + 1, &["-u", "-g", "-C", "-D", "-h", "-p", "-U"]),
            "runuser" => i = skip_options(cmd, i + 1, &["-u", "-g", "-G", "-s", "-w"]),
            "env" => i = skip_options(cmd, i + 1, &["-u", "-C", "-S"]),
            "exec" | "nohup" | "time" => i += 1,
            "docker" | "podman" if cmd.get(i + 1).map(String::as_str) == Some("exec") => {
                i = skip_options(
                    cmd,
                    i + 2,
                    &[
                        "-u",
                        "--user",
                        "-e",
                        "--env",
                        "-w",
                        "--workdir",
                        "--env-file",
                    ],
                ) + 1; // the container
            }
            _ => break,
        }
    }
    let program = Path::new(cmd.get(i)?).file_name()?;
    (program == "ghostkey").then(|| cmd[i + 1..].to_vec())
}

/// The subcommands `ghostkey <path> --help` lists (without `help`).
fn subcommands(path: &[String], cache: &mut BTreeMap<Vec<String>, Vec<String>>) -> Vec<String> {
    if let Some(found) = cache.get(path) {
        return found.clone();
    }
    let mut args = path.to_vec();
    args.push("--help".into());
    let out = ghostkey(&args);
    assert!(
        out.status.success(),
        "`ghostkey {}` fails: {}",
        args.join(" "),
        text(&out.stderr)
    );
    let help = text(&out.stdout);
    let found: Vec<String> = help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    cache.insert(path.to_vec(), found.clone());
    found
}

/// Checks that `ghostkey <args>` names existing subcommands (walking the tree the binary
/// prints) and that the whole line, with `--help` added, parses; returns the subcommand
/// path.
fn check_invocation_cached(
    args: &[String],
    context: &str,
    cache: &mut BTreeMap<Vec<String>, Vec<String>>,
) -> Vec<String> {
    // The global --config may come anywhere.
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--config" {
            i += 2;
            continue;
        }
        if !args[i].starts_with("--config=") {
            rest.push(args[i].clone());
        }
        i += 1;
    }
    let mut path: Vec<String> = Vec::new();
    for word in &rest {
        let subs = subcommands(&path, cache);
        if subs.is_empty() || word.starts_with('-') {
            break;
        }
        assert!(
            subs.contains(word),
            "{context}: `ghostkey {} {word}`: no such subcommand (there are: {})",
            path.join(" "),
            subs.join(", ")
        );
        path.push(word.clone());
    }
    assert!(
        subcommands(&path, cache).is_empty() || rest.iter().any(|w| w.starts_with('-')),
        "{context}: `ghostkey {}` needs a subcommand",
        path.join(" ")
    );
    let mut full = rest.clone();
    full.push("--help".into());
    let out = ghostkey(&full);
    assert!(
        out.status.success(),
        "{context}: `ghostkey {}` is refused: {}",
        rest.join(" "),
        text(&out.stderr)
    );
    path
}

fn check_invocation(args: &[String], context: &str) -> Vec<String> {
    check_invocation_cached(args, context, &mut BTreeMap::new())
}

/// Every ghostkey invocation of a document's sh blocks, checked; their subcommand paths.
fn check_document(rel: &str) -> BTreeSet<String> {
    let mut cache = BTreeMap::new();
    let mut covered = BTreeSet::new();
    for line in sh_lines(&read(rel)) {
        for cmd in simple_commands(&line) {
            if let Some(args) = ghostkey_arguments(&cmd) {
                let path = check_invocation_cached(&args, &format!("{rel}: {line}"), &mut cache);
                covered.insert(path.join(" "));
            }
        }
    }
    covered
}

#[test]
fn the_shell_reader_finds_ghostkey_where_the_shell_would_run_it() {
    let found = |line: &str| -> Vec<Vec<String>> {
        simple_commands(line)
            .iter()
            .filter_map(|c| ghostkey_arguments(c))
            .collect()
    };
    assert_eq!(
        found("sudo -u ghostkey ghostkey --config /etc/g.toml app list # ghostkey user"),
        [["--config", "/etc/g.toml", "app", "list"]]
    );
    assert_eq!(
        found("APP=$(ghostkey app add --name \"Health platform\" --key-id k1) && echo \"$APP\""),
        [["app", "add", "--name", "Health platform", "--key-id", "k1"]]
    );
    assert_eq!(
        found("docker exec -it ghostkey ghostkey backup \"/b/g-$(date +%F).db\" 2> err.log"),
        [["backup", "/b/g-$(date +%F).db"]]
    );
    assert_eq!(
        found(
            "sudo -u ghostkey env GHOSTKEY_DATABASE__PATH=/x.db /usr/local/bin/ghostkey app list"
        ),
        [["app", "list"]]
    );
    assert!(found(
        "useradd --system ghostkey; chown ghostkey:ghostkey /k; systemctl start ghostkey"
    )
    .is_empty());
    assert!(found("docker run --name ghostkey ghostkey:0.1.0; journalctl -u ghostkey").is_empty());
}

#[test]
fn every_ghostkey_command_in_the_guide_exists() {
    let covered = check_document(GUIDE);
    for path in [
        "serve",
        "app add",
        "app list",
        "app show",
        "app key add",
        "app key revoke",
        "app policy set",
        "app origins add",
        "app origins list",
        "app origins remove",
        "user show",
        "user unlock",
        "user erase",
        "backup",
        "restore",
    ] {
        assert!(
            covered.contains(path),
            "the guide shows no `ghostkey {path}` (found: {covered:?})"
        );
    }
    check_document(DEPLOY_README);
}

// ---- configuration keys and the data key ----------------------------------------------

const SECTIONS: [&str; 9] = [
    "server",
    "database",
    "keys",
    "assertions",
    "log",
    "sms",
    "email",
    "delivery",
    "metrics",
];

/// Whether `key` (dotted) is in the example configuration, set or shown commented out.
fn example_has(key: &str, example: &figment::Figment, example_text: &str) -> bool {
    if example.find_value(key).is_ok() {
        return true;
    }
    let leaf = key.rsplit('.').next().unwrap();
    example_text.contains(&format!("{leaf} =")) || example_text.contains(&format!("[{key}]"))
}

#[test]
fn every_configuration_key_in_the_guide_exists() {
    use figment::providers::{Format, Toml};
    let example = figment::Figment::from(Toml::file_exact(root().join(EXAMPLE)));
    let example_text = read(EXAMPLE);
    for rel in [GUIDE, DEPLOY_README] {
        let doc = read(rel);
        let mut checked = 0;
        // Code spans outside fenced blocks: `server.listen`, `[server.tls]`,
        // `log.format = "json"`, `service_id`.
        let mut prose = String::new();
        let mut fenced = false;
        for line in doc.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            } else if !fenced {
                prose.push_str(line);
                prose.push('\n');
            }
        }
        for span in prose.split('`').skip(1).step_by(2) {
            let name = span.split(" =").next().unwrap().trim();
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let is_key_like = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
            let first = name.split('.').next().unwrap();
            let is_config = (name.contains('.') && SECTIONS.contains(&first))
                || ["mode", "service_id"].contains(&name);
            if is_key_like && is_config {
                assert!(
                    example_has(name, &example, &example_text),
                    "{rel}: `{name}` is not in {EXAMPLE}"
                );
                checked += 1;
            }
        }
        // Environment variables: GHOSTKEY_SERVER__LISTEN is server.listen.
        for (at, _) in doc.match_indices("GHOSTKEY_") {
            let var: String = doc[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let rest = &var["GHOSTKEY_".len()..];
            if rest.is_empty() || rest == "CONFIG" {
                continue;
            }
            let key = rest
                .split("__")
                .collect::<Vec<_>>()
                .join(".")
                .to_lowercase();
            assert!(
                example_has(&key, &example, &example_text),
                "{rel}: {var} is `{key}`, which is not in {EXAMPLE}"
            );
            checked += 1;
        }
        if rel == GUIDE {
            assert!(
                checked > 20,
                "{rel}: only {checked} keys found; is the reader broken?"
            );
        }
    }
}

#[test]
fn the_documented_data_key_command_makes_a_key_the_server_accepts() {
    let command = sh_lines(&read(GUIDE))
        .into_iter()
        .find(|l| l.contains("basenc --base64url") && l.contains("/etc/ghostkey/data.key"))
        .expect("the guide shows how to create /etc/ghostkey/data.key");
    let bash = required("bash", "bash");
    required("basenc", "coreutils");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.key");
    let out = Command::new(bash)
        .args([
            "-c",
            &command.replace("/etc/ghostkey/data.key", path.to_str().unwrap()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {}", text(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{command}");
    let key = ghostkey::keys::read_key_file(&path).unwrap();
    assert_eq!(key.id().len(), 16);
    assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 43);
}
