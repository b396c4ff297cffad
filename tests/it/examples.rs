//! The files in examples/ stay true: every stride command in them parses with the
//! current command line, the job files they name exist and parse, and every job
//! file in examples/ is valid.

use std::path::{Path, PathBuf};

use clap::Parser;
use stride::cli::Cli;
use stride::job::Job;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The stride command lines in a file: from the word `stride` to the end of the
/// line or the first shell operator.
fn commands(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let start = words.iter().position(|w| *w == "stride")?;
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
        Job::parse(&text, env).unwrap_or_else(|e| panic!("{}: {e}", job.display()));
    }
}

#[test]
fn every_yaml_example_is_valid_yaml() {
    // PyYAML reads the manifests as a YAML tool would; without it there is nothing
    // to check them with, and the test says so rather than pretend.
    let have_yaml = std::process::Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_yaml {
        eprintln!("python3 with PyYAML is not installed: YAML examples not checked");
        return;
    }
    for file in examples()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yml" || e == "yaml"))
    {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys, yaml; yaml.safe_load(open(sys.argv[1]))"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
