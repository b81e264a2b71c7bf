//! `tuwen index` and `tuwen search` on generated pictures with the tiny CLIP fixture:
//! incremental updates (unchanged, renamed, copied, changed, deleted files), runs killed with
//! SIGKILL at random moments that resume to the same index as an uninterrupted run, image
//! queries that find the image itself first, filters, the model check, and one-line errors.

#[path = "../../tuwen/tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use support::{fails, ok, tuwen};

fn scratch(name: &str) -> PathBuf {
    support::scratch("searchcli", name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn model() -> PathBuf {
    fixtures().join("clip-tiny")
}

/// `n` generated shape pictures in a fresh folder: (folder, images, index path).
fn shapes(name: &str, n: usize, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    tuwen::data::shapes::generate(&dir.join("data"), n, 32, seed).unwrap();
    let images = dir.join("data/images");
    let db = dir.join("index.db");
    (dir, images, db)
}

fn report(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
}

fn index(dir: &Path, db: &Path) -> serde_json::Value {
    report(&ok(&tuwen(&[
        "index",
        s(dir),
        "--model",
        s(&model()),
        "--db",
        s(db),
        "--batch-size",
        "4",
        "--json",
    ])))
}

/// Every row of an index: path → (sha256, embedding bytes as text).
fn rows(db: &Path) -> BTreeMap<String, (String, String)> {
    let idx = tuwen::search::Index::open(db).unwrap();
    idx.all()
        .unwrap()
        .into_iter()
        .map(|r| (r.path, (r.sha256, format!("{:?}", r.embedding))))
        .collect()
}

#[test]
fn updates_are_incremental() {
    let dir = scratch("incr");
    tuwen::data::shapes::generate(&dir.join("data"), 30, 32, 21).unwrap();
    let images = dir.join("data/images");
    let db = dir.join("index.db");
    let r = index(&images, &db);
    let n = std::fs::read_dir(&images).unwrap().count() as u64;
    assert_eq!(r["embedded"], n);
    let r = index(&images, &db);
    assert_eq!(
        (r["embedded"].as_u64(), r["unchanged"].as_u64()),
        (Some(0), Some(n))
    );
    // Rename one, copy one, change one, delete one, add an unreadable one.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::rename(&files[0], images.join("renamed.png")).unwrap();
    std::fs::copy(&files[1], images.join("copy.png")).unwrap();
    std::fs::copy(&files[3], &files[2]).unwrap();
    std::fs::remove_file(&files[4]).unwrap();
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let r = index(&images, &db);
    assert_eq!(r["embedded"], 0, "{r}");
    assert_eq!(r["reused"], 3, "{r}"); // renamed, copy, and the changed file (now a copy of another)
    assert_eq!(r["removed"], 2, "{r}"); // the old name and the deleted file
    assert_eq!(r["failed"], 1, "{r}");
    assert_eq!(r["unchanged"], n - 3, "{r}"); // all but the renamed, changed and deleted
    let all = rows(&db);
    assert_eq!(all.len() as u64, n - 2 + 2);
    let key = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(all[&key(&images.join("copy.png"))], all[&key(&files[1])]);
    // An image query finds the image itself first.
    let out = ok(&tuwen(&[
        "search",
        "--db",
        s(&db),
        "--image",
        s(&files[5]),
        "--top-k",
        "3",
        "--json",
    ]));
    let hits: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hits["hits"][0]["path"], key(&files[5]));
    assert!(hits["hits"][0]["score"].as_f64().unwrap() > 0.9999);
    assert_eq!(hits["hits"].as_array().unwrap().len(), 3);
    // Filters: nothing is larger than a gigabyte; a folder that holds nothing indexed.
    let out = ok(&tuwen(&[
        "search",
        "--db",
        s(&db),
        "a red circle",
        "--where",
        "min_bytes=1000000000",
        "--json",
    ]));
    assert_eq!(out.trim(), r#"{"hits":[]}"#);
    let out = ok(&tuwen(&[
        "search",
        "--db",
        s(&db),
        "a red circle",
        "--where",
        &format!("folder={}", s(&dir)),
        "--json",
        "--top-k",
        "100",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hits"].as_array().unwrap().len(), all.len());
    // Export.
    let ex = dir.join("export");
    ok(&tuwen(&["index", "--db", s(&db), "--export", s(&ex)]));
    let (_, shape) =
        tuwen::data::arrays::parse_npy(&std::fs::read(ex.join("embeddings.npy")).unwrap()).unwrap();
    assert_eq!(shape[0], all.len());
    assert_eq!(
        std::fs::read_to_string(ex.join("metadata.jsonl"))
            .unwrap()
            .lines()
            .count(),
        all.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_index() {
    let dir = scratch("kill");
    tuwen::data::shapes::generate(&dir.join("data"), 250, 32, 22).unwrap();
    let images = dir.join("data/images");
    let whole = dir.join("whole.db");
    index(&images, &whole);
    let expected = rows(&whole);
    let db = dir.join("killed.db");
    let mut rng = tuwen::data::shapes::SplitMix64::new(7);
    let mut kills = 0;
    for _ in 0..60 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tuwen"))
            .args([
                "index",
                s(&images),
                "--model",
                s(&model()),
                "--db",
                s(&db),
                "--batch-size",
                "1",
            ])
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30 + rng.below(250) as u64));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // The index is valid after every kill, and holds no more than the whole.
        let n = rows(&db).len();
        assert!(n <= expected.len());
        if n == expected.len() {
            if kills >= 4 {
                break;
            }
            // Finished before enough kills: start over, to kill it at more moments.
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", s(&db)));
            }
        }
    }
    eprintln!("{kills} runs killed");
    assert!(kills >= 4, "too fast to kill: {kills}");
    let r = index(&images, &db);
    assert_eq!(r["removed"], 0);
    assert_eq!(rows(&db), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn another_model_and_bad_input_are_refused_in_one_line() {
    let dir = scratch("bad");
    tuwen::data::shapes::generate(&dir.join("data"), 10, 32, 23).unwrap();
    let images = dir.join("data/images");
    let db = dir.join("index.db");
    index(&images, &db);
    let siglip = fixtures().join("siglip-tiny");
    fails(
        &tuwen(&["index", s(&images), "--model", s(&siglip), "--db", s(&db)]),
        "another model",
    );
    fails(
        &tuwen(&["search", "--db", s(&db), "a cat", "--model", s(&siglip)]),
        "another model",
    );
    fails(&tuwen(&["search", "--db", s(&db)]), "text");
    fails(
        &tuwen(&["search", "--db", s(&dir.join("none.db")), "x"]),
        "no such index",
    );
    fails(
        &tuwen(&["search", "--db", s(&db), "x", "--where", "colour=red"]),
        "unknown key",
    );
    fails(
        &tuwen(&[
            "index",
            s(&dir.join("nowhere")),
            "--model",
            s(&model()),
            "--db",
            s(&db),
        ]),
        "not a folder",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_indexed_files_inside_the_folders_are_servable() {
    let (dir, images, db) = shapes("serve", 8, 24);
    index(&images, &db);
    let idx = tuwen::search::Index::open(&db).unwrap();
    let roots = idx.roots().unwrap();
    let inside = std::fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let real = std::fs::canonicalize(&inside).unwrap();
    assert_eq!(
        tuwen::search::servable(&idx, &roots, s(&inside)).unwrap(),
        real
    );
    // `..` that leads back inside is the same file; out of the folder it is refused.
    let name = inside.file_name().unwrap().to_str().unwrap();
    let round = format!("{}/../images/{name}", s(&images));
    assert_eq!(tuwen::search::servable(&idx, &roots, &round).unwrap(), real);
    let secret = dir.join("secret.png");
    std::fs::copy(&inside, &secret).unwrap();
    let up = format!("{}/../../secret.png", s(&images));
    let err = tuwen::search::servable(&idx, &roots, &up)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the indexed folders"), "{err}");
    // A link inside the folder that points out of it.
    let link = images.join("escape.png");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let err = tuwen::search::servable(&idx, &roots, s(&link))
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the indexed folders"), "{err}");
    // Inside, but not indexed; missing; empty.
    let fresh = images.join("new.png");
    std::fs::copy(&inside, &fresh).unwrap();
    let err = tuwen::search::servable(&idx, &roots, s(&fresh))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in the index"), "{err}");
    assert!(tuwen::search::servable(&idx, &roots, "/etc/passwd").is_err());
    assert!(tuwen::search::servable(&idx, &roots, s(&images.join("none.png"))).is_err());
    assert!(tuwen::search::servable(&idx, &roots, "").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills a child process when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_announces_its_address_and_answers() {
    use std::io::{BufRead, Read, Write};
    let (dir, images, db) = shapes("servecli", 6, 25);
    index(&images, &db);
    let n = std::fs::read_dir(&images).unwrap().count();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_tuwen"))
            .args(["serve", "--db", s(&db), "--addr", "127.0.0.1:0"])
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with(&format!("serving {n} images at http://127.0.0.1:")),
        "{line}"
    );
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /api/health HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    let body: serde_json::Value =
        serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["images"].as_u64(), Some(n as u64));
    drop(child);

    fails(
        &tuwen(&["serve", "--db", s(&dir.join("none.db"))]),
        "no such index",
    );
    fails(
        &tuwen(&["serve", "--db", s(&db), "--max-upload-mib", "0"]),
        "--max-upload-mib",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_hnsw_graph_finds_what_exact_search_finds_and_follows_updates() {
    use tuwen::search::{Filter, Index};
    let (dir, images, db) = shapes("ann", 40, 26);
    let graph = dir.join("index.db.usearch");
    let run = |min: &str| {
        ok(&tuwen(&[
            "index",
            s(&images),
            "--model",
            s(&model()),
            "--db",
            s(&db),
            "--ann-min",
            min,
        ]))
    };
    assert!(run("10").contains("with an HNSW graph"));
    assert!(graph.exists());
    // Any filter searches exactly; none goes through the graph. They agree (at this size the
    // graph's search is exhaustive), scores included.
    let exact = Filter {
        min_bytes: Some(0),
        ..Filter::default()
    };
    let check = |n: usize| {
        let idx = Index::open(&db).unwrap();
        assert!(idx.ann_fresh().unwrap());
        let rows = idx.all().unwrap();
        assert_eq!(rows.len(), n);
        for r in rows.iter().step_by(5) {
            let via_graph = idx.search(&r.embedding, 5, &Filter::default()).unwrap();
            let direct = idx.search(&r.embedding, 5, &exact).unwrap();
            assert_eq!(via_graph, direct);
            // The picture itself (or an identical copy) first.
            assert!((via_graph[0].score - 1.0).abs() < 1e-5, "{via_graph:?}");
        }
        // Every image, and only those, is reachable through the graph.
        let all = idx
            .search(&rows[0].embedding, 100, &Filter::default())
            .unwrap();
        let mut got: Vec<_> = all.into_iter().map(|h| h.path).collect();
        let mut want: Vec<_> = rows.into_iter().map(|r| r.path).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    };
    let n = std::fs::read_dir(&images).unwrap().count();
    check(n);
    // Remove three pictures and change one: the graph follows.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files[..3] {
        std::fs::remove_file(f).unwrap();
    }
    std::fs::copy(&files[10], &files[4]).unwrap();
    run("10");
    check(n - 3);
    // Below the threshold the graph goes away and search is exact again.
    assert!(!run("1000").contains("HNSW"));
    assert!(!graph.exists());
    assert!(!Index::open(&db).unwrap().ann_fresh().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}
