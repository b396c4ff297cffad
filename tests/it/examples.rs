//! The files in examples/ stay true: every stride command in them parses with the
//! current command line, the job files they name exist and parse, every job file
//! in examples/ (also those inside Kubernetes ConfigMaps) is valid, and every YAML
//! file is valid YAML.

use std::path::{Path, PathBuf};

use clap::Parser;
use stride::cli::Cli;
use stride::job::{Job, JobSet};

/// Every file under examples/, subdirectories included.
fn examples() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn is_yaml(file: &Path) -> bool {
    file.extension().is_some_and(|e| e == "yml" || e == "yaml")
}

/// What PyYAML reads in a manifest: each container's command and args, the job
/// files in ConfigMaps, and each Indexed Job's completions with the
/// STRIDE_SHARD_COUNT its pods get.
const READ_MANIFEST: &str = r#"
import json, sys, yaml
out = {"commands": [], "jobs": [], "indexed": []}
def walk(node):
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            for c in node.get(key) or []:
                words = (c.get("command") or []) + (c.get("args") or [])
                if words:
                    out["commands"].append([str(w) for w in words])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not isinstance(doc, dict):
        continue
    walk(doc)
    if doc.get("kind") == "ConfigMap":
        for name, text in (doc.get("data") or {}).items():
            if name.endswith(".toml"):
                out["jobs"].append([name, text])
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Job" and spec.get("completionMode") == "Indexed":
        env = {e["name"]: e.get("value") for c in spec["template"]["spec"]["containers"] for e in c.get("env") or []}
        out["indexed"].append([spec.get("completions"), env.get("STRIDE_SHARD_COUNT")])
print(json.dumps(out))
"#;

fn have_pyyaml() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The stride command lines in a file: from the word `stride` to the end of the
/// line or the first shell operator.
fn commands(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let start = words.iter().position(|w| *w == "stride")?;
            // A YAML list item `- stride` begins a container's command, which
            // the manifest test reads whole.
            if words.len() == start + 1 {
                return None;
            }
            // `cargo install ... stride` installs it, `- name: Install stride` names a
            // step: neither is a command line.
            if words[..start]
                .iter()
                .any(|w| matches!(*w, "install" | "name:"))
            {
                return None;
            }
            Some(
                words[start..]
                    .iter()
                    .take_while(|w| !matches!(**w, ">>" | ">" | "|" | "&&" | "2>&1"))
                    .map(|w| (*w).to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn every_command_in_examples_parses_and_names_existing_job_files() {
    let mut seen = 0;
    for file in examples() {
        let text = std::fs::read_to_string(&file).unwrap();
        for words in commands(&text) {
            seen += 1;
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!(
                    "{}: `{}` does not parse: {e}",
                    file.display(),
                    words.join(" ")
                );
            }
            for word in &words {
                if word.starts_with("examples/") || word.starts_with("configs/") {
                    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(word);
                    assert!(path.exists(), "{}: {word} does not exist", file.display());
                }
            }
        }
    }
    assert!(seen >= 3, "found only {seen} stride commands in examples/");
}

#[test]
fn every_job_file_in_examples_is_valid() {
    let env = |name: &str| (name == "SOURCE_URL").then(|| "postgres://u@h/staging".to_string());
    let jobs: Vec<PathBuf> = examples()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(!jobs.is_empty());
    for job in jobs {
        let text = std::fs::read_to_string(&job).unwrap();
        JobSet::parse(&text, env, &[]).unwrap_or_else(|e| panic!("{}: {e}", job.display()));
    }
}

#[test]
fn every_yaml_example_is_valid_and_its_commands_and_jobs_parse() {
    // PyYAML reads the manifests as a YAML tool would; without it there is nothing
    // to check them with, and the test says so rather than pretend.
    if !have_pyyaml() {
        // CI installs it (.ci/run): there a missing PyYAML is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with PyYAML is not installed: YAML examples cannot be checked"
        );
        eprintln!("python3 with PyYAML is not installed: YAML examples not checked");
        return;
    }
    let env = |name: &str| {
        name.ends_with("_URL")
            .then(|| "postgres://u@h/db".to_string())
    };
    let (mut commands, mut jobs, mut indexed) = (0, 0, 0);
    for file in examples().into_iter().filter(|f| is_yaml(f)) {
        let out = std::process::Command::new("python3")
            .args(["-c", READ_MANIFEST])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for words in read["commands"].as_array().unwrap() {
            let words: Vec<&str> = words
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            if words.first() != Some(&"stride") {
                continue;
            }
            commands += 1;
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!(
                    "{}: `{}` does not parse: {e}",
                    file.display(),
                    words.join(" ")
                );
            }
        }
        for job in read["jobs"].as_array().unwrap() {
            jobs += 1;
            Job::parse(job[1].as_str().unwrap(), env)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", file.display(), job[0]));
        }
        for pair in read["indexed"].as_array().unwrap() {
            indexed += 1;
            assert_eq!(
                pair[0].to_string(),
                pair[1].as_str().unwrap_or("missing"),
                "{}: an Indexed Job's completions must equal its STRIDE_SHARD_COUNT",
                file.display()
            );
        }
    }
    assert!(
        commands >= 4,
        "found only {commands} stride commands in manifests"
    );
    assert!(jobs >= 2, "found only {jobs} job files in ConfigMaps");
    assert!(indexed >= 1, "found no Indexed Job");
}

/// What a `cargo install` line would install, if it is this package: `Err` names
/// the mistake (a crate of another name, or a path that is not this checkout).
fn installs_this_package(line: &str, package: &str) -> Result<(), String> {
    // The command ends at a comment, or at the backtick closing inline code.
    let command = &line[line
        .find("cargo install")
        .ok_or("not a cargo install line")?..];
    let command = command.split(['#', '`']).next().unwrap_or_default();
    let mut args = command.split_whitespace().skip(2);
    let mut named = Vec::new();
    while let Some(word) = args.next() {
        match word {
            "--path" => {
                let path = args.next().ok_or("--path without a value")?;
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
                if dir.canonicalize().ok()
                    != Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize().ok()
                {
                    return Err(format!("--path {path} is not this checkout"));
                }
                named.push(package.to_string());
            }
            "--git" | "--version" | "--root" | "--branch" | "--tag" | "--rev" => {
                args.next();
            }
            flag if flag.starts_with('-') => {}
            name => named.push(name.to_string()),
        }
    }
    match named.as_slice() {
        [one] if one == package => Ok(()),
        [one] => Err(format!("installs the crate `{one}`, not `{package}`")),
        _ => Err(format!(
            "names {named:?}, expected the one package `{package}`"
        )),
    }
}

#[test]
fn every_cargo_install_installs_the_package_whose_binary_is_stride() {
    // The package's name and its binaries, as cargo sees them.
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = &meta["packages"][0];
    let name = package["name"].as_str().unwrap();
    let binaries: Vec<&str> = package["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        binaries,
        ["stride"],
        "installing {name} must give the `stride` binary"
    );

    // crates.io's `stride` is another project's library: the mistake this test is for.
    assert_eq!(
        installs_this_package("run: cargo install --locked stride", name),
        Err(format!("installs the crate `stride`, not `{name}`"))
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = examples();
    files.push(root.join("README.md"));
    files.extend(
        std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    let mut seen = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().filter(|l| l.contains("cargo install")) {
            seen += 1;
            if let Err(e) = installs_this_package(line, name) {
                panic!("{}: `{}`: {e}", file.display(), line.trim());
            }
        }
    }
    assert!(seen >= 2, "found only {seen} cargo install lines");
}

/// Every Kubernetes manifest in examples/ against Kubernetes' own schemas, in
/// strict mode (an unknown or misspelt field fails): the `kubernetes-validate`
/// package from PyPI, which `.ci/run` installs.
#[test]
fn every_kubernetes_manifest_passes_kubernetes_schemas_strictly() {
    let validator = std::process::Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .status()
        .is_ok_and(|s| s.success());
    if !validator {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is not installed (python3 -m pip install kubernetes-validate)"
        );
        eprintln!("kubernetes-validate is not installed: manifests not checked against schemas");
        return;
    }
    let manifests: Vec<PathBuf> = examples()
        .into_iter()
        .filter(|f| is_yaml(f) && f.components().any(|c| c.as_os_str() == "k8s"))
        .collect();
    assert!(manifests.len() >= 5, "{manifests:?}");
    for file in manifests {
        let out = std::process::Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
