//! What the server tests share: an index of generated pictures built with the tiny CLIP
//! fixture, and a server on a free loopback port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tuwen::burn::prelude::Device;
use tuwen::pipeline::ImageText;
use tuwen::search::Index;

pub fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip-tiny")
}

/// A fresh, empty folder in the temporary folder.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tuwen-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Fixture {
    pub dir: PathBuf,
    /// The indexed folder (canonical).
    pub images: PathBuf,
    pub db: PathBuf,
    /// The indexed pictures (canonical), sorted.
    pub files: Vec<PathBuf>,
}

/// `n` shape pictures in `dir/images`, indexed into `dir/index.db`.
pub fn indexed(name: &str, n: usize) -> Fixture {
    let dir = std::fs::canonicalize(scratch(name)).unwrap();
    let data = dir.join("data");
    tuwen::data::shapes::generate(&data, n, 32, 5).unwrap();
    let images = data.join("images");
    let db = dir.join("index.db");
    let device = Device::flex();
    let model = ImageText::load_folder(&model(), &device).unwrap();
    let mut index = Index::open(&db).unwrap();
    let folder = std::fs::canonicalize(model_folder()).unwrap();
    index
        .check_model(&folder, &tuwen::search::model_fingerprint(&folder).unwrap())
        .unwrap();
    let report = index
        .update(
            std::slice::from_ref(&images),
            &model,
            &folder,
            8,
            |_, _| {},
            |p, e| panic!("{}: {e}", p.display()),
        )
        .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(report.embedded, files.len());
    Fixture {
        dir,
        images,
        db,
        files,
    }
}

fn model_folder() -> PathBuf {
    model()
}

/// Starts a server over `db` with uploads limited to `max_upload` bytes; its base URL.
pub fn start(db: &Path, max_upload: usize) -> String {
    let mut config = tuwen_serve::Config::new(db);
    config.max_upload = max_upload;
    let server = tuwen_serve::Server::open(&config, &Device::flex()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        tuwen_serve::run(server, "127.0.0.1:0".parse().unwrap(), move |a| {
            tx.send(a).unwrap()
        })
        .unwrap();
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();
    format!("http://{addr}")
}

/// `/api/search` the way the CLI searches: the exact ranking for a text.
pub fn expected_for_text(db: &Path, text: &str, k: usize) -> Vec<(String, f32)> {
    let model = ImageText::load_folder(&model(), &Device::flex()).unwrap();
    let q = tuwen::search::query_embedding(&model, Some(text), None).unwrap();
    Index::open(db)
        .unwrap()
        .search(&q, k, &tuwen::search::Filter::default())
        .unwrap()
        .into_iter()
        .map(|h| (h.path, h.score))
        .collect()
}
